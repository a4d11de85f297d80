"""ResNet-50 (ImageNet recipe), torchvision's definition."""
from __future__ import annotations

from torch import nn

from mplfast.errors import UserError
from mplfast.models.registry import register_model


@register_model
def resnet50(num_classes: int, *, in_chans: int = 3, **kwargs) -> nn.Module:
    """torchvision ResNet-50 (25.6 M parameters at 1000 classes); ``kwargs`` go to torchvision."""
    try:
        from torchvision.models import resnet50 as tv_resnet50
    except Exception as e:  # not installed, or installed for another torch (RuntimeError)
        raise UserError(
            f"model 'resnet50' needs torchvision, which is not importable here "
            f"({type(e).__name__}: {e}); install the torchvision matching your torch"
        ) from e
    model = tv_resnet50(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
