"""ResNet-50 (He et al. 2016, the "v1.5" variant torchvision uses: stride on the 3x3 conv).

Written out here rather than imported from torchvision: a torchvision wheel only works with the
exact torch build it was compiled for (CPU vs CUDA), and the preset must not depend on that.
The layer shapes and initialisation match torchvision's ``resnet50(weights=None)`` (25,557,032
parameters at 1000 classes).
"""
from __future__ import annotations

import torch
from torch import nn

from mplfast.models.registry import register_model


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet-style ResNet: 7x7/2 stem, 3x3/2 max-pool, four bottleneck stages, global pool."""

    def __init__(self, layers: tuple[int, ...], num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, in_planes = [], 64
        for i, blocks in enumerate(layers):
            planes = 64 * 2**i
            for b in range(blocks):
                stages.append(Bottleneck(in_planes, planes, stride=2 if (b == 0 and i > 0) else 1))
                in_planes = planes * Bottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, in_chans, H, W] float -> logits [N, num_classes]."""
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))

    def map_pretrained_keys(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``sd`` with torchvision's ResNet key layout renamed to this module's (other layouts,
        this module's own included, are returned unchanged). See :func:`torchvision_key`."""
        if "conv1.weight" not in sd or not any(k.startswith("layer1.") for k in sd):
            return sd
        return {torchvision_key(k, self.layers): v for k, v in sd.items()}


def torchvision_key(key: str, layers: tuple[int, ...] = (3, 4, 6, 3)) -> str:
    """The name in this module of torchvision's ResNet state-dict key ``key``.

    ``conv1.*`` -> ``stem.0.*``, ``bn1.*`` -> ``stem.1.*``, ``layer<i>.<b>.<rest>`` ->
    ``stages.<sum(layers[:i-1]) + b>.<rest>`` (block names inside agree: conv1..3, bn1..3,
    ``downsample.0`` conv, ``downsample.1`` batch norm), ``fc.*`` unchanged. A key of no
    torchvision ResNet is returned unchanged (the loader then reports it as unexpected).
    """
    head, _, rest = key.partition(".")
    if head == "conv1":
        return f"stem.0.{rest}"
    if head == "bn1":
        return f"stem.1.{rest}"
    if head.startswith("layer") and head[5:].isdigit():
        i = int(head[5:]) - 1
        block, _, tail = rest.partition(".")
        if 0 <= i < len(layers) and block.isdigit() and int(block) < layers[i] and tail:
            return f"stages.{sum(layers[:i]) + int(block)}.{tail}"
    return key


@register_model
def resnet50(num_classes: int, *, in_chans: int = 3, **kwargs) -> nn.Module:
    """ResNet-50 (25.6 M parameters at 1000 classes)."""
    if kwargs:
        raise TypeError(f"resnet50 takes no options besides in_chans, got {sorted(kwargs)}")
    return ResNet((3, 4, 6, 3), num_classes, in_chans=in_chans)
