"""The method's invariants: pruned == masked dense, costs match counters and closed forms, the masked penalty
touches only masked γ, residual groups share one channel set, ResNet-50 prunes and runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.counting import count_flops, count_params
from masksparsity import method as M
from masksparsity.models import build_model


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial γ, β and running statistics, so that equivalences are not satisfied by accident."""
    g = torch.Generator().manual_seed(seed)
    for bn in M.all_bns(model):
        n = bn.num_features
        bn.weight.data = torch.rand(n, generator=g) * 0.9 + 0.1
        bn.bias.data = torch.randn(n, generator=g) * 0.2
        bn.running_mean = torch.randn(n, generator=g) * 0.1
        bn.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def cifar(depth: int = 20, width: int = 8, **kw) -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(build_model(f"resnet{depth}", width=width, in_channels=1, zero_init_last_bn=False, **kw))


# Equivalences (pruned == masked dense) are checked in float64, with float64's default tolerances (rtol 1e-7,
# atol 1e-7): the two models differ only in summation order (observed <= 2e-15 relative; float32: up to 7e-7).


@pytest.mark.parametrize("residual_groups", [False, True])
def test_pruned_model_equals_masked_dense_model(residual_groups):
    model = cifar().double()
    spec = M.prune_spec(model, residual_groups=residual_groups)
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    cost = M.MacModel(model, spec, x)
    mask = M.global_mask_for_reduction(model, spec, cost, 0.5)
    pruned = M.prune(model, spec, mask)
    assert count_params(pruned) < count_params(model)
    torch.testing.assert_close(pruned(x), M.apply_mask(model, spec, mask, zero_beta=True)(x))


def test_zero_pad_shortcut_prunes_inner_channels_and_refuses_residual_groups():
    model = cifar(shortcut="zero_pad").double()
    spec = M.prune_spec(model)
    mask = M.uniform_mask(model, spec, 0.5)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(M.prune(model, spec, mask)(x), M.apply_mask(model, spec, mask)(x))
    with pytest.raises(ValueError, match="projection"):
        M.prune_spec(model, residual_groups=True)


def test_beta_folding_is_exact_for_1x1_consumers_and_helps_for_3x3():
    torch.manual_seed(0)
    r50 = randomise_bn(build_model("resnet50", num_classes=10, zero_init_last_bn=False)).double()
    spec = M.prune_spec(r50)
    spec_1x1 = M.PruneSpec([u for u in spec.units if u.name.endswith(".bn2")])  # bn2 -> relu -> conv3 (1x1)
    mask = M.uniform_mask(r50, spec_1x1, 0.5)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    gamma_off = M.apply_mask(r50, spec_1x1, mask, zero_beta=False)  # masked γ = 0, β still feeds relu(β) forward
    torch.testing.assert_close(M.prune(r50, spec_1x1, mask, fold_beta=True)(x), gamma_off(x))
    assert (M.prune(r50, spec_1x1, mask)(x) - gamma_off(x)).abs().max() > 1e-3  # without folding it differs (~0.07)

    model = cifar()  # 3x3 consumers: exact away from the zero-padded border, so the error only shrinks
    spec = M.prune_spec(model)
    mask = M.uniform_mask(model, spec, 0.5)
    x = torch.randn(4, 1, 16, 16)
    target = M.apply_mask(model, spec, mask, zero_beta=False)(x)
    err_raw = (M.prune(model, spec, mask)(x) - target).abs().mean()
    err_fold = (M.prune(model, spec, mask, fold_beta=True)(x) - target).abs().mean()
    assert err_fold < 0.5 * err_raw


def test_flops_and_params_of_a_plain_conv_stack_match_counter_and_closed_form():
    torch.manual_seed(0)
    c_in, c1, c2, k, hw, n_cls = 3, 12, 10, 3, 8, 5
    net = randomise_bn(nn.Sequential(
        nn.Conv2d(c_in, c1, k, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, k, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, n_cls),
    ))  # fmt: skip
    spec = M.PruneSpec([M.Unit("1", "inner", ["1"], ["0"], ["3"], folds={"3": "4"}),
                        M.Unit("4", "inner", ["4"], ["3"], ["8"])])  # fmt: skip
    mask = {"1": torch.arange(c1) % 3 != 0, "4": torch.arange(c2) < 4}
    k1, k2 = int(mask["1"].sum()), int(mask["4"].sum())
    x = torch.randn(1, c_in, hw, hw)
    pruned = M.prune(net, spec, mask)
    macs = hw * hw * k * k * (c_in * k1 + k1 * k2) + k2 * n_cls
    params = k * k * (c_in * k1 + k1 * k2) + 2 * (k1 + k2) + k2 * n_cls + n_cls
    assert count_flops(pruned, x) == 2 * macs
    assert M.MacModel(net, spec, x).macs(mask) == macs
    assert count_params(pruned) == params
    torch.testing.assert_close(pruned.double()(x.double()), M.apply_mask(net.double(), spec, mask)(x.double()))


