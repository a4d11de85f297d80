"""Compile every Triton kernel mplfast launches for sm_90 (H100/H200) without a GPU, and check
its registers and spills.

    python benchmarks/triton_sm90.py            # table; exit 1 on any spill or register overrun
    python benchmarks/triton_sm90.py --json     # one JSON record per compiled variant (the tests)
    python benchmarks/triton_sm90.py -k augment # only the cases whose name contains "augment"

The real launchers run on CPU tensors with ``JITFunction.run`` replaced by a compile for sm_90
through Triton's own binder, so each variant is built exactly as a launch on the device would
build it: the launcher's tiles and warp count, constexprs, the divisibility attributes the JIT
derives from the arguments (16-byte aligned pointers, integers divisible by 16, which turn on the
vectorized variants) and the options (num_warps, enable_fp_fusion). The cases cover every
configuration the ops, the MPL step, the data pipeline and the benchmarks launch (``CASES``).

Registers, stack and spill bytes are ptxas's own report (``-v``, which Triton passes; printed
with TRITON_DUMP_PTXAS_LOG=1 into a private cache, so nothing is read from an earlier build);
shared memory is Triton's. ``BUDGETS`` states each kernel's register budget and why.

Runs with TRITON_INTERPRET unset (under the interpreter @triton.jit functions are not
compiled): the script drops it and re-executes itself. Needs Triton's binder API of 3.3+
(``create_function_from_signature(sig, params, backend)``, ``JITFunction._pack_args``);
elsewhere it prints ``SKIP: ...`` and exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
from typing import Any, Callable

if os.environ.get("TRITON_INTERPRET") and __name__ == "__main__":
    # must happen before triton is imported: the interpreter replaces the compiler
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MPLFAST_TRITON_TILES")}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

try:
    from triton.runtime.jit import create_function_from_signature
except ImportError:  # older triton: main() skips
    create_function_from_signature = None

TARGET = GPUTarget("cuda", 90, 32)
REGS_PER_SM = 65536  # sm_90 register file, 32-bit registers

# Register budget per kernel (registers per thread) and why; a variant over it fails the check.
# A kernel's budget bounds how many programs share an SM, i.e. how much memory latency the SM
# can hide: budget = 65536 / (threads per SM wanted).
BUDGETS: dict[str, tuple[Callable[[dict], int], str]] = {
    "_soft_ce_kernel": (lambda r: 128, "row reductions, bandwidth-bound: <= 128 keeps >= 16 warps (512 threads) "
                                       "per SM whatever the tile's warp count"),
    "_uda_kernel": (lambda r: 128, "as _soft_ce_kernel"),
    "_multi_dot_kernel": (lambda r: 64, "4-warp streaming dot: <= 64 keeps >= 32 warps per SM, enough loads in "
                                        "flight to reach HBM bandwidth"),
    "_finish_kernel": (lambda r: 128, "one program: only spills matter; 128 is generous"),
    "_sample_kernel": (lambda r: 64, "trivial index math, 4 warps: >= 32 warps per SM"),
    "_augment_kernel": (lambda r: 128, "one image per program, gathers and reductions: <= 128 keeps >= 16 "
                                       "warps per SM (2 programs of 8 warps, or one of 16), so one warp's "
                                       "gathers overlap another's arithmetic"),
}

RECORDS: list[dict] = []
_SEEN: dict[str, dict] = {}
CASE: dict[str, Any] = {"name": ""}


def _ptxas_report(log: str) -> dict:
    """REG, STACK, SPILL_STORES, SPILL_LOADS from ptxas -v's log of one kernel."""
    res = {}
    m = re.search(r"Used (\d+) registers", log)
    if m:
        res["REG"] = int(m.group(1))
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        res["STACK"], res["SPILL_STORES"], res["SPILL_LOADS"] = map(int, m.groups())
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
        out = io.StringIO()
        with contextlib.redirect_stdout(out):  # TRITON_DUMP_PTXAS_LOG prints ptxas's log here
            k = triton.compile(ASTSource(self, signature, constexprs, attrs), target=TARGET,
                               options=options.__dict__)
        ptx = k.asm["ptx"]
        res = _ptxas_report(out.getvalue())
        res["SHARED"] = int(getattr(k.metadata, "shared", 0))
        rec = {
            "kernel": self.__name__,
            "constexprs": {self.arg_names[p[0]]: repr(v) for p, v in constexprs.items()},
            "num_warps": options.num_warps,
            "fp_fusion_passed": "enable_fp_fusion" in kwargs,
            "enable_fp_fusion": options.enable_fp_fusion,
            "fma_f32": len(re.findall(r"\bfma\.rn\.f32\b", ptx)),
            "ld_v4": len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx)),
            "ld_v2": len(re.findall(r"ld\.global(?:\.\w+)*\.v2", ptx)),
            "res": res,
        }
        _SEEN[key] = rec
    RECORDS.append(dict(rec, case=CASE["name"]))
    return None


