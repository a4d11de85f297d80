"""Pre-activation Wide ResNet (WRN-depth-k) as used by MPL / UDA / FixMatch on CIFAR and SVHN.

Follows the most used PyTorch MPL port: leaky ReLU (slope 0.1 there, 0.2 in the official TF
code), no dropout inside the blocks, "dense" dropout before the classifier (0.2 in the CIFAR
recipe). Batch-norm momentum defaults to 0.01, the official TF code's (its decay 0.99); the port
uses 0.001 (decay 0.999): pass ``bn_momentum=0.001`` to reproduce it. One deliberate difference: the port
feeds the *un-activated* input to conv1 in the first block of groups 2 and 3 (its bn1 is then
unused, which also breaks DDP without find_unused_parameters); here every block's residual
branch starts from bn-relu(x), as in a true pre-activation network. Parameter count is
unchanged (WRN-28-2, 10 classes: 1,467,610).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mplfast.models.registry import register_model


class PreActBlock(nn.Module):
    """bn-act-conv3x3(stride)-bn-act-conv3x3 + shortcut; [N, cin, H, W] -> [N, cout, H/s, W/s]."""

    def __init__(self, cin: int, cout: int, stride: int, *, leaky_slope: float, bn_momentum: float,
                 activate_before_residual: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.slope = leaky_slope
        # First group: the projection shortcut also sees the activated input (as in the port).
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.leaky_relu(self.bn1(x), self.slope)
        if self.shortcut is None:
            sc = x
        else:
            sc = self.shortcut(o if self.activate_before_residual else x)
        o = self.conv1(o)
        o = self.conv2(F.leaky_relu(self.bn2(o), self.slope))
        return sc + o


class WideResNet(nn.Module):
    """WRN-depth-k: [N, in_chans, H, W] -> logits [N, num_classes] (global average pooling)."""

    def __init__(self, num_classes: int, *, depth: int = 28, widen_factor: int = 2, dropout: float = 0.0,
                 leaky_slope: float = 0.1, bn_momentum: float = 0.01, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 >= 10, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"WideResNet widen_factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"WideResNet dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, ch[0], 3, 1, 1, bias=False)
        blocks = []
        for g in range(3):
            for i in range(n):
                blocks.append(PreActBlock(
                    ch[g] if i == 0 else ch[g + 1], ch[g + 1], (1 if g == 0 else 2) if i == 0 else 1,
                    leaky_slope=leaky_slope, bn_momentum=bn_momentum,
                    activate_before_residual=(g == 0 and i == 0)))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(ch[3], momentum=bn_momentum)
        self.slope = leaky_slope
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(ch[3], num_classes)
        self.num_features = ch[3]
        for m in self.modules():  # the port's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.blocks(self.conv1(x))
        o = F.leaky_relu(self.bn(o), self.slope)
        o = torch.flatten(F.adaptive_avg_pool2d(o, 1), 1)
        return self.fc(self.drop(o))


@register_model
def wrn(num_classes: int, *, in_chans: int = 3, depth: int = 28, widen_factor: int = 2,
        dropout: float = 0.0, leaky_slope: float = 0.1, bn_momentum: float = 0.01) -> WideResNet:
    """WRN-depth-widen_factor; ``dropout`` is the dense dropout before the classifier."""
    return WideResNet(num_classes, depth=depth, widen_factor=widen_factor, dropout=dropout,
                      leaky_slope=leaky_slope, bn_momentum=bn_momentum, in_chans=in_chans)


@register_model
def wrn28_2(num_classes: int, *, in_chans: int = 3, **kwargs) -> WideResNet:
    """WRN-28-2 (CIFAR-10 / SVHN recipe): 1.47 M parameters."""
    return wrn(num_classes, in_chans=in_chans, depth=28, widen_factor=2, **kwargs)


@register_model
def wrn28_8(num_classes: int, *, in_chans: int = 3, **kwargs) -> WideResNet:
    """WRN-28-8 (CIFAR-100 recipe): 23.4 M parameters."""
    return wrn(num_classes, in_chans=in_chans, depth=28, widen_factor=8, **kwargs)
