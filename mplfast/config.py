"""``MPLConfig``: every setting of one MPL step, validated on construction.

The semantics of each field are fixed by the algorithm page, ``docs/algorithm.md``; the defaults are
the CIFAR-10-4K recipe's step settings with the paper-correct choices (hard labels from the
strong view, h = L_old - L_new, no baseline).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

META_SIGNALS = ("loss_diff", "grad_dot", "none")
PSEUDO_LABELS = ("hard", "sample", "soft")
PSEUDO_LABEL_VIEWS = ("strong", "weak")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
L_OLD_FORWARDS = ("labeled", "concat")


def _real(name: str, value: Any) -> float:
    # bool is an int subclass; True as a temperature is almost surely a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"MPLConfig.{name} must be a real number, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"MPLConfig.{name} must be one of {allowed}, got {value!r}")


@dataclass
class MPLConfig:
    """Settings of one MPL step (see the spec for each step's meaning).

    Fields and allowed ranges:
      temperature       tau > 0: UDA sharpening temperature of the weak-view teacher probabilities.
      threshold         [0, 1]: UDA confidence mask threshold on max_c q.
      lambda_u          >= 0: UDA loss weight (ramped by min(1, (t+1)/uda_steps)).
      uda_steps         int >= 1: length of the UDA weight ramp.
      label_smoothing   [0, 1): eps of CE_eps for L_sup and the student loss.
      meta_signal       "loss_diff" | "grad_dot" | "none" ("none": the teacher trains as plain
                        UDA; with pseudo_label="soft" the teacher gets the exact meta-gradient and
                        meta_signal only selects the reported h).
      meta_sign         +1 | -1: multiplies h (-1 reproduces L_new - L_old of the public code).
      meta_baseline_decay [0, 1): moving-baseline decay d (0 = no baseline).
      meta_scale        >= 0 (default 1): weight of the teacher's MPL term, L_mpl = meta_scale *
                        h * CE(z_us, y_hat) for hard/sampled labels, and the same factor on the
                        exact soft meta-gradient. At its natural size |h| is about 1e-3 and the
                        term is inert next to L_sup and L_uda; weighted up, it is strong enough
                        to hurt: x10 with the wrong sign (meta_sign=-1) cost 77 points on digits.
                        The reported h is not scaled.
      pseudo_label      "hard" | "sample" | "soft" (soft: exact JVP meta-gradient, needs a
                        torch.optim.SGD student optimizer; never the zero-gradient term).
      pseudo_label_view "strong" | "weak" (weak: the student's hard label comes from z_uw).
      l_old_forward     "labeled" | "concat": where L_old (the student's labeled loss before its
                        update) is read. "labeled" (default): a training-mode forward of the
                        student on x_l alone, batch-norm statistics over x_l, running buffers
                        untouched, dropout masks replayed by the L_new forward, so L_old - L_new
                        measures the update and nothing else (a student that did not move gives
                        h = 0 exactly). Costs one extra no-grad forward of the B labeled images:
                        measured on CPU (Intel Xeon with AVX-512, 1 thread, steps per second of
                        thread CPU time, medians of interleaved pairs), labeled/concat = 0.92
                        (interquartile range 0.91-0.92) for the digits preset net (small_cnn
                        width 16, B = 16, mu = 3) and 0.96 (0.95-0.97) for WRN-28-2 at B = 4,
                        mu = 2; FLOPs predict 1 - B / (8B + 9 mu B) = 0.97 and 0.96.
                        "concat": read from the update's [x_l; x_us] forward, as the official code
                        and the most used PyTorch port do; its batch-norm statistics include the
                        unlabeled images, which put an offset of about -0.08 into h on digits
                        (against an update signal of about 0.009).
      h_limit           None or > 0 (default 1.0): the largest |h|, in nats of the labeled loss,
                        that the teacher is fed. h is a first-order (small-step) quantity, about
                        1e-3 in healthy training; an update that moves the student's labeled
                        loss by more than a nat is no small step (typically the student at full
                        learning rate on an untrained teacher's pseudo labels, which fall mostly
                        in one class), and feeding h = -15 back wrecks the teacher. Such a step's
                        h is set to 0 and ``MPLStep`` warns once. None: no limit, as the public
                        implementations.
      grad_clip         None or > 0: max total grad norm for each model.
      precision         "auto" | "fp32" | "bf16" | "fp16".
    """

    temperature: float = 0.7
    threshold: float = 0.6
    lambda_u: float = 8.0
    uda_steps: int = 5000
    label_smoothing: float = 0.15
    meta_signal: str = "loss_diff"
    meta_sign: int = 1
    meta_baseline_decay: float = 0.0
    pseudo_label: str = "hard"
    pseudo_label_view: str = "strong"
    grad_clip: float | None = None
    precision: str = "auto"
    l_old_forward: str = "labeled"
    meta_scale: float = 1.0
    h_limit: float | None = 1.0

    def __post_init__(self) -> None:
        t = _real("temperature", self.temperature)
        if not (t > 0 and math.isfinite(t)):
            raise ValueError(f"MPLConfig.temperature must be in (0, inf), got {self.temperature!r}")
        th = _real("threshold", self.threshold)
        if not 0.0 <= th <= 1.0:
            raise ValueError(f"MPLConfig.threshold must be in [0, 1], got {self.threshold!r}")
        lu = _real("lambda_u", self.lambda_u)
        if not (lu >= 0 and math.isfinite(lu)):
            raise ValueError(f"MPLConfig.lambda_u must be in [0, inf), got {self.lambda_u!r}")
        if isinstance(self.uda_steps, bool) or not isinstance(self.uda_steps, int) or self.uda_steps < 1:
            raise ValueError(f"MPLConfig.uda_steps must be an integer >= 1, got {self.uda_steps!r}")
        ls = _real("label_smoothing", self.label_smoothing)
        if not 0.0 <= ls < 1.0:
            raise ValueError(
                f"MPLConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}"
            )
        _choice("meta_signal", self.meta_signal, META_SIGNALS)
        if isinstance(self.meta_sign, bool) or self.meta_sign not in (1, -1):
            raise ValueError(f"MPLConfig.meta_sign must be 1 or -1, got {self.meta_sign!r}")
        self.meta_sign = int(self.meta_sign)
        d = _real("meta_baseline_decay", self.meta_baseline_decay)
        if not 0.0 <= d < 1.0:
            raise ValueError(
                f"MPLConfig.meta_baseline_decay must be in [0, 1), got {self.meta_baseline_decay!r}"
            )
        _choice("pseudo_label", self.pseudo_label, PSEUDO_LABELS)
        _choice("pseudo_label_view", self.pseudo_label_view, PSEUDO_LABEL_VIEWS)
        if self.pseudo_label == "soft" and self.pseudo_label_view == "weak":
            # "weak" only changes the student's *hard* label; with soft targets it would mean
            # nothing, so asking for it is a mistake rather than a no-op.
            raise ValueError(
                "MPLConfig.pseudo_label_view='weak' only applies to hard/sampled labels; "
                "use pseudo_label_view='strong' with pseudo_label='soft'"
            )
        if self.grad_clip is not None:
            g = _real("grad_clip", self.grad_clip)
            if not (g > 0 and math.isfinite(g)):
                raise ValueError(
                    f"MPLConfig.grad_clip must be None or in (0, inf), got {self.grad_clip!r}"
                )
        if self.h_limit is not None:
            hl = _real("h_limit", self.h_limit)
            if not (hl > 0 and math.isfinite(hl)):
                raise ValueError(f"MPLConfig.h_limit must be None or in (0, inf), got {self.h_limit!r}")
            self.h_limit = hl
        _choice("precision", self.precision, PRECISIONS)
        _choice("l_old_forward", self.l_old_forward, L_OLD_FORWARDS)
        ms = _real("meta_scale", self.meta_scale)
        if not (ms >= 0 and math.isfinite(ms)):
            raise ValueError(f"MPLConfig.meta_scale must be in [0, inf), got {self.meta_scale!r}")
        self.meta_scale = ms

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (for checkpoints and config files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MPLConfig":
        """Inverse of ``to_dict``; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"MPLConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
