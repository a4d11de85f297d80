"""Statistics for seeded comparisons: mean ± std, paired differences with a Student-t 95 %
interval, and the binomial standard error of an accuracy measured on a finite test split.

Only the standard library: the t quantile is found by bisection on the t distribution's CDF,
integrated with Simpson's rule (exact to ~1e-9 for the degrees of freedom seeds give).
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence


def _t_pdf(x: float, df: int) -> float:
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return c * (1.0 + x * x / df) ** (-(df + 1) / 2)


def _t_cdf_upper_half(x: float, df: int, n: int = 2000) -> float:
    """P(0 <= T <= x) for x >= 0 (Simpson's rule with n intervals)."""
    h = x / n
    s = _t_pdf(0.0, df) + _t_pdf(x, df)
    s += 4 * sum(_t_pdf((2 * i - 1) * h, df) for i in range(1, n // 2 + 1))
    s += 2 * sum(_t_pdf(2 * i * h, df) for i in range(1, n // 2))
    return s * h / 3


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` >= 1 degrees of freedom, 0.5 <= p < 1."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p}")
    target, lo, hi = p - 0.5, 0.0, 1.0
    while _t_cdf_upper_half(hi, df) < target:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf_upper_half(mid, df) < target else (lo, mid)
    return (lo + hi) / 2


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std); the std is NaN for a single value."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


@dataclass
class Paired:
    """Paired differences a_i - b_i over seeds: mean, sample std, 95 % t-interval, t, W/T/L."""

    n: int
    mean: float
    std: float
    lo: float        # 95 % t-interval of the mean difference (NaN for n < 2)
    hi: float
    t: float         # mean / (std / sqrt(n)); NaN when undefined
    wins: int        # a_i > b_i
    ties: int
    losses: int
    diffs: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}

    def ci_text(self, digits: int = 2) -> str:
        """``+0.31 [-0.82, +1.44]`` (the mean and its 95 % interval), or the mean alone."""
        if math.isnan(self.lo):
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Paired:
    """Paired comparison of ``a`` against ``b`` (same seeds, same order)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired: need two equally long non-empty sequences, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    m, s = mean_std(d)
    if n > 1:
        half = t_quantile(0.5 + level / 2, n - 1) * s / math.sqrt(n)
        lo, hi = m - half, m + half
        t = m / (s / math.sqrt(n)) if s > 0 else (0.0 if m == 0 else math.copysign(math.inf, m))
    else:
        lo = hi = t = float("nan")
    return Paired(n=n, mean=m, std=s, lo=lo, hi=hi, t=t,
                  wins=sum(x > 0 for x in d), ties=sum(x == 0 for x in d),
                  losses=sum(x < 0 for x in d), diffs=d)


def binomial_se(acc_percent: float, n_test: int) -> float:
    """Standard error (percentage points) of one accuracy measured on ``n_test`` test images."""
    p = min(max(acc_percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / n_test)
