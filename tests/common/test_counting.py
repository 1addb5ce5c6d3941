from __future__ import annotations

import pytest
import torch
from torch import nn

from common.counting import Cost, count_flops, count_params, model_cost, relative_cost


def test_linear_flops_equal_closed_form():
    batch, fan_in, fan_out = 8, 20, 30
    flops = count_flops(nn.Linear(fan_in, fan_out), torch.randn(batch, fan_in))
    assert flops == 2 * batch * fan_in * fan_out  # one multiply-accumulate = 2 FLOPs; bias not counted


@pytest.mark.parametrize("stride, padding, groups", [(1, 1, 1), (2, 0, 1), (1, 1, 4)])
def test_conv2d_flops_equal_closed_form(stride, padding, groups):
    batch, c_in, c_out, k, size = 2, 8, 12, 3, 16
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups)
    out = (size + 2 * padding - k) // stride + 1
    expected_macs = batch * c_out * out * out * (c_in // groups) * k * k
    assert count_flops(conv, torch.randn(batch, c_in, size, size)) == 2 * expected_macs


def test_plain_conv_stack_matches_closed_form_and_params():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 5, 1, bias=False))
    cost = model_cost(net, torch.randn(1, 3, 10, 10))
    assert cost.macs == 10 * 10 * (4 * 3 * 9 + 5 * 4)
    assert cost.params == 4 * 3 * 9 + 5 * 4


def attention_flops(batch: int, heads: int, tokens: int, head_dim: int) -> int:
    """q·kᵀ and attn·v: two (tokens × head_dim × tokens) products per head, 2 FLOPs per MAC."""
    return 2 * (2 * batch * heads * tokens * tokens * head_dim)


def test_cpu_scaled_dot_product_attention_is_counted():
    class SDPA(nn.Module):
        def forward(self, q):
            return nn.functional.scaled_dot_product_attention(q, q, q)

    assert count_flops(SDPA(), torch.randn(3, 2, 5, 8)) == attention_flops(3, 2, 5, 8)


def test_multihead_attention_fast_path_is_counted():
    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    projections = 2 * 5 * 16 * (3 * 16) + 2 * 5 * 16 * 16
    assert count_flops(SelfAttention(), torch.randn(1, 5, 16)) == projections + attention_flops(1, 2, 5, 8)
    assert torch.backends.mha.get_fastpath_enabled(), "the fast path is restored after counting"


def test_count_params_shared_nonzero_trainable():
    shared = nn.Linear(4, 4, bias=False)
    net = nn.Sequential(shared, shared, nn.Linear(4, 2))
    assert count_params(net) == 16 + 10
    with torch.no_grad():
        shared.weight[:2] = 0
    assert count_params(net, nonzero=True) == 8 + int(torch.count_nonzero(net[2].weight)) + 2
    net[2].requires_grad_(False)
    assert count_params(net, trainable_only=True) == 16


def test_relative_cost_ratios():
    x = torch.randn(1, 10)
    dense, small = nn.Linear(10, 10, bias=False), nn.Linear(10, 4, bias=False)
    rel = relative_cost(small, dense, x)
    assert rel.params_ratio == pytest.approx(0.4) and rel.flops_ratio == pytest.approx(0.4)
    assert rel.params_reduction == pytest.approx(0.6) and rel.flops_compression == pytest.approx(2.5)
    assert relative_cost(small, Cost(params=100, flops=200), x).flops_ratio == pytest.approx(80 / 200)
    assert set(rel.to_json()) >= {"dense", "model", "params_ratio", "flops_reduction"}


def test_flops_by_module_and_mode_restored():
    net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)).train()
    per_module = count_flops(net, torch.randn(3, 4), by_module=True)
    assert per_module["Global"] == 2 * 3 * (4 * 8 + 8 * 2)
    assert net.training
