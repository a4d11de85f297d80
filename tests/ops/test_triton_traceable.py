"""The soft-CE and UDA launchers can be traced (issue 14): ``make_fx`` with fake tensors records
them as tensor allocations plus one ``triton_kernel_wrapper_mutation`` (``wrap_triton``) each,
with no host read (``.item()``, a label-range check) and no other torch op, so the ops helper can
register them with ``torch.library.triton_op``.

Tracing needs real ``@triton.jit`` kernels, so it runs in a subprocess without TRITON_INTERPRET;
fake tensors launch nothing, so no GPU is needed. (grad_dot's launcher is not traceable by
design: its table holds raw addresses; register it as an opaque custom op.)
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, torch
from torch.fx.experimental.proxy_tensor import make_fx
from mplfast.kernels.soft_ce import soft_ce_forward
from mplfast.kernels.uda import uda_forward

def ops(fn, *args):
    g = make_fx(fn, tracing_mode="fake")(*args)
    return [str(n.target) for n in g.graph.nodes if n.op == "call_function"]

z = torch.randn(8, 1000)
out = {
    "ce_index": ops(lambda z, t: soft_ce_forward(z, t, 0.1, 1.0), z, torch.randint(0, 1000, (8,))),
    "ce_soft_chunked": ops(lambda z, t: soft_ce_forward(z, t, 0.0, None), torch.randn(4, 9000),
                           torch.rand(4, 9000)),
    "uda": ops(lambda a, b: uda_forward(a, b, 0.5, 0.6, 1.0), z, z),
}
print(json.dumps(out))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_soft_ce_and_uda_launchers_trace_into_one_wrapped_kernel():
    if not hasattr(__import__("torch").library, "wrap_triton"):
        pytest.skip("torch < 2.6 has no wrap_triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MPLFAST_TRITON_TILES")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    graphs = json.loads(out.stdout.strip().splitlines()[-1])
    for name, ops in graphs.items():
        assert ops.count("triton_kernel_wrapper_mutation") == 1, (name, ops)
        others = [o for o in ops if o != "triton_kernel_wrapper_mutation"]
        assert set(others) == {"aten.empty.memory_format"}, (name, ops)
