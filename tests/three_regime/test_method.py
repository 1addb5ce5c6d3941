"""The method's parts on constructed cases: LMC, CKA, magnitude pruning, regimes, case-study rules."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from three_regime import method
from three_regime.config import ModelConfig, RegimeConfig
from three_regime.models import MLPBN, PreResNet, build_model
from three_regime.train import Schedule, error_rate, reestimate_bn, train


@pytest.fixture(scope="module")
def trained():
    from three_regime.data import mnist1d

    torch.manual_seed(0)
    data = mnist1d(num_samples=1000)
    model = MLPBN(40, 10, hidden_layers=2, hidden_width=32)
    train(model, data, Schedule(epochs=15, batch_size=32, lr=0.1, weight_decay=5e-4), seed=0)
    return model, data


def _error_fn(data, dtype=torch.float32):
    x = data.x_train.to(dtype)

    def error_at(net):
        reestimate_bn(net, x)
        return error_rate(net, x, data.y_train)

    return error_at


def test_mode_connectivity_formula():
    assert method.mode_connectivity([0.1, 0.1, 0.1]) == 0.0
    assert method.mode_connectivity([0.1, 0.5, 0.1]) == pytest.approx(-0.4)  # a barrier
    assert method.mode_connectivity([0.2, 0.0, 0.2]) == pytest.approx(0.2)  # the path is better


def test_lmc_of_a_model_with_itself_is_zero(trained):
    model, data = trained
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = method.linear_mode_connectivity(model, state, state, _error_fn(data), points=11)
    assert len(result.errors) == 11 and result.ts[0] == 0.0 and result.ts[-1] == 1.0
    assert result.mc == 0.0
    assert max(result.errors) < 0.5  # the model is trained (chance: 0.9)


def test_lmc_detects_a_constructed_barrier(trained):
    """Permuting hidden units gives the same function (same error) but the midpoint of the two is a bad model.

    In float64: the twin sums its hidden units in another order, so its logits differ by rounding (float32:
    ~4e-6 here, against a smallest top-2 logit gap of ~1.5e-3); in float64 (~1e-14) no prediction can flip.
    """
    trained_model, data = trained
    model = copy.deepcopy(trained_model).double()
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v.clone() for k, v in a.items()}
    g = torch.Generator().manual_seed(1)
    for layer, bn, nxt in (("features.0", "features.1", "features.3"), ("features.3", "features.4", "classifier")):
        perm = torch.randperm(32, generator=g)
        for name in ("weight", "bias"):
            b[f"{layer}.{name}"] = b[f"{layer}.{name}"][perm]
        for name in ("weight", "bias", "running_mean", "running_var"):
            b[f"{bn}.{name}"] = b[f"{bn}.{name}"][perm]
        b[f"{nxt}.weight"] = b[f"{nxt}.weight"][:, perm]
    error_at = _error_fn(data, torch.float64)
    result = method.linear_mode_connectivity(model, a, b, error_at, points=11)
    assert result.errors[0] == result.errors[-1]  # the permuted twin computes the same function
    assert result.mc < -0.1
    assert result.mc == pytest.approx((result.errors[0] + result.errors[-1]) / 2 - max(result.errors))


def test_cka_identity_orthogonal_and_scale_invariance():
    """In float64 throughout: ``x @ q`` formed in float32 moves CKA by up to ~6e-10, depending on the CPU kernels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    # float64 (u = 1.1e-16): Gram sums over n·d = 2000 products and n² = 40000 entries, relative error
    # <~ 1e-13; 1e-12 keeps that margin (observed <= 2e-16) and is far below any real CKA change (>= 1e-3).
    tol = 1e-12
    assert method.linear_cka(x, x) == pytest.approx(1.0, abs=tol)
    assert method.linear_cka(x, x @ q) == pytest.approx(1.0, abs=tol)
    assert method.linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=tol)
    y = torch.randn(200, 10, generator=g, dtype=torch.float64)
    base = method.linear_cka(x, y)
    assert 0.0 <= base < 0.3  # independent features are dissimilar
    assert method.linear_cka(x @ q, 3.0 * y) == pytest.approx(base, abs=tol)
    assert method.linear_cka(x, y) == pytest.approx(method.linear_cka(y, x), abs=tol)
    assert method.linear_cka(x, x @ q, debiased=True) == pytest.approx(1.0, abs=tol)
    assert abs(method.linear_cka(x, y, debiased=True)) < abs(base)  # debiasing removes the finite-sample floor


