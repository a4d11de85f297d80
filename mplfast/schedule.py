"""Learning-rate schedule of the MPL recipe: optional wait at lr 0, linear warmup, cosine to 0."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, wait_steps: int = 0) -> float:
    """Multiplier of the base lr at scheduler step ``step`` (0-based).

    0 for ``step < wait_steps`` (the student's first 3,000 steps in the recipe); then linear
    warmup from 0 over ``warmup_steps``; then half a cosine from 1 down to 0 at ``total_steps``,
    and 0 afterwards. Warmup is counted from the end of the wait (DESIGN.md); the PyTorch port
    instead uses step / (wait + warmup), which jumps from 0 to wait / (wait + warmup) when the
    wait ends. Both reach 1 at wait + warmup and share the cosine part.
    """
    if step < wait_steps:
        return 0.0
    s = step - wait_steps
    if s < warmup_steps:
        return s / max(1, warmup_steps)
    span = max(1, total_steps - wait_steps - warmup_steps)
    progress = min(1.0, (s - warmup_steps) / span)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine_schedule(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, wait_steps: int = 0
) -> LambdaLR:
    """LambdaLR with ``lr_factor`` (step once per MPL step, after the optimizer step)."""
    for name, v in (("warmup_steps", warmup_steps), ("total_steps", total_steps),
                    ("wait_steps", wait_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"warmup_cosine_schedule: {name} must be an integer >= 0, got {v!r}")
    if total_steps < wait_steps + warmup_steps:
        raise ValueError(
            f"warmup_cosine_schedule: total_steps ({total_steps}) must be >= wait_steps + "
            f"warmup_steps ({wait_steps} + {warmup_steps})"
        )

    def fn(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps,
                         wait_steps=wait_steps)

    return LambdaLR(optimizer, fn)
