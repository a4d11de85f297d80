"""Run mplfast's Triton launchers on CPU tensors and compile, instead of launching, every kernel
they start, for sm_90 (H100/H200), exactly as Triton's JIT would on that GPU.

Used by tests/test_ops_triton_compile.py in a subprocess without TRITON_INTERPRET (the test
process has it on, which turns every @triton.jit into an interpreted function). ``JITFunction.run``
is replaced by a function that binds the launch's arguments with Triton's own binder, so the
compiled variant carries the same constexprs, the same divisibility attributes (16-byte aligned
pointers, integers divisible by 16) and the same options (num_warps, enable_fp_fusion) as the
real launch. Prints one JSON object per compiled variant.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction

try:
    from triton.runtime.jit import create_function_from_signature
except ImportError:  # older triton: main() skips
    create_function_from_signature = None

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
RECORDS: list[dict] = []
_SEEN: dict[str, dict] = {}
CASE = {"name": ""}


def _res_usage(cubin: bytes) -> dict:
    """cuobjdump's REG/STACK/LOCAL/SHARED, plus the local-memory stores in the SASS (spills)."""
    if not os.path.exists(CUOBJDUMP):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    res = {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", out)}
    res["STL"] = len(re.findall(r"\bSTL(?:\.\w+)*\b", sass))
    return res


def _compile_run(self, *args, grid, warmup, **kwargs):
    backend = make_backend(TARGET)
    binder = create_function_from_signature(self.signature, self.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
    key = repr((self.__name__, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()),
                options.num_warps, options.enable_fp_fusion))
    rec = _SEEN.get(key)
    if rec is None:
        k = triton.compile(ASTSource(self, signature, constexprs, attrs), target=TARGET,
                           options=options.__dict__)
        ptx = k.asm["ptx"]
        rec = {
            "kernel": self.__name__,
            "constexprs": {self.arg_names[p[0]]: repr(v) for p, v in constexprs.items()},
            "num_warps": options.num_warps,
            "fp_fusion_passed": "enable_fp_fusion" in kwargs,
            "enable_fp_fusion": options.enable_fp_fusion,
            "fma_f32": len(re.findall(r"\bfma\.rn\.f32\b", ptx)),
            "ld_v4": len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx)),
            "ld_v2": len(re.findall(r"ld\.global(?:\.\w+)*\.v2", ptx)),
            "res": _res_usage(k.asm["cubin"]),
        }
        _SEEN[key] = rec
    RECORDS.append(dict(rec, case=CASE["name"]))
    return None


def main() -> None:
    # Triton's binder API (create_function_from_signature(sig, params, backend), _pack_args) is
    # that of triton 3.3+; elsewhere say so and let the test skip
    try:
        n_args = len(inspect.signature(create_function_from_signature).parameters)
    except (TypeError, ValueError):  # also None: not there at all
        n_args = -1
    if n_args != 3 or not hasattr(JITFunction, "_pack_args"):
        print(f"SKIP: triton {triton.__version__}: unknown JIT binder API")
        return
    JITFunction.run = _compile_run
    from mplfast.augment import params as P
    from mplfast.kernels import augment as ka
    from mplfast.kernels.grad_dot import grad_dot, grad_dot_delta
    from mplfast.kernels.soft_ce import soft_ce_forward
    from mplfast.kernels.uda import uda_forward

    g = torch.Generator().manual_seed(0)
    bf16, fp32 = torch.bfloat16, torch.float32
    # (C, dtype, soft target, gradient): every row-wise code path (packed rows, one row in
    # registers, chunked), vector widths 8 (C = 1000, 9000), 2 (C = 10) and 1 (C = 32003)
    for c, dt, soft, grad in ((10, bf16, False, True), (10, fp32, True, True), (1000, bf16, False, True),
                              (1000, fp32, True, True), (1000, bf16, False, False), (9000, bf16, False, True),
                              (9000, bf16, True, True), (9000, fp32, False, False), (32003, bf16, False, True)):
        CASE["name"] = f"soft_ce C={c} {dt} soft={soft} grad={grad}"
        z = torch.randn(64, c, generator=g).to(dt)
        t = torch.softmax(torch.randn(64, c, generator=g), 1) if soft else torch.randint(0, c, (64,))
        soft_ce_forward(z, t, 0.1, 1.0 if grad else None)
    for c, dt, grad in ((10, bf16, True), (1000, bf16, True), (1000, fp32, False), (9000, bf16, True),
                        (32003, fp32, True)):
        CASE["name"] = f"uda C={c} {dt} grad={grad}"
        z = torch.randn(64, c, generator=g).to(dt)
        uda_forward(z, z.clone(), 0.4, 0.8, 1.0 if grad else None)
    xs = [torch.randn(n, generator=g) for n in (5, 70000, 33)]
    for dt in (fp32, bf16, torch.float16):
        CASE["name"] = f"grad_dot {dt}"
        grad_dot([x.to(dt) for x in xs], [x.to(dt) for x in xs])
        CASE["name"] = f"grad_dot_delta {dt}"
        grad_dot_delta([x.to(dt) for x in xs], [x.to(dt) for x in xs], [x.to(dt) for x in xs])
    CASE["name"] = "grad_dot unaligned"
    grad_dot([torch.randn(101, generator=g)[1:]], [torch.randn(100, generator=g)])
    # the largest square image the dispatcher sends to this kernel, RGB: it must not spill
    side = math.isqrt(ka.MAX_PIXELS)
    for h, w, ch, n_ops, dt in ((8, 8, 1, 2, fp32), (32, 32, 3, 2, bf16), (side, side, 3, 2, bf16),
                                (side, side, 1, 3, fp32), (32, 32, 3, 0, fp32)):
        CASE["name"] = f"augment {h}x{w}x{ch} n_ops={n_ops} {dt}"
        imgs = torch.randint(0, 256, (4, h, w, ch), dtype=torch.uint8, generator=g)
        out = torch.empty(3, h, w, ch, dtype=dt).permute(0, 3, 1, 2)
        pol = P.Policy(h, w, ch == 3, n_ops=n_ops, magnitude=10.0, cutout=0.5)
        ka.augment(imgs, torch.tensor([0, 2, 3]), out, pol, 12345, 0, (0.5,) * ch, (0.25,) * ch)
    CASE["name"] = "sample_rows"
    ka.sample_rows(7, 0, 300, 37, torch.arange(37), torch.device("cpu"))
    for r in RECORDS:
        print(json.dumps(r))


if __name__ == "__main__":
    sys.exit(main())
