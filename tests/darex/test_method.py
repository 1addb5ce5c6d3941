from __future__ import annotations

import itertools

import pytest
import torch

from common.runtime import generator
from darex.method import apply_delta, dare, delta_parameters, q_grid, search_global_q
from darex.models import MLP, SyntheticTasks


@pytest.fixture
def pair():
    torch.manual_seed(0)
    pre = MLP(8, 16, 2, 3)
    ft = MLP(8, 16, 2, 3)
    ft.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in pre.state_dict().items()})
    return pre, ft


def test_deltas_exclude_the_head_and_match_the_difference(pair):
    pre, ft = pair
    deltas = delta_parameters(pre, ft)
    assert set(deltas) == {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    for name, delta in deltas.items():
        assert torch.equal(delta, ft.state_dict()[name] - pre.state_dict()[name])
    assert "head.weight" in delta_parameters(pre, ft, exclude=None)


def test_mismatched_architectures_are_refused(pair):
    pre, _ = pair
    with pytest.raises(ValueError, match="shape"):
        delta_parameters(pre, MLP(8, 32, 2, 3))


def test_no_pruning_restores_the_fine_tuned_model(pair):
    pre, ft = pair
    restored = apply_delta(pre, dare(delta_parameters(pre, ft), p=0.0))
    for name, tensor in ft.state_dict().items():
        if not name.startswith("head"):
            torch.testing.assert_close(restored[name], tensor)
    assert torch.equal(restored["head.weight"], pre.state_dict()["head.weight"]), "non-deltas come from θ_P"


def test_dare_keeps_the_expected_fraction_and_is_unbiased():
    delta = {"w": torch.full((200, 500), 0.5)}
    p = 0.9
    kept = dare(delta, p, generator=generator(0))["w"]
    assert kept.count_nonzero().item() / kept.numel() == pytest.approx(1 - p, abs=0.005)
    values = kept.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(0.5 / (1 - p))
    # E[Δ̂] = Δ and Var[Δ̂] = p/(1-p) Δ² (the variance DAREx analyses, §3).
    assert kept.mean().item() == pytest.approx(0.5, rel=0.02)
    assert kept.var().item() == pytest.approx(p / (1 - p) * 0.25, rel=0.03)


def test_darex_q_is_dare_rescaled_with_the_same_mask():
    delta = {"w": torch.randn(50, 50)}
    p, q = 0.99, 0.05
    dare_delta = dare(delta, p, generator=generator(3))["w"]
    darex_delta = dare(delta, p, q, generator=generator(3))["w"]
    torch.testing.assert_close(darex_delta, dare_delta * (1 - p) / q)
    assert not torch.equal(dare_delta, dare(delta, p, generator=generator(4))["w"]), "the seed sets the mask"


@pytest.mark.parametrize("p, q", [(1.0, None), (-0.1, None), (0.9, 0.05), (0.9, 1.5)])
def test_invalid_rates_and_rescalings(p, q):
    with pytest.raises(ValueError):
        dare({"w": torch.ones(3)}, p, q)


def test_q_grid_spans_dare_to_no_rescaling():
    grid = q_grid(0.99, 25)
    assert grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(1.0) and len(grid) == 25
    assert all(a < b for a, b in itertools.pairwise(grid))
    ratios = [b / a for a, b in itertools.pairwise(grid)]
    assert max(ratios) == pytest.approx(min(ratios)), "log-spaced in 1/q"
    assert q_grid(0.0) == [1.0]


def test_search_global_q_finds_the_maximum_and_breaks_ties_towards_dare():
    best, scores = search_global_q(lambda q: -((q - 0.3) ** 2), [0.1, 0.2, 0.3, 0.4])
    assert best == 0.3 and len(scores) == 4
    best, _ = search_global_q(lambda q: 1.0, [0.1, 0.5, 1.0])
    assert best == 0.1


def test_synthetic_tasks_are_related_but_different():
    tasks = SyntheticTasks(in_dim=16, n_classes=4, shift=0.8, seed=0)
    x1, y_pre = tasks.sample("pretrain", 2000, seed=1)
    x2, y_ft = tasks.sample("finetune", 2000, seed=1)
    assert torch.equal(x1, x2), "same inputs for the same seed"
    agreement = (y_pre == y_ft).float().mean().item()
    assert 0.3 < agreement < 0.95
    with pytest.raises(ValueError):
        tasks.sample("other", 1, seed=0)
