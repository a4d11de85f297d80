"""Model registry (timm style): ``create_model(name, num_classes, in_chans=3, **kwargs)``.

Built-in names: ``wrn`` (depth, widen_factor, dropout, leaky_slope), ``wrn28_2``, ``wrn28_8``,
``resnet50``, ``small_cnn`` (8x8 digits), and ``timm/<name>`` when timm is
installed. Every model maps images [N, in_chans, H, W] (any memory format, channels-last
included) to logits [N, num_classes].
"""
from __future__ import annotations

from mplfast.models.registry import create_model, list_models, register_model

# Importing the definitions registers them.
from mplfast.models import resnet as _resnet  # noqa: F401,E402
from mplfast.models import small_cnn as _small_cnn  # noqa: F401,E402
from mplfast.models import wrn as _wrn  # noqa: F401,E402

__all__ = ["create_model", "list_models", "register_model"]
