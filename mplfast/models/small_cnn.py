"""A small CNN for 8x8 digit images (sklearn's digits): fast on CPU, with batch norm and dropout
so the MPL step sees the same kinds of layers as on WRN."""
from __future__ import annotations

import torch
from torch import nn

from mplfast.models.registry import register_model


class SmallCNN(nn.Module):
    """[N, in_chans, H, W] (8x8 intended; any size works) -> logits [N, num_classes]."""

    def __init__(self, num_classes: int, *, in_chans: int = 1, width: int = 32, dropout: float = 0.0,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        w = width

        def cbr(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(cout, momentum=bn_momentum), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*cbr(in_chans, w), *cbr(w, w), nn.MaxPool2d(2),
                                      *cbr(w, 2 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * w, num_classes)
        self.num_features = 2 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


@register_model
def small_cnn(num_classes: int, *, in_chans: int = 1, width: int = 32, dropout: float = 0.0,
              bn_momentum: float = 0.1) -> SmallCNN:
    """Small CNN for the 8x8 digits data set (1 input channel by default)."""
    return SmallCNN(num_classes, in_chans=in_chans, width=width, dropout=dropout,
                    bn_momentum=bn_momentum)