def test_mac_model_matches_the_counter_and_reaches_the_target():
    model = cifar(depth=20)
    spec = M.prune_spec(model)
    x = torch.randn(1, 1, 28, 28)
    cost = M.MacModel(model, spec, x)
    assert cost.macs(M.full_mask(model, spec)) == count_flops(model, x) // 2
    for target in (0.5, 0.63):
        mask = M.global_mask_for_reduction(model, spec, cost, target)
        pruned = M.prune(model, spec, mask)
        assert cost.macs(mask) == count_flops(pruned, x) // 2
        assert target <= 1 - count_flops(pruned, x) / count_flops(model, x) < target + 0.03
        assert all(int(keep.sum()) >= 1 for keep in mask.values())


def test_closed_form_macs_of_a_pruned_resnet20():
    model = cifar(depth=20, width=8)
    spec = M.prune_spec(model)
    mask = M.uniform_mask(model, spec, 0.5)
    x = torch.randn(1, 1, 16, 16)
    w, macs = 8, 16 * 16 * 9 * 1 * 8  # stem
    cin, size = w, 16
    for s, cout in enumerate((w, 2 * w, 4 * w)):
        for b in range(3):
            stride = 2 if (s > 0 and b == 0) else 1
            size //= stride
            kept = int(mask[f"stages.{s}.{b}.bn1"].sum())
            macs += size * size * 9 * (cin * kept + kept * cout)
            if cin != cout:
                macs += size * size * cin * cout  # 1x1 projection
            cin = cout
    macs += 4 * w * 10
    assert count_flops(M.prune(model, spec, mask), x) == 2 * macs


def test_masked_regularizer_leaves_unmasked_gammas_untouched():
    model = cifar(depth=8, width=4).train()
    spec = M.prune_spec(model)
    mask = M.uniform_mask(model, spec, 0.5)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))

    def grads(regularizer):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if regularizer:
            regularizer(0.1)
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads(None)
    lam = 0.3
    masked = grads(M.masksparsity_regularizer(model, spec, mask, lam))
    for unit in spec.units:
        keep = mask[unit.name]
        name = f"{unit.bns[0]}.weight"
        gamma = model.get_submodule(unit.bns[0]).weight.detach()
        assert torch.equal(masked[name][keep], plain[name][keep])  # bit-identical for kept channels
        torch.testing.assert_close(masked[name][~keep], plain[name][~keep] + lam * torch.sign(gamma[~keep]))
    unit_params = {f"{u.bns[0]}.weight" for u in spec.units}
    assert all(torch.equal(masked[n], plain[n]) for n in plain if n not in unit_params)

    slim = grads(M.slimming_regularizer(model, lam))
    for name, bn in model.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            torch.testing.assert_close(slim[f"{name}.weight"], plain[f"{name}.weight"] + lam * torch.sign(bn.weight))
            assert torch.equal(slim[f"{name}.bias"], plain[f"{name}.bias"])


def test_penalty_variants():
    g = torch.tensor([-2.0, -0.001, 0.0, 0.001, 0.5])
    assert torch.equal(M.penalty_gradient(g, "L1"), torch.sign(g))
    assert torch.equal(M.penalty_gradient(g, "L2"), g)
    # official smoothL1 (netslim/sparse.py): λ·γ inside |γ| < lr·λ = 0.005, λ·sign(γ) outside
    smooth = M.penalty_gradient(g, "smoothL1", lr=0.1, lam=0.05)
    torch.testing.assert_close(smooth, torch.tensor([-1.0, -0.001, 0.0, 0.001, 1.0]))
    huber = M.penalty_gradient(g, "huber", lr=0.1, lam=0.05)  # our earlier reading: γ/δ inside
    torch.testing.assert_close(huber, torch.tensor([-1.0, -0.2, 0.0, 0.2, 1.0]))
    assert torch.equal(M.penalty_gradient(g, "smoothL1", lr=0.0, lam=0.05), torch.sign(g))  # no lr: plain L1
    with pytest.raises(ValueError):
        M.penalty_gradient(g, "L3")


