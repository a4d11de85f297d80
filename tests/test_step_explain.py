"""torch._dynamo.explain of one MPLStep call: no graph break caused by mplfast's own code
except the backward() calls (issue 14 item 4).

Counted are the breaks with an mplfast frame on their stack, attributed to the innermost one
(the fused ops are registered custom ops, so their input checks and native wrappers no longer
break the graph; L_new replays L_old's dropout masks from recorded tensors under compile,
``mplfast.replay.RecordedReplay``, not from the RNG state, which Dynamo skips). Host syncs,
``.item()``, Python branching on tensor values, non-tensor returns and RNG-state reads must
not break the graph.

``pseudo_label="sample"`` also breaks at the draw (Dynamo cannot pass the step's own
torch.Generator to torch.multinomial); its test allows that break and no other.
"""
from __future__ import annotations

import pytest
import torch

from mplfast import MPLConfig, MPLStep
from mpl_fixtures import mpl_batch, tiny_cnn_pair


pytestmark = pytest.mark.usefixtures("single_torch_thread")

ALLOWED = ("Tensor.backward()",)
# Deliberate breaks, by (function, reason): the split between the teacher's and the student's
# graphs (step.py ``_step``; without it the compiled step fails, tests/test_step_compiled.py)
# and, in soft-label steps, the JVP, which Dynamo cannot trace (step.py ``_replayed_jvp``).
DELIBERATE = {("_step", "torch._dynamo.graph_break()"), ("_soft_meta_grad", "disable()`d function")}


def _step_breaks(cfg: MPLConfig, extra: frozenset = frozenset()) -> list[str]:
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
        if any(ours[-1].name == fn and text in reason for fn, text in DELIBERATE | extra):
            continue
        found.append(f"{where}: {reason}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(), dict(meta_signal="grad_dot"), dict(pseudo_label="soft")],
                         ids=["default", "grad_dot", "soft"])
def test_explain_shows_no_break_caused_by_mplfast(kw):
    breaks = _step_breaks(MPLConfig(precision="fp32", threshold=0.3, **kw))
    assert breaks == [], breaks


@pytest.mark.slow
def test_explain_sampled_labels_break_only_at_the_draw():
    """The known break of ``pseudo_label="sample"``: ``torch.multinomial(..., generator=...)`` in
    step.py ``_hard_labels`` (Dynamo cannot pass a torch.Generator); nothing else."""
    sample = frozenset({("_hard_labels", "Failed to convert args/kwargs to proxy")})
    cfg = MPLConfig(precision="fp32", threshold=0.3, pseudo_label="sample")
    assert _step_breaks(cfg, sample) == []
    assert _step_breaks(cfg) != []  # the draw does break: this test sees it
