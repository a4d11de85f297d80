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


def create_model(name: str, num_classes: int, *, in_chans: int = 3, **kwargs) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs for ``in_chans``-channel images.

    Unknown names raise ``UserError`` (a ValueError) listing the known ones; ``timm/<name>``
    without timm installed raises ``UserError`` saying so.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"create_model: num_classes must be an integer >= 1, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise UserError(f"create_model: in_chans must be an integer >= 1, got {in_chans!r}")
    if name.startswith("timm/"):
        return _create_timm(name[len("timm/"):], num_classes, in_chans, **kwargs)
    fn = _REGISTRY.get(name)
    if fn is None:
        raise UserError(
            f"unknown model {name!r}; known: {', '.join(list_models())}, or timm/<name> with timm"
        )
    return fn(num_classes, in_chans=in_chans, **kwargs)


def _create_timm(name: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    try:
        import timm
    except Exception as e:  # ImportError, or a broken install raising something else
        raise UserError(
            f"model 'timm/{name}' needs timm, which is not importable here ({e}); "
            "install it with `pip install timm`"
        ) from e
    if not timm.is_model(name):
        raise UserError(f"timm has no model named {name!r}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                             **kwargs)
