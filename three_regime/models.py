"""The architectures: a BatchNorm MLP (the CPU analogue) and the CIFAR PreResNet the paper prunes.

PreResNet follows He et al. (2016), "Identity mappings in deep residual networks": pre-activation basic
blocks (BN-ReLU-conv, twice), ``(depth - 2) / 6`` blocks per stage, stages of 16k/32k/64k channels, a
1x1 convolution on the shortcut where the shape changes, then BN-ReLU, global average pooling and one
Linear classifier. Where the shortcut's 1x1 projection reads from is a setting (``shortcut_input``):
``"input"`` is the official three-regime model (the projection sees the block's raw input x),
``"preact"`` the variant this package had first (it sees relu(bn1(x)), the pre-activated input that conv1
also reads). Identity shortcuts always add the raw x. Written from that description; no code is copied from
the official repository.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class MLPBN(nn.Module):
    """``in -> [Linear -> BatchNorm1d -> ReLU] x hidden_layers -> Linear``; the last Linear is the classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden_layers: int = 4, hidden_width: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_width), nn.BatchNorm1d(hidden_width), nn.ReLU()]
            width = hidden_width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))


SHORTCUT_INPUTS = ("preact", "input")


class PreActBlock(nn.Module):
    """``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut``; the shortcut is x, or a 1x1 projection of x
    (``shortcut_input="input"``, official) or of relu(bn1(x)) (``"preact"``) where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut_input: str = "preact"):
        super().__init__()
        if shortcut_input not in SHORTCUT_INPUTS:
            raise ValueError(f"shortcut_input must be one of {SHORTCUT_INPUTS}, got {shortcut_input!r}")
        self.shortcut_input = shortcut_input
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        projected = x if self.shortcut_input == "input" else out  # official: the raw input x
        residual = x if self.shortcut is None else self.shortcut(projected)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + residual


class PreResNet(nn.Module):
    """CIFAR pre-activation ResNet of depth ``6n + 2`` (20 = PreResNet-20) with width multiplier ``k``;
    ``shortcut_input`` as in :class:`PreActBlock`."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        width_scale: int = 1,
        in_channels: int = 3,
        shortcut_input: str = "preact",
    ):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"PreResNet depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        widths = [16 * width_scale, 32 * width_scale, 64 * width_scale]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(channels, width, stride=stride, shortcut_input=shortcut_input))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.blocks(self.conv1(x))))
        return self.classifier(out.mean(dim=(2, 3)))


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model named by ``cfg.arch`` for inputs of ``input_shape`` (without the batch dimension)."""
    if cfg.arch == "mlp_bn":
        in_features = 1
        for s in input_shape:
            in_features *= s
        return MLPBN(in_features, num_classes, cfg.hidden_layers, cfg.hidden_width)
    if cfg.arch == "preresnet":
        return PreResNet(cfg.depth, num_classes, cfg.width_scale, in_channels=input_shape[0],
                         shortcut_input=cfg.shortcut_input)  # fmt: skip
    raise ValueError(f"unknown arch {cfg.arch!r}")
