"""torch._dynamo.explain of one MPLStep call: no graph break caused by mplfast's own code
except the backward() calls (issue 14 item 4).

Counted are the breaks with an mplfast frame on their stack, attributed to the innermost one
(the fused ops are registered custom ops, so their input checks and native wrappers no longer
break the graph). One break is expected and allowed by name: the RNG state read that lets
L_new replay L_old's dropout masks (``_RngReplay`` in step.py; Dynamo skips
``torch.get_rng_state``, torch 2.13). Everything else (host syncs, ``.item()``, Python
branching on tensor values, non-tensor returns) must not break the graph.

Not covered, and known to break: ``pseudo_label="sample"`` (Dynamo cannot pass the step's own
torch.Generator to torch.multinomial) and ``pseudo_label="soft"`` (the JVP runs inside
torch.random.fork_rng, which Dynamo does not support).
"""
from __future__ import annotations

import pytest
import torch

from mplfast import MPLConfig, MPLStep
from mpl_fixtures import mpl_batch, tiny_cnn_pair


pytestmark = pytest.mark.usefixtures("single_torch_thread")

ALLOWED = ("Tensor.backward()",)


def _step_breaks(cfg: MPLConfig) -> list[str]:
    T, S = tiny_cnn_pair(5, width=4, seed=0, dropout=0.2)
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1, momentum=0.9),
                   torch.optim.SGD(S.parameters(), lr=0.1, momentum=0.9), cfg)
    batch = mpl_batch(0, 4, 6, 5)
    step(*batch)  # momentum buffers and the snapshot exist, as in every later step
    torch._dynamo.reset()
    try:
        ex = torch._dynamo.explain(step)(*batch)
    finally:
        torch._dynamo.reset()
    found = []
    for r in ex.break_reasons:
        ours = [f for f in r.user_stack if "/mplfast/" in f.filename.replace("\\", "/")]
        if not ours:
            continue  # not reached through mplfast code
        reason = r.reason.splitlines()[0]
        where = f"{ours[-1].filename.split('mplfast')[-1]}:{ours[-1].lineno} ({ours[-1].name})"
        if any(a in reason for a in ALLOWED):
            continue
        if "get_rng_state" in (ours[-1].line or "") and "skipped" in reason:
            continue  # _RngReplay: Dynamo skips torch.get_rng_state
        found.append(f"{where}: {reason}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(), dict(meta_signal="grad_dot")], ids=["default", "grad_dot"])
def test_explain_shows_no_break_caused_by_mplfast(kw):
    breaks = _step_breaks(MPLConfig(precision="fp32", threshold=0.3, **kw))
    assert breaks == [], breaks
