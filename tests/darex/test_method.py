from __future__ import annotations

import copy
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


# ----------------------------------------------------------------------------------------------------
# DAREx-q, importance-based DPP, analytical q, LoRA deltas

from darex.method import (  # noqa: E402
    analytical_layer_q,
    analytical_row_q,
    bernoulli_phi,
    coarse_to_fine_q,
    collect_input_statistics,
    delta_statistics,
    head_inputs,
    kept_fraction,
    lora_delta_parameters,
    magnitude_prune,
    output_change,
    wanda_prune,
)


def test_darex_q_with_q_equal_one_minus_p_is_dare():
    delta = {"w": torch.randn(30, 30), "b": torch.randn(30)}
    for p in (0.5, 0.9, 0.99):
        a = dare(delta, p, generator=generator(1))
        b = dare(delta, p, 1 - p, generator=generator(1))
        assert all(torch.equal(a[k], b[k]) for k in delta)


def test_per_layer_q_rescales_each_tensor():
    delta = {"a": torch.ones(1000), "b": torch.ones(1000)}
    pruned = dare(delta, 0.9, {"a": 0.1, "b": 0.5}, generator=generator(0))
    assert pruned["a"].max().item() == pytest.approx(10.0) and pruned["a"].min().item() == 0.0
    assert pruned["b"].max().item() == pytest.approx(2.0)


def test_magnitude_keeps_exactly_the_top_fraction():
    torch.manual_seed(0)
    delta = {"w": torch.randn(40, 50)}
    for p in (0.5, 0.9, 0.99):
        kept = magnitude_prune(delta, p)["w"]
        k = round((1 - p) * delta["w"].numel())
        assert int(kept.count_nonzero()) == k
        threshold = delta["w"].abs().flatten().topk(k).values.min()
        assert torch.equal(kept != 0, delta["w"].abs() >= threshold)
        assert torch.equal(kept[kept != 0], delta["w"][kept != 0]), "no rescaling"


def test_wanda_keeps_top_scores_per_row():
    delta = {"w": torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]), "b": torch.tensor([1.0, -3.0])}
    norms = {"w": torch.tensor([10.0, 1.0, 1.0, 0.1])}  # column 0 matters most, column 3 least
    pruned = wanda_prune(delta, 0.5, norms)
    assert pruned["w"].tolist() == [[1.0, 0.0, 3.0, 0.0], [4.0, 3.0, 0.0, 0.0]]
    assert pruned["b"].tolist() == [0.0, -3.0], "tensors without input norms fall back to magnitude"


def test_kept_fraction_matches_one_minus_p():
    delta = {"w": torch.ones(300, 300)}
    assert kept_fraction(dare(delta, 0.95, generator=generator(0))) == pytest.approx(0.05, abs=0.003)


def test_bernoulli_phi():
    assert bernoulli_phi(0.5) == 0.5
    assert bernoulli_phi(0.5 + 1e-6) == pytest.approx(0.5, abs=1e-5)
    assert bernoulli_phi(0.99) == pytest.approx(0.98 / __import__("math").log(99), rel=1e-9)
    with pytest.raises(ValueError):
        bernoulli_phi(1.0)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_analytical_q_lies_between_dare_and_no_rescaling(p):
    torch.manual_seed(0)
    c = 0.05 * torch.randn(64, 33)
    q = analytical_row_q(c, p, eta=0.5)
    assert q.shape == (64,)
    assert (q >= 1 - p - 1e-6).all() and (q <= 0.998 + 1e-6).all()


def test_analytical_q_is_dare_for_negligible_deltas_and_grows_with_their_variance():
    torch.manual_seed(0)
    p = 0.9
    tiny = analytical_row_q(1e-6 * torch.randn(32, 16), p, eta=0.5).mean().item()
    assert tiny == pytest.approx(1 - p, abs=2e-3)  # a flat float16 objective stops within 2 steps of 0.001
    q_small = analytical_row_q(0.5 * torch.randn(32, 16), p, eta=0.5).mean().item()
    q_large = analytical_row_q(2.0 * torch.randn(32, 16), p, eta=0.5).mean().item()
    assert q_large > q_small, "larger Σc² (variance term) pushes q up, i.e. less rescaling"


def test_analytical_layer_q_shares_q_with_bias_and_falls_back_to_the_mean():
    torch.manual_seed(0)
    deltas = {"l1.weight": torch.randn(8, 4), "l1.bias": torch.randn(8), "norm.weight": torch.randn(4)}
    q = analytical_layer_q(deltas, {"l1.weight": torch.randn(4)}, p=0.9, eta=0.5)
    assert q["l1.bias"] == q["l1.weight"] == q["norm.weight"]
    assert 0.1 - 1e-6 <= q["l1.weight"] <= 1.0


def test_coarse_to_fine_search_recovers_a_known_optimum():
    target = 0.05  # 1/q = 20 at p = 0.99

    def objective(q):
        return -abs(__import__("math").log(q / target))

    best, scores = coarse_to_fine_q(objective, p=0.99, coarse=7, fine=5)
    assert abs(__import__("math").log(best / target)) < 0.35
    assert min(scores) == pytest.approx(0.01) and len(scores) <= 12


def test_coarse_search_stops_after_patience():
    calls = []

    def objective(q):
        calls.append(q)
        return -q  # best at DARE's end of the grid

    best, _ = coarse_to_fine_q(objective, p=0.9, coarse=10, fine=0, patience=3)
    assert best == pytest.approx(0.1) and len(calls) == 4


