"""The saliency identity, the dependency sets, grouping and selection."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nvit.method import (
    SaliencyAccumulator,
    apply_latency_term,
    calibrate_eta,
    kept_fractions,
    layer_mask,
    layers,
    make_groups,
    prune_to_counts,
    reduce_units,
    uniform_keep_counts,
    weight_times_grad,
)
from tests.nvit.test_models import prune_some, tiny


def gradients(model, dtype=torch.float64):
    model = model.to(dtype)
    torch.manual_seed(1)
    x, y = torch.randn(6, 2, 8, 8, dtype=dtype), torch.randint(0, 5, (6,))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return model, x, y


@pytest.mark.parametrize("layer", [("EMB", None), ("H", 0), ("QK", 1), ("V", 0), ("MLP", 1)])
def test_saliency_equals_squared_gate_gradient_float64(layer):
    """Eq. 4-6: ∂L/∂g_S for a gate on the unit's weights equals Σ w ∂L/∂w, so I_S = (∂L/∂g_S)²."""
    model, x, y = gradients(tiny(distill=True))
    wg = weight_times_grad(model)
    for unit in (0, 2):
        probe = copy.deepcopy(model)
        layer_mask(probe, layer)[unit] = 0.0
        indicator = {n: 1.0 - m.double() for n, m in probe.param_masks().items()}
        gate = torch.ones((), dtype=torch.float64, requires_grad=True)
        params = {n: p.detach() * (1 + (gate - 1) * indicator[n]) for n, p in model.named_parameters()}
        out = torch.func.functional_call(model, {**params, **dict(model.named_buffers())}, (x,))
        (g,) = torch.autograd.grad(F.cross_entropy(out, y), gate)
        # float64 (u = 1.1e-16): two summation orders of the same ~10³ products w·∂L/∂w, relative error <~ 1e-13
        # (observed <= 5e-16); rtol 1e-10 keeps 10³x over that, atol covers g of ~1e-6 (QK units)
        torch.testing.assert_close(g, wg[layer][unit], rtol=1e-10, atol=1e-14)
        acc = SaliencyAccumulator("hessian")
        acc.add_batch(model)
        # the squares of the same two float64 numbers: relative error doubles, still <~ 1e-13
        torch.testing.assert_close(acc.step_scores(model)[layer][unit], g.detach() ** 2, rtol=1e-10, atol=1e-20)


