"""Shared by the MPLStep tests (test_mpl_soft.py, test_step_*.py): tiny 8x8 one-channel CNNs
and seeded random batches in the (x_l, y_l, x_uw, x_us) layout MPLStep takes.

Imported as ``from mpl_fixtures import ...``: tests/ has no __init__.py, so pytest puts tests/
itself on sys.path. The one-thread fixture these modules use lives in tests/conftest.py.
"""
from __future__ import annotations

import torch
from torch import nn

from mplfast import create_model


def tiny_cnn(num_classes: int, width: int, dropout: float = 0.0, dtype: torch.dtype | None = None) -> nn.Module:
    """A ``small_cnn`` for 1x8x8 images, cast to ``dtype`` (None: left in the default dtype)."""
    model = create_model("small_cnn", num_classes, in_chans=1, width=width, dropout=dropout)
    return model if dtype is None else model.to(dtype)


def tiny_cnn_pair(num_classes: int, width: int, seed: int | None, dropout: float = 0.0,
                  dtype: torch.dtype | None = None) -> tuple[nn.Module, nn.Module]:
    """(teacher, student): two ``tiny_cnn``s built one after the other right after
    ``torch.manual_seed(seed)`` (None: from the global RNG as it stands)."""
    if seed is not None:
        torch.manual_seed(seed)
    return (tiny_cnn(num_classes, width, dropout, dtype),
            tiny_cnn(num_classes, width, dropout, dtype))


def mpl_batch(seed: int, labeled: int, unlabeled: int, num_classes: int, dtype: torch.dtype | None = None):
    """(x_l, y_l, x_uw, x_us): ``labeled`` labeled images and ``unlabeled`` weak / strong views,
    all 1x8x8 standard normal, from a generator seeded with ``seed`` (images first, then the
    labels, drawn from ``range(num_classes)``)."""
    g = torch.Generator().manual_seed(seed)
    buf = torch.randn(labeled + 2 * unlabeled, 1, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(0, num_classes, (labeled,), generator=g)
    return buf[:labeled], y, buf[labeled:labeled + unlabeled], buf[labeled + unlabeled:]