def test_input_statistics_and_head_inputs():
    torch.manual_seed(0)
    model = MLP(4, 6, 1, 2)
    x = torch.randn(10, 4)
    stats = collect_input_statistics(model, lambda m: m(x))
    assert set(stats) == {"body.0.weight", "head.weight"}
    torch.testing.assert_close(stats["body.0.weight"].mean, x.mean(0))
    torch.testing.assert_close(stats["body.0.weight"].norm, x.norm(dim=0))
    rep = head_inputs(model, model.head, lambda m: m(x))
    torch.testing.assert_close(rep, model.body(x))
    assert output_change(rep, rep) == 0.0


def test_delta_statistics():
    stats = delta_statistics({"a": torch.tensor([1.0, -1.0]), "b": torch.tensor([2.0, 0.0])})
    assert stats["mean"] == 0.5 and stats["mean_abs"] == 1.0 and stats["max_abs"] == 2.0 and stats["count"] == 4


def test_lora_delta_equals_merged_weight_difference():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = MLP(6, 8, 2, 3)
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # LoRA's B starts at zero; make the delta non-trivial
    deltas = lora_delta_parameters(model)
    merged = model.merge_and_unload()
    expected = delta_parameters(base, merged, exclude=None)
    assert set(deltas) == {"body.0.weight", "body.2.weight"}
    # float32 (the deltas are float32 whatever the model's dtype): B·A·s, W + B·A·s and its difference to W each
    # round at the scale of the merged weight, <= 3 eps·scale in all (observed <= 2 eps·scale); 16 eps·scale keeps
    # a margin and is far below a wrong scaling s, which moves ΔW by O(|ΔW|)
    eps = torch.finfo(torch.float32).eps
    merged_state = merged.state_dict()
    for name, delta in deltas.items():
        scale = float(merged_state[name].abs().max())
        torch.testing.assert_close(delta, expected[name], rtol=0, atol=16 * eps * scale)
    restored = apply_delta(base, deltas)
    for name, tensor in merged_state.items():
        torch.testing.assert_close(restored[name], tensor, rtol=0, atol=16 * eps * float(tensor.abs().max()))


def sequential_row_q(c, p, eta, gamma=0.95, step=0.001, q_max=0.998, stop_fraction=0.8):
    """The scan written as the plain loop the notes describe (one q at a time), for the equivalence test."""
    import math

    c = c.half()
    rows = c.shape[0]
    best = torch.full((rows,), math.inf)
    q_row = torch.full((rows,), 1 - p)
    flagged = torch.zeros(rows, dtype=torch.bool)
    for k in range(math.floor((q_max - (1 - p)) / step + 1e-9) + 1):
        q = (1 - p) + step * k
        bias = torch.tensor(1 - (1 - p) / q, dtype=torch.float64).half()
        var = torch.tensor(eta**2 * bernoulli_phi(p) / (4 * q**2), dtype=torch.float64).half()
        res = (eta * (bias * c.sum(1)) + (var * c.pow(2).sum(1) + math.log(2 / (1 - gamma)))).abs().float()
        improve, fail = res <= best, res >= best
        best = torch.where(improve, res, best)
        q_row = torch.where(improve, torch.tensor(q, dtype=torch.float32), q_row)
        flagged |= fail
        if flagged.float().mean() >= stop_fraction:
            break
    return q_row


@pytest.mark.parametrize("p, scale", [(0.9, 0.3), (0.99, 0.05), (0.5, 1.0), (0.99, 1e-6)])
def test_vectorised_scan_equals_the_sequential_loop(p, scale):
    torch.manual_seed(3)
    c = scale * (torch.randn(40, 24) + 0.2)
    # the same float16 ops on the same c, so the same q on the 0.001 grid; 1e-6 only absorbs its float32 rounding
    torch.testing.assert_close(analytical_row_q(c, p, eta=0.6), sequential_row_q(c, p, eta=0.6), atol=1e-6, rtol=0)


def test_optimised_layer_q_reduces_the_output_mismatch_and_stays_in_range():
    from torch.func import functional_call

    from darex.method import optimise_layer_q

    torch.manual_seed(0)
    pre = MLP(16, 64, 2, 3)
    ft = copy.deepcopy(pre)
    with torch.no_grad():
        for p_ft in ft.parameters():
            p_ft.add_(0.05 * torch.randn_like(p_ft) + 0.02)  # deltas with a mean: DARE's 1/(1-p) overshoots
    deltas = delta_parameters(pre, ft)  # the head is excluded
    p = 0.95
    masked = dare(deltas, p, 1.0, generator(0))
    x = torch.randn(256, 16)
    with torch.no_grad():
        target = ft(x)

    def mismatch(model, params, rows=slice(None)) -> torch.Tensor:
        return torch.mean((functional_call(model, params, (x[rows],)) - target[rows]) ** 2)

    def loss(model, params, step):
        return mismatch(model, params, slice((step % 4) * 48, (step % 4 + 1) * 48))

    def val(model, params):
        return float(mismatch(model, params, slice(192, 256)))

    pre_state = pre.state_dict()
    q = optimise_layer_q(ft, pre_state, masked, p, loss, steps=150, val_loss=val, patience=20)
    assert q.keys() == deltas.keys()
    assert all(1 - p - 1e-6 <= v <= 1.0 for v in q.values())
    for name in q:  # a layer's weight and bias share one q
        assert q[name] == q[name.rsplit(".", 1)[0] + ".weight"]

    def params_for(q_of):
        return {n: pre_state[n] + masked[n] / q_of(n) for n in masked}

    with torch.no_grad():
        dare_mismatch = val(ft, params_for(lambda n: 1 - p))
        learned_mismatch = val(ft, params_for(lambda n: q[n]))
    assert learned_mismatch < 0.8 * dare_mismatch
    assert torch.equal(dare(deltas, p, q, generator(0))["body.0.weight"] != 0, masked["body.0.weight"] != 0)