def test_official_smooth_l1_sub_gradient_is_lambda_gamma_inside_the_epoch_lr_threshold():
    """grad(γ) += λ·γ for the masked γ with |γ| < lr·λ (lr: the epoch's), λ·sign(γ) for the other masked γ,
    nothing for kept channels; against the closed form, channel by channel."""
    model = cifar(depth=8, width=4)
    spec = M.prune_spec(model)
    mask = M.uniform_mask(model, spec, 0.5)
    lam, lr = 0.5, 0.1  # threshold lr·λ = 0.05
    with torch.no_grad():
        for unit in spec.units:  # half of every unit's γ inside the threshold, with both signs
            bn = model.get_submodule(unit.bns[0])
            n = bn.num_features
            bn.weight.copy_(torch.linspace(-0.04, 0.04, n) * (torch.arange(n) % 2 == 0) + (torch.arange(n) % 2) * 0.7)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    M.masksparsity_regularizer(model, spec, mask, lam, norm="smoothL1")(lr)
    for unit in spec.units:
        bn = model.get_submodule(unit.bns[0])
        gamma, off = bn.weight.detach(), ~mask[unit.name]
        expected = torch.where(gamma.abs() < lr * lam, lam * gamma, lam * torch.sign(gamma)) * off
        torch.testing.assert_close(bn.weight.grad, expected, rtol=0, atol=0)
        assert bool(((gamma.abs() < lr * lam) & off).any()) and bool(((gamma.abs() >= lr * lam) & off).any())


def test_the_regulariser_gets_the_epochs_learning_rate():
    """train_phase calls regulariser(lr) with the learning rate at the start of the epoch (the official trainer's
    epoch lr), not the per-step cosine value the optimizer uses."""
    from masksparsity import config
    from masksparsity.train import Data, lr_at, train_phase

    cfg = config.smoke()
    data = Data(cfg.data, torch.device("cpu"))
    schedule = config.Schedule(epochs=2, batch_size=128, lr=0.1, lr_schedule="cosine", lr_steps=())
    seen: list[float] = []
    train_phase(build_model("resnet8", width=2, in_channels=1), data, schedule, 0, regularizer=seen.append)
    steps = data.n_train() // schedule.batch_size
    assert seen == [lr_at(schedule, 0)] * steps + [lr_at(schedule, 1)] * steps
    assert lr_at(schedule, 1) < lr_at(schedule, 0)


