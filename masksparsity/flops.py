"""FLOPs (MACs) as the official code counts them, and the architecture table of the card.

The official trainer logs "FLOPs ratio ... Parameter ratio ..." from ``netslim/flops_counter.py`` (a
ptflops-style counter of multiply-accumulates on one image, run in eval mode at the training resolution). Its
``is_supported_instance`` hooks convolutions, linear layers, BatchNorm and ReLU modules, and it counts

- a convolution: out_h·out_w·k_h·k_w·(c_in/groups)·c_out (no bias term);
- a linear layer: c_in·c_out (no bias term);
- a BatchNorm: 2 per output element when affine (1 otherwise);
- a ReLU: 1 per output element, every time it is called.

Pooling has hooks in its table but is not among the supported modules, so it counts 0. ``common.counting``
counts convolutions and linear layers only; on these ResNets the BN and ReLU terms add 0.8-1.3 % to the dense count,
and since pruning removes them in proportion to the channels, the official FLOPs reduction reads a little lower
(tested; about 0.2 points on ResNet-50 at 51 %, see the card's architecture table).

ReLUs are counted where they are called (``F.relu``/``torch.relu``, which an ``nn.ReLU`` module calls too), so a
model written with functional ReLUs (:class:`masksparsity.models.CifarResNet`, like pycls' ``nn.ReLU`` modules
one per call site) counts the same as one with modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from common.counting import count_flops, count_params
from common.results import markdown_table

_RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _ReluElements(TorchFunctionMode):
    """Counts the output elements of every ReLU call (the mode is off inside its own handler, so the
    ``torch.relu_`` that ``F.relu`` calls is not counted twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _RELUS:
            self.elements += out.numel()
        return out


@dataclass(frozen=True)
class OfficialMacs:
    """MACs of one image in the official counter's convention, by kind of layer."""

    conv: int
    linear: int
    bn: int
    relu: int

    @property
    def total(self) -> int:
        return self.conv + self.linear + self.bn + self.relu

    @property
    def conv_linear(self) -> int:
        """What ``common.counting`` counts (``count_flops // 2``)."""
        return self.conv + self.linear

    def to_json(self) -> dict[str, int]:
        return asdict(self) | {"total": self.total}


@torch.no_grad()
def official_macs(model: nn.Module, example: torch.Tensor) -> OfficialMacs:
    """MACs per image of ``model`` on ``example`` (its first image), counted as the official code does."""
    counts = {"conv": 0, "linear": 0, "bn": 0}

    def conv_hook(module, inputs, output):
        kh, kw = module.kernel_size
        counts["conv"] += output.shape[2] * output.shape[3] * kh * kw * (module.in_channels // module.groups) * (
            module.out_channels)  # fmt: skip

    def linear_hook(module, inputs, output):
        counts["linear"] += module.in_features * module.out_features

    def bn_hook(module, inputs, output):
        counts["bn"] += output[0].numel() * (2 if module.affine else 1)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(bn_hook))
    was_training = model.training
    model.eval()
    relus = _ReluElements()
    try:
        with relus:
            model(example[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return OfficialMacs(conv=counts["conv"], linear=counts["linear"], bn=counts["bn"], relu=relus.elements)


# ----------------------------------------------------------------------------------------------------
# The card's architecture table: the dense networks the paper prunes, in both conventions

ARCHITECTURES = (
    ("ResNet-56 / CIFAR-10 (1x1 projection shortcuts, as pycls)", "resnet56", "projection", 10, 32),
    ("ResNet-56 / CIFAR-10 (zero-padded shortcuts, option A)", "resnet56", "zero_pad", 10, 32),
    ("ResNet-110 / CIFAR-10 (1x1 projection shortcuts, as pycls)", "resnet110", "projection", 10, 32),
    ("ResNet-110 / CIFAR-10 (zero-padded shortcuts, option A)", "resnet110", "zero_pad", 10, 32),
    ("ResNet-50 / ILSVRC-2012 (torchvision = pycls R-50-1x64d)", "resnet50", "projection", 1000, 224),
)
"""(setting, arch, shortcut, classes, input size) of the rows of :func:`architecture_table`."""

RESNET50_OP = 0.5107
"""The abstract's ResNet-50 operating point (FLOPs reduction), at which the two conventions are compared."""


def _model(arch: str, shortcut: str, classes: int) -> nn.Module:
    from .models import build_model

    return build_model(arch, shortcut=shortcut, num_classes=classes, in_channels=3, zero_init_last_bn=False)


def _meta_input(size: int) -> torch.Tensor:
    return torch.zeros(1, 3, size, size, device="meta")


def architecture_rows() -> list[tuple]:
    """One row per dense network of :data:`ARCHITECTURES`: params and MACs in both conventions. Counted on the
    meta device (shapes only: the counts do not depend on the weights), so it takes well under a second."""
    rows = []
    for setting, arch, shortcut, classes, size in ARCHITECTURES:
        with torch.device("meta"):
            model = _model(arch, shortcut, classes)
        x = _meta_input(size)
        official = official_macs(model, x)
        torch_macs = count_flops(model, x) // 2
        if torch_macs != official.conv_linear:  # two independent counts of the same thing
            raise AssertionError(f"{setting}: common.counting {torch_macs} != hooks {official.conv_linear} MACs")
        rows.append((setting, f"{count_params(model) / 1e6:.3f} M", f"{official.conv_linear / 1e6:.2f} M",
                     f"{official.total / 1e6:.2f} M", f"+{100 * (official.total / official.conv_linear - 1):.2f} %",
                     "– (tables not read)"))  # fmt: skip
    return rows


def resnet50_convention_gap(reduction: float = RESNET50_OP) -> dict[str, float]:
    """ResNet-50 pruned to ``reduction`` of its conv+linear MACs (globally smallest |γ| of random BN scales over
    the inner and residual units, official residual groups): the reduction in both conventions, in %.

    The γ and the slicing are on the CPU; every forward pass (layer sizes, counts) runs on the meta device."""
    import copy

    from . import method as M

    torch.manual_seed(0)
    model = _model("resnet50", "projection", 1000).eval()
    with torch.no_grad():
        for bn in M.all_bns(model):
            bn.weight.uniform_(0.05, 1.0)
    x = _meta_input(224)
    shapes = copy.deepcopy(model).to("meta")
    spec = M.prune_spec(model, residual_groups=True)
    mask = M.global_mask_for_reduction(model, spec, M.MacModel(shapes, spec, x), reduction)
    dense, pruned = official_macs(shapes, x), official_macs(M.prune(model, spec, mask).to("meta"), x)
    return {
        "conv_linear": 100 * (1 - pruned.conv_linear / dense.conv_linear),
        "official": 100 * (1 - pruned.total / dense.total),
    }


TABLE_HEADERS = ("Network (input)", "Params", "MACs: conv + linear", "MACs: official counter",
                 "official / conv+linear", "Paper")  # fmt: skip


def architecture_table() -> str:
    """Markdown: params and MACs of the dense networks in both conventions, and the gap at ResNet-50's 51.07 %."""
    table = markdown_table(TABLE_HEADERS, architecture_rows())
    gap = resnet50_convention_gap()
    return (
        f"{table}\n\nResNet-50 pruned to {100 * RESNET50_OP:.2f} % fewer conv+linear MACs (globally smallest |γ| of "
        f"random BN scales, residual groups): {gap['conv_linear']:.2f} % removed counted on convolutions and "
        f"linear layers, {gap['official']:.2f} % in the official convention "
        f"({gap['official'] - gap['conv_linear']:+.2f} points). Computed by `python -m masksparsity architectures` "
        "(exact counts of one image in eval mode, independent of the weights; parameters include BN and the "
        "classifier's bias)."
    )
