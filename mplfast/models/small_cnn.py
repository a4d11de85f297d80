"""A small CNN for small images (sklearn's 8x8 digits by default): fast on CPU, with batch norm
and dropout so the MPL step sees the same kinds of layers as on WRN."""
from __future__ import annotations

import torch
from torch import nn

from mplfast.models.registry import register_model

# Side length of the feature map the last conv sees is at most this; ``input_size`` above it gets
# one more conv + 2x2 max-pool stage per halving. Without them a 32x32 image is read by 3x3 convs
# with a ~10 px receptive field and then averaged: a bag of local features that cannot see a
# digit's strokes (measured in docs/recipe-imagefolder.md).
_BASE_SIZE = 8


def extra_stages(input_size: int) -> int:
    """Conv + pool stages added for ``input_size`` px images: ceil(log2(input_size / 8)), >= 0."""
    n, s = 0, _BASE_SIZE
    while s < input_size:
        n, s = n + 1, 2 * s
    return n


class SmallCNN(nn.Module):
    """[N, in_chans, H, W] -> logits [N, num_classes]; sized for H = W = ``input_size``.

    Any size runs; ``input_size`` only sets the depth, so that the receptive field covers the
    image (8: the digits net, with no extra stage).
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1, width: int = 32, dropout: float = 0.0,
                 bn_momentum: float = 0.1, input_size: int = _BASE_SIZE) -> None:
        super().__init__()
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"input_size must be an integer >= 1, got {input_size!r}")
        w = width

        def cbr(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(cout, momentum=bn_momentum), nn.ReLU(inplace=True)]

        stages: list[nn.Module] = []
        for _ in range(extra_stages(input_size)):
            stages += [*cbr(w, w), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*cbr(in_chans, w), *cbr(w, w), nn.MaxPool2d(2), *stages,
                                      *cbr(w, 2 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * w, num_classes)
        self.num_features = 2 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


@register_model
def small_cnn(num_classes: int, *, in_chans: int = 1, width: int = 32, dropout: float = 0.0,
              bn_momentum: float = 0.1, input_size: int = _BASE_SIZE) -> SmallCNN:
    """Small CNN for small images (the 8x8 digits by default; 1 input channel by default)."""
    return SmallCNN(num_classes, in_chans=in_chans, width=width, dropout=dropout,
                    bn_momentum=bn_momentum, input_size=input_size)
