"""Compile the Triton kernels for sm_90 without a GPU.

The interpreter (used by the other tests on CPU) accepts code that the compiler rejects, such as
reading a non-constexpr global inside a kernel. Triton can lower a kernel all the way to a cubin
without a device, so this catches such errors here. It runs in a subprocess because the test
process has TRITON_INTERPRET=1 set, which turns every @triton.jit into an interpreted function.
Register spills are checked too: a spilling variant would throttle the memory-bound kernels.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import inspect, os, re, subprocess, tempfile
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from mplfast.kernels.soft_ce import _soft_ce_kernel
from mplfast.kernels.uda import _uda_kernel
from mplfast.kernels.grad_dot import _multi_dot_kernel

if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
    print("SKIP: this triton's ASTSource API differs"); raise SystemExit(0)
target = GPUTarget("cuda", 90, 32)
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

def build(fn, sig, const, nw):
    sig = dict(sig)
    sig.update({k: "constexpr" for k in const})
    k = triton.compile(ASTSource(fn, sig, const), target=target, options={"num_warps": nw})
    assert "cubin" in k.asm
    if os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        os.unlink(f.name)
        local = re.search(r"LOCAL:(\d+)", out)
        assert local is not None and int(local.group(1)) == 0, (fn.__name__, const, out)
    return k

ce = {"z_ptr": "*bf16", "z_stride": "i64", "t_ptr": "*fp32", "t_stride": "i64", "loss_ptr": "*fp32",
      "g_ptr": "*bf16", "g_stride": "i64", "N": "i32", "C": "i32", "eps": "fp32", "grad_scale": "fp32"}
for soft, single, rows, bc, nw in [(True, True, 1, 4096, 16), (True, False, 1, 4096, 16),
                                   (False, True, 1, 8192, 16), (False, False, 1, 4096, 16),
                                   (False, True, 128, 16, 8)]:
    sig = dict(ce, t_ptr="*fp32" if soft else "*i64")
    build(_soft_ce_kernel, sig, {"SOFT": soft, "GRAD": True, "SINGLE": single, "ROWS": rows, "BLOCK_C": bc}, nw)
build(_soft_ce_kernel, dict(ce, z_ptr="*fp16", g_ptr="*fp16", t_ptr="*i64"),
      {"SOFT": False, "GRAD": False, "SINGLE": False, "ROWS": 1, "BLOCK_C": 4096}, 16)
uda = {"w_ptr": "*bf16", "w_stride": "i64", "s_ptr": "*bf16", "s_stride": "i64", "loss_ptr": "*fp32",
       "mask_ptr": "*fp32", "g_ptr": "*bf16", "g_stride": "i64", "N": "i32", "C": "i32",
       "inv_tau": "fp32", "threshold": "fp32", "grad_scale": "fp32"}
for single, rows, bc, nw in [(True, 1, 4096, 16), (False, 1, 4096, 16), (True, 256, 16, 8)]:
    build(_uda_kernel, uda, {"GRAD": True, "SINGLE": single, "ROWS": rows, "BLOCK_C": bc}, nw)
for delta, ka, kb, aligned in [(False, 0, 0, True), (False, 2, 2, False), (True, 1, 1, True), (True, 0, 0, False)]:
    k = build(_multi_dot_kernel, {"table_ptr": "*i64", "partial_ptr": "*fp32"},
              {"NCOL": 4 if delta else 3, "DELTA": delta, "KA": ka, "KB": kb, "KC": kb,
               "ALIGNED": aligned, "BLOCK": 1024}, 4)
    # aligned tables must give 16-byte vector loads (the bandwidth target depends on it)
    assert ("ld.global.v4" in k.asm["ptx"]) == aligned, (delta, ka, kb, aligned)
print("OK")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence triton 3.9's default-change warning
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode == 0 and out.stdout.strip().startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().endswith("OK")