def test_unit_sums_cover_exactly_the_weights_pruning_zeroes():
    model = tiny()
    elem = {n: torch.rand_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    sums = reduce_units(model, elem)
    for layer in layers(model):
        for unit in range(len(layer_mask(model, layer))):
            probe = copy.deepcopy(model)
            layer_mask(probe, layer)[unit] = 0.0
            expected = sum(float(((1 - m.double()) * elem[n]).sum()) for n, m in probe.param_masks().items())
            # float64 sums of <= 10³ positive terms in two orders: relative error <~ 10³·u ≈ 1e-13
            assert float(sums[layer][unit]) == pytest.approx(expected, rel=1e-9), (layer, unit)


def test_accumulator_averages_batches_and_applies_ema_and_divisors():
    model, _, _ = gradients(tiny())
    wg = weight_times_grad(model)
    acc = SaliencyAccumulator("hessian", divisors=(2.0, 1.0, 1.0, 1.0, 1.0), momentum=0.5)
    acc.add_batch(model)
    acc.add_batch(model)
    first = acc.step_scores(model)
    torch.testing.assert_close(first[("EMB", None)], (wg[("EMB", None)] / 2) ** 2)
    model.zero_grad()  # zero gradients: the new average is 0, the EMA halves the old score
    acc.add_batch(model)
    second = acc.step_scores(model)
    torch.testing.assert_close(second[("MLP", 0)], 0.5 * first[("MLP", 0)])
    fo = SaliencyAccumulator("first_order")
    model, _, _ = gradients(tiny())
    fo.add_batch(model)
    torch.testing.assert_close(fo.step_scores(model)[("H", 1)], weight_times_grad(model)[("H", 1)].abs())
    with pytest.raises(RuntimeError):
        SaliencyAccumulator("hessian").step_scores(model)
    with pytest.raises(ValueError):
        SaliencyAccumulator("oracle")


def test_groups_sum_sorted_units_and_never_empty_a_layer():
    model = prune_some(tiny())
    scores = {k: torch.arange(len(layer_mask(model, k)), dtype=torch.float64).flip(0) for k in layers(model)}
    groups = make_groups(model, scores, (4, 1, 2, 2, 8))
    by_layer = {}
    for g in groups:
        by_layer.setdefault(g.layer, []).append(g)
        assert all(layer_mask(model, g.layer)[u] == 1 for u in g.units)
        assert g.score == sum(float(scores[g.layer][u]) for u in g.units)
    # MLP block 1 keeps 14 units: groups of 8 -> one prunable group (the top group is protected)
    assert len(by_layer[("MLP", 1)]) == 1 and sorted(by_layer[("MLP", 1)][0].units) == list(range(16, 24))
    assert ("H", 0) in by_layer and len(by_layer[("H", 0)]) == 1  # 2 heads kept, one prunable
    savings = apply_latency_term(groups, lambda layer, n: 10.0 * n, eta=0.5)
    assert all(g.ranked == g.score - 0.5 * 10.0 * len(g.units) for g in savings)
    assert calibrate_eta(groups, 1.0) > 0


def test_uniform_counts_and_prune_to_counts():
    model = tiny()
    counts = uniform_keep_counts(model, 0.5, (4, 1, 2, 2, 8))
    assert counts[("EMB", None)] == 8 and counts[("H", 0)] == 2 and counts[("QK", 0)] == 2
    assert counts[("V", 1)] == 4 and counts[("MLP", 0)] == 16  # 12 units = 1.5 groups of 8, rounded to 2 groups
    scores = {k: torch.rand(len(layer_mask(model, k)), dtype=torch.float64) for k in layers(model)}
    prune_to_counts(model, scores, counts)
    for k, c in counts.items():
        assert int(layer_mask(model, k).sum()) == c
        kept = layer_mask(model, k).bool()
        assert scores[k][kept].min() >= scores[k][~kept].max()
    fr = kept_fractions(model)
    assert fr["EMB"] == 0.5 and fr["MLP"] == pytest.approx(16 / 24)


def test_random_baseline_draws_once_per_group_whatever_its_size():
    from nvit.method import Group, redraw_random_scores

    groups = [Group(layer=("MLP", i % 3), units=list(range(16)), score=8.0) for i in range(200)]
    groups += [Group(layer=("H", i % 3), units=[0], score=0.5) for i in range(200)]
    redraw_random_scores(groups, torch.Generator().manual_seed(0))
    mlp = [g.score for g in groups if g.layer[0] == "MLP"]
    heads = [g.score for g in groups if g.layer[0] == "H"]
    assert all(0.0 <= g.score < 1.0 and g.ranked == g.score for g in groups)
    assert abs(sum(mlp) / len(mlp) - sum(heads) / len(heads)) < 0.1  # no size bias


def test_official_weight_sets_sum_the_official_tensors():
    """The official criterion sets (notes §1.1), checked against sums written out tensor by tensor."""
    from nvit.method import reduce_units_official

    model = tiny(distill=True)
    elem = {n: torch.rand_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    got = reduce_units_official(model, elem)
    h, dq, dv = 3, 4, 6
    emb = elem["patch_embed.proj.weight"].sum((1, 2, 3)) + elem["patch_embed.proj.bias"]
    for i in range(2):
        p = f"blocks.{i}."
        q, k, v = (elem[p + f"attn.{n}.weight"] for n in "qkv")
        qb, kb, vb = (elem[p + f"attn.{n}.bias"] for n in "qkv")
        for head in range(h):
            rows, vrows = slice(head * dq, (head + 1) * dq), slice(head * dv, (head + 1) * dv)
            want = q[rows].sum() + k[rows].sum() + qb[rows].sum() + kb[rows].sum() + v[vrows].sum() + vb[vrows].sum()
            assert float(got[("H", i)][head]) == pytest.approx(float(want), rel=1e-12)
        for j in range(dq):  # QK: the q rows of index j in every head, and their biases; not k
            want = q[j::dq].sum() + qb[j::dq].sum()
            assert float(got[("QK", i)][j]) == pytest.approx(float(want), rel=1e-12)
        for j in range(dv):  # V: the v rows and biases only; not the proj columns
            assert float(got[("V", i)][j]) == pytest.approx(float(v[j::dv].sum() + vb[j::dv].sum()), rel=1e-12)
        fc1 = elem[p + "mlp.fc1.weight"]
        torch.testing.assert_close(got[("MLP", i)], fc1.sum(1) + elem[p + "mlp.fc1.bias"])  # not fc2's columns
        emb = emb + q.sum(0) + k.sum(0) + v.sum(0) + elem[p + "attn.proj.weight"].sum(1) + elem[p + "attn.proj.bias"]
        emb = emb + fc1.sum(0) + elem[p + "mlp.fc2.weight"].sum(1) + elem[p + "mlp.fc2.bias"]
    # EMB: no LayerNorm, cls/dist token, position embedding or classifier
    torch.testing.assert_close(got[("EMB", None)], emb, rtol=1e-12, atol=0.0)


def test_official_qk_and_v_sums_are_half_the_dependency_sums():
    """Scaling a QK index's q rows by a and its k rows by 1/a (or a V index's v rows and proj columns) changes
    nothing, so d/da = 0 at a = 1 makes the two halves of the full sum equal: full = 2 x official, score 4x."""
    model, _, _ = gradients(tiny())
    full, official = weight_times_grad(model), weight_times_grad(model, weights="official")
    for i in range(2):
        for s in ("QK", "V"):  # float64 sums of ~10² products: relative error ~1e-14
            torch.testing.assert_close(full[(s, i)], 2 * official[(s, i)], rtol=1e-9, atol=1e-18)
    acc = SaliencyAccumulator("hessian", divisors=(12.0, 12.0, 2.0, 2.0, 1.0), weights="official")
    acc.add_batch(model)
    scores = acc.step_scores(model)
    torch.testing.assert_close(scores[("QK", 1)], (official[("QK", 1)] / 2) ** 2)
    torch.testing.assert_close(scores[("EMB", None)], (official[("EMB", None)] / 12) ** 2)
    with pytest.raises(ValueError, match="weights"):
        SaliencyAccumulator("hessian", weights="some")
    with pytest.raises(ValueError, match="weights"):
        weight_times_grad(model, weights="some")
