"""The name -> factory table behind ``create_model``."""
from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

from mplfast.errors import UserError

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)
_REGISTRY: dict[str, Factory] = {}


def register_model(fn: F | None = None, *, name: str | None = None):
    """Decorator: register ``fn(num_classes, *, in_chans, **kwargs) -> nn.Module`` under its
    function name (or ``name``). Re-registering a name raises ValueError."""

    def deco(f: F) -> F:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"model name {key!r} is already registered")
        _REGISTRY[key] = f
        return f

    return deco(fn) if fn is not None else deco


def list_models() -> list[str]:
    """Registered names (sorted); ``timm/<name>`` works in addition when timm is installed."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, *, in_chans: int = 3, pretrained: str | None = None,
                 **kwargs) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs for ``in_chans``-channel images.

    ``pretrained``: a weights file (``.safetensors``, or ``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)``), or ``"timm"`` for a ``timm/<name>`` model (timm's own
    weights). Everything but the classifier head is loaded exactly; the head is kept at its
    fresh initialisation where its shapes differ (new classes). See
    :mod:`mplfast.models.pretrained`.

    Unknown names raise ``UserError`` (a ValueError) listing the known ones; ``timm/<name>``
    without timm installed raises ``UserError`` saying so; so does every unusable ``pretrained``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"create_model: num_classes must be an integer >= 1, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise UserError(f"create_model: in_chans must be an integer >= 1, got {in_chans!r}")
    from mplfast.models import pretrained as pt

    if pretrained is not None:
        pt.check_source(pretrained, name)
    if name.startswith("timm/"):
        # timm loads its own weights (and adapts their head and input channels itself)
        model = pt.create_timm(name, num_classes, in_chans, pretrained=pretrained == pt.TIMM,
                               **kwargs)
        if pretrained == pt.TIMM:
            return pt.mark_loaded(model, pretrained, pt.timm_fresh_head(model, num_classes))
    else:
        fn = _REGISTRY.get(name)
        if fn is None:
            raise UserError(
                f"unknown model {name!r}; known: {', '.join(list_models())}, or timm/<name> with timm"
            )
        model = fn(num_classes, in_chans=in_chans, **kwargs)
    if pretrained is not None:
        fresh = pt.load_pretrained(model, pt.read_state_dict(pretrained), source=pretrained,
                                   model_name=name)
        pt.mark_loaded(model, pretrained, fresh)
    return model
