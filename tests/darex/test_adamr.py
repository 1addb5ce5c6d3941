from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from darex.adamr import AdamR


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def run(model, optimizer, steps=25):
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def distance(model, reference):
    return sum((p - r).pow(2).sum().item() for p, r in zip(model.parameters(), reference, strict=True)) ** 0.5


def test_zero_decay_matches_adam_step_for_step():
    """In float64: torch's Adam (foreach, lerp) and AdamR round differently, and the training feeds that back
    (float32: 4e-8 apart after 20 steps, within 5x of a 1e-6 tolerance; float64: ~1e-16)."""
    a, b = make_model().double(), make_model().double()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    opt_b = AdamR(b.parameters(), [p.detach() for p in b.parameters()], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)
    torch.manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
        for model, opt in ((a, opt_a), (b, opt_b)):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            # float64 (u = 1.1e-16), |θ| < 1: ~10 roundings per step over <= 20 steps gives <~ 1e-14 (observed
            # 1e-16); 1e-12 keeps 100x over that and is far below one Adam step (lr = 1e-2)
            torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["l2", "l1"])
def test_decay_pulls_towards_the_reference(mode):
    base = make_model()
    reference = [p.detach().clone() for p in base.parameters()]
    distances = []
    for lam in (0.0, 0.5, 2.0):
        model = copy.deepcopy(base)
        run(model, AdamR(model.parameters(), reference, lr=1e-2, weight_decay=lam, mode=mode))
        distances.append(distance(model, reference))
    assert distances[0] > distances[1] > distances[2]


def test_bad_arguments():
    model = make_model()
    with pytest.raises(ValueError, match="reference"):
        AdamR(model.parameters(), [torch.zeros(1)])
    with pytest.raises(ValueError, match="mode"):
        AdamR(model.parameters(), [p.detach() for p in model.parameters()], mode="l3")