def _cases() -> list[tuple[str, Callable[[], None]]]:
    """(name, launch) for every configuration mplfast launches; each launch runs the real launcher."""
    from mplfast.augment import params as P
    from mplfast.kernels import augment as ka
    from mplfast.kernels.grad_dot import grad_dot, grad_dot_delta
    from mplfast.kernels.soft_ce import soft_ce_forward
    from mplfast.kernels.uda import uda_forward

    g = torch.Generator().manual_seed(0)
    bf16, fp32, fp16 = torch.bfloat16, torch.float32, torch.float16
    cases: list[tuple[str, Callable[[], None]]] = []

    def soft_ce(n, c, dt, soft, grad):
        z = torch.randn(n, c, generator=g).to(dt)
        t = torch.softmax(torch.randn(n, c, generator=g), 1) if soft else torch.randint(0, c, (n,))
        return lambda: soft_ce_forward(z, t, 0.1, 1.0 if grad else None)

    # (N, C, dtype, soft target, gradient). Every row-wise code path (packed rows, one row in
    # registers, chunked), vector widths 8 (C = 1000, 9000, 32000), 4 (C = 100), 2 (C = 10) and
    # 1 (C = 32003); the step's shapes (C = 10 / 100 / 1000 at B = 64 and mu * B = 448, fp32
    # after _hi() and bf16 under autocast) and the op benchmarks' (4096 x 1000 fp32, 8192 x 32000
    # bf16).
    for n, c, dt, soft, grad in ((64, 10, bf16, False, True), (64, 10, fp32, True, True), (448, 10, bf16, True, True),
                                 (448, 100, bf16, False, True), (64, 100, fp32, False, False),
                                 (64, 1000, bf16, False, True), (64, 1000, fp32, True, True),
                                 (64, 1000, bf16, False, False), (4096, 1000, fp32, False, True),
                                 (64, 9000, bf16, False, True), (64, 9000, bf16, True, True),
                                 (64, 9000, fp32, False, False), (8192, 32000, bf16, False, True),
                                 (64, 32003, bf16, False, True)):
        cases.append((f"soft_ce {n}x{c} {str(dt)[6:]} soft={soft} grad={grad}", soft_ce(n, c, dt, soft, grad)))

    def uda(n, c, dt, grad):
        z = torch.randn(n, c, generator=g).to(dt)
        return lambda: uda_forward(z, z.clone(), 0.4, 0.8, 1.0 if grad else None)

    for n, c, dt, grad in ((448, 10, bf16, True), (448, 10, fp32, True), (448, 100, bf16, True),
                           (64, 1000, bf16, True), (64, 1000, fp32, False), (4096, 1000, fp32, True),
                           (64, 9000, bf16, True), (8192, 32000, bf16, True), (64, 32003, fp32, True)):
        cases.append((f"uda {n}x{c} {str(dt)[6:]} grad={grad}", uda(n, c, dt, grad)))

    xs = [torch.randn(n, generator=g) for n in (5, 70000, 33)]
    for dt in (fp32, bf16, fp16):
        a, b, c = ([x.to(dt) for x in xs] for _ in range(3))
        cases.append((f"grad_dot {str(dt)[6:]}", lambda a=a, b=b: grad_dot(a, b)))
        cases.append((f"grad_dot_delta {str(dt)[6:]}", lambda a=a, b=b, c=c: grad_dot_delta(a, b, c)))
    un = [torch.randn(101, generator=g)[1:]], [torch.randn(100, generator=g)]
    cases.append(("grad_dot unaligned", lambda: grad_dot(*un)))

    def augment(h, w, ch, n_ops, dt, hflip=True):
        imgs = torch.randint(0, 256, (4, h, w, ch), dtype=torch.uint8, generator=g)
        out = torch.empty(3, h, w, ch, dtype=dt).permute(0, 3, 1, 2)  # channels-last slice of the step buffer
        pol = P.Policy(h, w, hflip, n_ops=n_ops, magnitude=10.0, cutout=0.5)
        return lambda: ka.augment(imgs, torch.tensor([0, 2, 3]), out, pol, 12345, 0, (0.5,) * ch, (0.25,) * ch)

    # digits (8x8x1), CIFAR (32x32x3: the strong view n_ops = 2, the weak view n_ops = 0), and one
    # image per warp-count class of the launcher (tiles of 1024, 2048 and 4096 = MAX_ELEMENTS
    # elements: the largest the dispatcher sends here, RGB and grey)
    for h, w, ch, n_ops, dt in ((8, 8, 1, 2, fp32), (16, 16, 3, 2, bf16), (32, 64, 1, 2, fp32),
                                (32, 32, 3, 2, bf16), (32, 32, 3, 2, fp32), (32, 32, 3, 0, fp32),
                                (64, 64, 1, 3, fp32)):
        assert ka.fits(h, w, ch)
        cases.append((f"augment {h}x{w}x{ch} n_ops={n_ops} {str(dt)[6:]}", augment(h, w, ch, n_ops, dt)))
    cases.append(("sample_rows", lambda: ka.sample_rows(7, 0, 300, 37, torch.arange(37), torch.device("cpu"))))
    return cases