def test_cka_feature_space_equivalence():
    """Biased linear CKA equals ||Yᵀ X||_F² / (||Xᵀ X||_F ||Yᵀ Y||_F) on centred features (Kornblith et al. eq. 5)."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 4, generator=g).double(), torch.randn(50, 6, generator=g).double()
    x, y = x - x.mean(0), y - y.mean(0)
    expected = (y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm())
    # float64: both sides are sums of <= 2500 products, relative error <~ 1e-13 (observed ~1e-16)
    assert method.linear_cka(x, y) == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("scope", ["uniform", "global"])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.37, 0.8, 1.0])
def test_achieved_density_equals_target(scope, density):
    torch.manual_seed(0)
    model = MLPBN(40, 10, hidden_layers=3, hidden_width=64)
    masks = method.magnitude_masks(model, density, scope)
    assert method.classifier_name(model) == "classifier" and "classifier.weight" not in masks
    assert set(masks) == {"features.0.weight", "features.3.weight", "features.6.weight"}
    method.apply_masks(model, masks)
    total = sum(m.numel() for m in masks.values())
    if scope == "uniform":
        for name, m in masks.items():
            assert int(m.sum()) == round(density * m.numel()), name
        assert abs(method.achieved_density(model, masks) - density) <= len(masks) / total
    else:
        assert int(sum(m.sum() for m in masks.values())) == round(density * total)
    assert method.achieved_density(model, masks) == pytest.approx(method.mask_density(masks))


def test_magnitude_masks_keep_the_largest_weights():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(16.0).view(4, 4) - 7.5)
    masks = method.magnitude_masks(model, 0.25, "uniform")
    kept = model[0].weight[masks["0.weight"]].abs()
    assert sorted(kept.tolist()) == [6.5, 6.5, 7.5, 7.5]
    assert "1.weight" in method.magnitude_masks(model, 0.5, "uniform", prune_classifier=True)


def test_preresnet_prunable_layers_are_every_conv():
    model = build_model(ModelConfig(arch="preresnet", depth=8), (3, 32, 32), 10)
    assert isinstance(model, PreResNet)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    weights = method.prunable_weights(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(weights) == sorted(f"{n}.weight" for n in convs) and "conv1.weight" in weights
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 1 + 3 * 2 + 2  # stem, 3 blocks, 2 shortcuts
    n20 = sum(p.numel() for p in PreResNet(20).parameters())
    assert 0.26e6 < n20 < 0.28e6  # PreResNet-20: ~0.27 M parameters


def test_regime_classification():
    mc = np.array([[0.0, -0.005], [-0.1, 0.0], [-0.3, 0.0]])
    cka = np.array([[0.90, 0.95], [0.80, 0.99], [0.70, 0.97]])
    regimes = method.classify_regimes(mc, cka, RegimeConfig(mc_barrier=0.02))
    assert regimes.tolist() == [["II-B", "II-A"], ["I", "II-B"], ["I", "II-B"]]
    fixed = method.classify_regimes(mc, cka, RegimeConfig(mc_barrier=0.2, cka_split="threshold", cka_threshold=0.96))
    assert fixed.tolist() == [["II-A", "II-A"], ["II-A", "II-B"], ["I", "II-B"]]
    assert [method.regime_move(r) for r in method.REGIMES] == [1, -1, 0]


def test_case_studies_score_the_option_each_rule_reaches():
    # rows: hot -> cold. Column 0 (low density): barrier when cold, best when hot. Column 1: best when cold.
    test_error = np.array([[20.0, 12.0], [25.0, 11.0], [30.0, 10.0]])
    regimes = np.array([["II-A", "II-A"], ["I", "II-A"], ["I", "II-B"]], dtype=object)
    mc = np.array([[0.0, 0.0], [-0.1, 0.0], [-0.3, 0.0]])
    cka = np.array([[0.9, 0.9], [0.8, 0.95], [0.7, 0.99]])
    dense_error = np.array([15.0, 12.0, 10.0])  # the coldest dense model is the most accurate
    picks = method.select_model(test_error, regimes, mc, cka, dense_error)
    assert picks["regime rule"].rows == [0, 2] and picks["regime rule"].test_error == [20.0, 10.0]
    assert picks["baseline (dense accuracy)"].rows == [2, 2] and picks["oracle"].rows == [0, 2]
    assert picks["regime rule"].mean_error < picks["baseline (dense accuracy)"].mean_error
    moves = method.hyperparameter_direction(test_error, regimes, dense_error)
    # start (row 1, col 0) is Regime I -> hotter = row 0; (row 0, col 1) is II-A -> colder = row 1
    assert moves["regime rule"].rows == [1, 0, 1, 1, 2, 2]
    assert all(o <= r for o, r in zip(moves["oracle"].test_error, moves["regime rule"].test_error, strict=True))
    walk = method.tune_by_regime_walk(test_error, regimes, dense_error, start_row=2)
    assert walk["regime rule"].rows == [0, 2]  # col 0: I -> hotter -> I -> hotter -> II-A (colder = seen): stop
    assert math.isfinite(walk["regime rule"].mean_error)
