"""The architectures the paper prunes: CIFAR-style ResNet-(6n+2) and torchvision's ResNet-50.

``CifarResNet`` follows He et al. (2016, §4.2) as the pycls code base builds it (``ResStemCifar``): a 3x3 stem,
three stages of n basic blocks with widths (w, 2w, 4w), stride 2 at the start of stages 2 and 3, global
average pooling and a linear head. Where a block changes shape, the shortcut is a 1x1 conv + BN (option B,
``projection``) or parameter-free strided subsampling with zero-padded channels (option A, ``zero_pad``).

Module names are what :mod:`masksparsity.method` uses to find which convs produce and consume each BN's
channels: ``stem.conv``/``stem.bn``, ``stages.<s>.<b>.conv1``/``bn1``/``conv2``/``bn2``, ``...shortcut.0/1``,
``fc``. ResNet-50 keeps torchvision's names.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Sequential):
    """conv (no bias) followed by BatchNorm; indices 0 and 1 as in torchvision's downsample."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)
        )


class Stem(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ZeroPadShortcut(nn.Module):
    """Option A: subsample spatially by ``stride`` and zero-pad the channels up to ``cout``."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        left = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, left, self.extra - left))


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). conv1's output is the block's inner channel."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "projection":
            self.shortcut = ConvBN(cin, cout, 1, stride)
        elif shortcut == "zero_pad":
            self.shortcut = ZeroPadShortcut(cin, cout, stride)
        else:
            raise ValueError(f"unknown shortcut {shortcut!r}: projection or zero_pad")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int = 20,
        width: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "projection",
        zero_init_last_bn: bool = False,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        widths = (width, 2 * width, 4 * width)
        self.stem = Stem(in_channels, width)
        stages, cin = [], width
        for s, cout in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (s > 0 and b == 0) else 1, shortcut))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last_bn:
            for block in self.blocks():
                nn.init.zeros_(block.bn2.weight)

    def blocks(self) -> list[BasicBlock]:
        return [block for stage in self.stages for block in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet50(num_classes: int = 1000, zero_init_last_bn: bool = True) -> nn.Module:
    """torchvision's ResNet-50 with random weights (no ImageNet weights are available offline)."""
    from torchvision.models import resnet50 as tv_resnet50

    return tv_resnet50(weights=None, num_classes=num_classes, zero_init_residual=zero_init_last_bn)


def build_model(
    arch: str,
    *,
    width: int = 16,
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: str = "projection",
    zero_init_last_bn: bool = True,
) -> nn.Module:
    """``resnet<6n+2>`` (CIFAR-style, any depth 6n+2) or ``resnet50`` (torchvision)."""
    if arch == "resnet50":
        if in_channels != 3:
            raise ValueError("resnet50 takes RGB inputs")
        return resnet50(num_classes=num_classes, zero_init_last_bn=zero_init_last_bn)
    match = re.fullmatch(r"resnet(\d+)", arch)
    if not match:
        raise ValueError(f"unknown arch {arch!r}: resnet<6n+2> (resnet20, resnet56, resnet110, ...) or resnet50")
    return CifarResNet(
        int(match.group(1)),
        width=width,
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,
        zero_init_last_bn=zero_init_last_bn,
    )
