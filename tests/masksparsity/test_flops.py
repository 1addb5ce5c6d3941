"""The official FLOPs convention (conv, linear, BN x2, ReLU; no pooling) against closed forms and an independent
module-hook count, and the card's architecture table against a fresh computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.counting import count_flops
from common.results import markdown_table, read_block
from masksparsity import method as M
from masksparsity.flops import (
    TABLE_HEADERS,
    architecture_rows,
    architecture_table,
    official_macs,
    resnet50_convention_gap,
)
from masksparsity.models import build_model


def cifar_closed_form(depth: int, w: int, c_in: int, size: int, classes: int, projection: bool) -> dict[str, int]:
    """MACs of a CIFAR-style ResNet by kind, written out from the architecture (He et al. §4.2, pycls)."""
    n = (depth - 2) // 6
    hw = size * size
    out = {"conv": hw * 9 * c_in * w, "bn": 2 * w * hw, "relu": w * hw, "linear": 4 * w * classes}
    cin = w
    for s, cout in enumerate((w, 2 * w, 4 * w)):
        for b in range(n):
            if s > 0 and b == 0:
                size = (size + 1) // 2
            hw = size * size
            out["conv"] += hw * 9 * cin * cout + hw * 9 * cout * cout
            out["bn"] += 2 * (2 * cout * hw)
            out["relu"] += 2 * cout * hw  # after bn1, and after the addition
            if cin != cout and projection:
                out["conv"] += hw * cin * cout
                out["bn"] += 2 * cout * hw
            cin = cout
    return out


@pytest.mark.parametrize("shortcut", ["projection", "zero_pad"])
def test_official_macs_of_a_cifar_resnet_match_the_closed_form(shortcut):
    model = build_model("resnet20", width=4, in_channels=3, num_classes=10, shortcut=shortcut)
    x = torch.randn(2, 3, 12, 12)
    got = official_macs(model, x)
    assert got.to_json() == {**cifar_closed_form(20, 4, 3, 12, 10, shortcut == "projection"), "total": got.total}
    assert got.conv_linear == count_flops(model, x[:1]) // 2  # what common.counting counts


def test_relu_and_bn_terms_equal_an_independent_module_hook_count_on_resnet50():
    """torchvision's ResNet-50 calls nn.ReLU modules (one module several times per block): the function-level
    ReLU count must equal the output elements seen by hooks on those modules; BN = 2 per BN output element."""
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=10, zero_init_last_bn=False).eval()
    relu_elements, bn_elements = [], []
    hooks = [m.register_forward_hook(lambda mod, i, o: relu_elements.append(o[0].numel()))
             for m in model.modules() if isinstance(m, nn.ReLU)]  # fmt: skip
    hooks += [m.register_forward_hook(lambda mod, i, o: bn_elements.append(o[0].numel()))
              for m in model.modules() if isinstance(m, nn.BatchNorm2d)]  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    got = official_macs(model, x)
    assert got.relu == sum(relu_elements) and len(relu_elements) == 1 + 3 * 16  # stem + 3 per bottleneck
    assert got.bn == 2 * sum(bn_elements) and len(bn_elements) == 53
    assert got.conv_linear == count_flops(model, x) // 2


def test_official_convention_reads_a_smaller_reduction_for_a_pruned_resnet():
    """BN and ReLU shrink with the pruned channels but the stem and the input-side terms do not shrink as much,
    so the official reduction is a little below the conv+linear one (the issue's ~0.2 points on ResNet-50)."""
    model = build_model("resnet20", width=8, in_channels=3, zero_init_last_bn=False).eval()
    spec = M.prune_spec(model, residual_groups=True)
    x = torch.randn(1, 3, 16, 16)
    mask = M.global_mask_for_reduction(model, spec, M.MacModel(model, spec, x), 0.6303)
    pruned = M.prune(model, spec, mask)
    dense, small = official_macs(model, x), official_macs(pruned, x)
    conv_linear = 1 - small.conv_linear / dense.conv_linear
    official = 1 - small.total / dense.total
    assert conv_linear >= 0.6303 and 0 < conv_linear - official < 0.01


def _card_block() -> str:
    from common.runtime import REPO_ROOT

    return read_block((REPO_ROOT / "masksparsity" / "README.md").read_text(), "architectures")


def test_card_architecture_rows_are_what_the_command_computes():
    """`python -m masksparsity architectures` wrote the block; the dense rows are exact counts (meta device)."""
    assert markdown_table(TABLE_HEADERS, architecture_rows()) in _card_block()


@pytest.mark.slow  # slices a real ResNet-50 (the CPU work is the init and the copies)
def test_card_architecture_block_is_what_the_command_computes():
    gap = resnet50_convention_gap()
    assert 0.1 < gap["conv_linear"] - gap["official"] < 0.4  # the "about 0.2 pp high"
    assert _card_block() == architecture_table().strip()