def test_masksparsity_training_drives_masked_gammas_to_zero_only():
    torch.manual_seed(0)
    model = build_model("resnet8", width=4, in_channels=1).train()
    spec = M.prune_spec(model)
    mask = M.uniform_mask(model, spec, 0.5)
    reg = M.masksparsity_regularizer(model, spec, mask, lam=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        reg(0.1)
        opt.step()
    summary = M.gamma_summary(model, spec, mask)
    assert summary["masked_mean_abs_gamma"] < 0.05 < 0.5 < summary["kept_mean_abs_gamma"]


def test_group_vote_follows_the_official_conservative_rule():
    gammas = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    # each BN votes to prune 2 channels; only channel 0 is unanimous, so the bar drops to 1 vote -> 3 channels
    assert M.group_vote(gammas, 0.01).tolist() == [False, False, False, True]
    unanimous = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert M.group_vote(unanimous, 0.01).tolist() == [False, True, True]  # k_min = 1: the unanimous channel


def test_residual_groups_share_one_channel_set():
    model = cifar(depth=20, width=8)
    spec = M.prune_spec(model, residual_groups=True)
    streams = [u for u in spec.units if u.kind == "residual"]
    assert len(streams) == 3  # one per stage; the stem joins stage 1 (no projection there)
    assert streams[0].bns == ["stem.bn", "stages.0.0.bn2", "stages.0.1.bn2", "stages.0.2.bn2"]
    assert streams[1].bns[0] == "stages.1.0.shortcut.1" and streams[2].consumers[-1] == "fc"
    with torch.no_grad():
        for i, bn in enumerate(streams[1].bns):  # each BN votes for a different, overlapping set
            model.get_submodule(bn).weight[i : i + 6] = 0.0
    mask = M.threshold_mask(model, spec, 0.01)
    pruned = M.prune(model, spec, mask)
    kept = int(mask[streams[1].name].sum())
    assert kept < 16
    assert {pruned.get_submodule(bn).num_features for bn in streams[1].bns} == {kept}
    assert {pruned.get_submodule(conv).out_channels for conv in streams[1].producers} == {kept}
    assert {pruned.get_submodule(conv).in_channels for conv in streams[1].consumers} == {kept}
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(pruned.double()(x), M.apply_mask(model.double(), spec, mask)(x))


def test_torchvision_resnet50_with_random_weights_prunes_and_runs():
    torch.manual_seed(0)
    model = randomise_bn(build_model("resnet50", num_classes=10, zero_init_last_bn=False))
    spec = M.prune_spec(model, residual_groups=True)
    assert sum(u.kind == "residual" for u in spec.units) == 5  # the stem unit and one per stage
    assert len({bn for u in spec.units for bn in u.bns}) == 53  # every BN of ResNet-50 is in one unit
    x = torch.randn(2, 3, 64, 64)
    cost = M.MacModel(model, spec, x)
    mask = M.global_mask_for_reduction(model, spec, cost, 0.5107)
    pruned = M.prune(model, spec, mask)
    assert 1 - count_flops(pruned, x[:1]) / count_flops(model, x[:1]) >= 0.5107
    assert cost.macs(mask) == count_flops(pruned, x[:1]) // 2
    torch.testing.assert_close(pruned.double()(x.double()), M.apply_mask(model.double(), spec, mask)(x.double()))


def test_masks_from_given_booleans_and_iou():
    model = cifar(depth=8, width=4)
    spec = M.prune_spec(model, residual_groups=True)
    keep = {bn: torch.arange(model.get_submodule(bn).num_features) < 2
            for u in spec.units for bn in u.bns if u.kind == "inner"}  # fmt: skip
    mask = M.mask_from_bool(spec, keep)
    assert set(mask) == {u.name for u in spec.units if u.kind == "inner"}
    assert M.mask_iou(mask, mask) == 1.0
    n = model.get_submodule(spec.units[-1].bns[0]).num_features
    bad = {bn: torch.arange(n) != i for i, bn in enumerate(spec.units[-1].bns)}
    with pytest.raises(ValueError, match="different keep-vectors"):
        M.mask_from_bool(spec, bad)


@pytest.mark.kernel_independent  # both runs use the same kernels
def test_a_killed_training_phase_resumes_to_the_uninterrupted_result(kill_and_resume):
    """train_phase inside a cached stage: killed after epoch 1 of 3, run again, it ends with the weights, BN
    statistics and precise-BN re-estimates of an uninterrupted run, bit for bit (common.resume)."""
    from masksparsity import config
    from masksparsity.train import Data, lr_at, train_phase

    cfg = config.smoke()
    data = Data(cfg.data, torch.device("cpu"))
    schedule = config.Schedule(epochs=3, batch_size=128, lr=0.1, lr_schedule="cosine", lr_steps=(),
                               precise_bn_images=128)  # fmt: skip

    seen: list[float] = []  # the epoch learning rate of every step (the regulariser's argument), of the last run

    def run() -> dict:
        seen.clear()
        torch.manual_seed(0)
        model = train_phase(build_model("resnet8", width=2, in_channels=1), data, schedule, 0, seen.append)
        return model.state_dict()

    reference, resumed, _ = kill_and_resume(run, after=1)
    assert seen == [lr_at(schedule, 2)] * (data.n_train() // schedule.batch_size), "only the third epoch ran again"
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_gradient_accumulation_takes_the_step_of_the_whole_batch():
    """Without BatchNorm (whose statistics are the micro-batch's by design), 2 micro-batches of 64 give the SGD steps
    of the batch of 128 (float64: summation order only); an accumulation that does not divide the batch is refused."""
    from masksparsity import config
    from masksparsity.train import Data, train_phase

    data = Data(config.smoke().data, torch.device("cpu"))
    for split in data.splits.values():
        split.x = split.x.double()
    schedule = config.Schedule(epochs=1, batch_size=128, lr=0.1, lr_schedule="cosine", lr_steps=())

    def run(accumulation: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).double()
        return list(train_phase(model, data, schedule, 0, accumulation=accumulation).parameters())

    for a, b in zip(run(1), run(2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(Exception, match="micro-batches"):
        run(3)