def binder_api_ok() -> bool:
    try:
        from inspect import signature

        n_args = len(signature(create_function_from_signature).parameters)
    except (TypeError, ValueError):  # also None: not there at all
        return False
    return n_args == 3 and hasattr(JITFunction, "_pack_args")


def compile_all(only: str = "") -> list[dict]:
    """Compile every case (or those whose name contains ``only``); one record per launch."""
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="mplfast-sm90-")  # every kernel compiled here
    try:
        JITFunction.run = _compile_run
        for name, run in _cases():
            if only in name:
                CASE["name"] = name
                run()
    finally:
        import shutil

        shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
    return RECORDS


def problems(rec: dict) -> list[str]:
    """What is wrong with one compiled variant: spills, stack, registers over the budget."""
    res, out = rec["res"], []
    if "REG" not in res or "SPILL_STORES" not in res:
        return ["no ptxas report"]
    if res["SPILL_STORES"] or res["SPILL_LOADS"]:
        out.append(f"spills {res['SPILL_STORES']} B stored / {res['SPILL_LOADS']} B loaded")
    budget = BUDGETS.get(rec["kernel"], (lambda r: 128, ""))[0](rec)
    if res["REG"] > budget:
        out.append(f"{res['REG']} registers > budget {budget}")
    return out


def table(records: list[dict]) -> str:
    rows = [f"triton {triton.__version__}, sm_90 (ptxas -v):",
            f"{'case':44s} {'kernel':18s} {'warps':>5s} {'regs':>5s} {'budget':>6s} {'stack':>6s} "
            f"{'spill st':>8s} {'spill ld':>8s} {'smem':>6s}  verdict"]
    for r in records:
        res = r["res"]
        budget = BUDGETS.get(r["kernel"], (lambda x: 128, ""))[0](r)
        bad = problems(r)
        rows.append(f"{r['case'][:44]:44s} {r['kernel']:18s} {r['num_warps']:5d} {res.get('REG', -1):5d} {budget:6d} "
                    f"{res.get('STACK', -1):6d} {res.get('SPILL_STORES', -1):8d} {res.get('SPILL_LOADS', -1):8d} "
                    f"{res.get('SHARED', -1):6d}  {'; '.join(bad) or 'ok'}")
    rows.append("budgets:")
    rows += [f"  {k}: {why}" for k, (_, why) in BUDGETS.items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON record per compiled launch")
    ap.add_argument("-k", default="", metavar="TEXT", help="only cases whose name contains TEXT")
    args = ap.parse_args(argv)
    if not binder_api_ok():
        print(f"SKIP: triton {triton.__version__}: unknown JIT binder API")
        return 0
    records = compile_all(args.k)
    if args.json:
        for r in records:
            print(json.dumps(dict(r, problems=problems(r))))
        return 0
    print(table(records))
    bad = [r for r in records if problems(r)]
    if bad:
        print(f"FAILED: {len(bad)} of {len(records)} launches over budget or spilling", file=sys.stderr)
        return 1
    print(f"ok: {len(records)} launches, {len(_SEEN)} variants, no spills, every kernel within its budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
