"""The iterative pruner, and the `paper` preset's code paths at tiny scale (timm test ViTs, random weights)."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from common.data import DatasetNotFoundError
from nvit import config
from nvit.latency import analytic_table, measured_table
from nvit.models import export_pruned, from_timm, load_pruned, to_dense
from nvit.prune import PruneSettings, prune
from nvit.reproduce import NVIT, check_inputs, method_labels, settings_for


def stream(shape, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(8, *shape, generator=g), torch.randint(0, classes, (8,), generator=g)


def tiny_lut(model):
    d = model.dims
    grid = ((4, d.emb), (1, max(d.heads)), (1, max(d.qk)), (1, max(d.v)), (1, max(d.mlp)))
    return analytic_table(grid, tokens=d.tokens, head_cost=50.0, block_cost=10.0)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_pruner_reaches_each_target_with_snapshots(allocation):
    from tests.nvit.test_models import tiny

    model = tiny()
    teacher = tiny().eval()
    lut = tiny_lut(model)
    s = PruneSettings(allocation=allocation, group_sizes=(2, 1, 1, 1, 4), groups_per_step=3, interval=2,
                      max_steps=60, targets=(0.7, 0.4), eta=5.0, bonus_floor=(1, 1, 1, 4))  # fmt: skip
    run = prune(model, teacher, stream((2, 8, 8), 5), s, lut, device=torch.device("cpu"), kd=config.KDConfig())
    assert run.reached_all and [sn.target for sn in run.snapshots] == [0.7, 0.4]
    dense_lat = lut.model_latency(teacher.dims)
    for sn in run.snapshots:
        assert lut.model_latency(sn.dims) / dense_lat <= sn.target + 1e-9
        assert sn.batches == 2 * sn.step
        assert min(sn.dims.heads) >= 1 and sn.dims.emb >= 2
    # weights of the final model respect its masks, and it converts exactly (float64: default tolerances)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    model = model.double().eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), to_dense(model).eval()(x))


def test_paper_preset_code_paths_on_a_timm_test_vit(tmp_path):
    timm = pytest.importorskip("timm")
    cfg = config.paper()
    tm = timm.create_model("test_vit", pretrained=False, img_size=32, num_classes=10).eval()
    model = from_timm(tm)
    x = torch.randn(2, 3, 32, 32)
    x64 = x.double()
    with torch.no_grad():  # equivalences are checked in float64 on copies, so float64's default tolerances apply
        torch.testing.assert_close(copy.deepcopy(model).double().eval()(x64), copy.deepcopy(tm).double()(x64))
    s = settings_for(cfg, NVIT, (0.01,))
    assert s.group_sizes == (16, 2, 8, 8, 16) and s.eta == 5e-4 and s.eta_mode == "absolute"
    assert s.lr == pytest.approx(1e-4) and s.bonus_floor == (2, 8, 8, 16)
    s = dataclasses.replace(s, interval=1, max_steps=1)
    d = model.dims
    lut = measured_table(((32, 64), (1, 2), (16, 32), (16, 32), (96, 192)), tokens=d.tokens, batch_size=2,
                         repeats=1, warmup=0)  # fmt: skip
    teacher = from_timm(tm).eval()
    run = prune(model, teacher, stream((3, 32, 32), 10), s, lut, device=torch.device("cpu"), kd=cfg.kd)
    assert len(run.history) == 1 and not run.snapshots
    removed = sum(t.numel() - int(t.sum()) for ts in model.structure_masks().values() for t in ts)
    assert removed > 0  # two groups (of 16 EMB, 2 heads, 8 QK, 8 V or 16 MLP units) went
    small = to_dense(model).eval()
    loaded = load_pruned(export_pruned(model, tmp_path / "nvit.pt")).eval()  # float32 weights, as pruned
    with torch.no_grad():
        small, model, loaded = small.double(), model.double().eval(), loaded.double()
        torch.testing.assert_close(small(x64), model(x64))
        torch.testing.assert_close(loaded(x64), small(x64))


def test_distilled_model_with_cnn_teacher_one_step():
    timm = pytest.importorskip("timm")
    tm = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=10)
    model = from_timm(tm.eval())
    cnn = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    kd = config.paper().kd
    s = PruneSettings(group_sizes=(16, 1, 8, 8, 16), groups_per_step=2, interval=1, max_steps=1, targets=(0.01,),
                      kl_coeff=kd.prune_kl_coeff, tau=kd.prune_tau)  # fmt: skip
    run = prune(model, from_timm(tm).eval(), stream((3, 32, 32), 10), s, tiny_lut(model), device=torch.device("cpu"),
                kd=kd, cnn_teacher=cnn)  # fmt: skip
    assert len(run.history) == 1 and torch.isfinite(torch.tensor(run.history[0]["loss"]))


def test_paper_preset_says_what_is_missing():
    with pytest.raises(DatasetNotFoundError, match=r"data\.root"):
        check_inputs(config.paper())
    cfg = dataclasses.replace(config.mini(), dense=dataclasses.replace(config.mini().dense, epochs=0))
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        check_inputs(cfg)


def test_method_runs_of_the_presets():
    labels = [label for label, _ in method_labels(config.mini())]
    assert labels[0] == NVIT and "uniform" in labels and "magnitude" in labels and "η=0" in labels
    mini = config.mini()
    assert len(mini.seeds) >= 3 and len(mini.prune.latency_targets) >= 2
    assert mini.finetune.scratch_baseline and mini.prune.kd_budget_batches > 0
    assert next(itertools.islice(stream((1, 2, 2), 3), 1))[0].shape == (8, 1, 2, 2)


def test_mixup_and_amp_paths_of_the_paper_preset():
    from nvit.train import make_mixup, train_steps
    from tests.nvit.test_models import tiny

    cfg = config.paper()
    mixup = make_mixup(cfg.data, num_classes=5)
    assert mixup is not None and make_mixup(config.mini().data, num_classes=5) is None
    model, teacher = tiny(), tiny().eval()
    s = PruneSettings(group_sizes=(2, 1, 1, 1, 4), groups_per_step=2, interval=2, max_steps=1, targets=(0.01,))
    run = prune(model, teacher, stream((2, 8, 8), 5), s, tiny_lut(model), device=torch.device("cpu"),
                kd=config.KDConfig(), mixup=mixup, amp=True)  # fmt: skip
    assert len(run.history) == 1
    losses = train_steps(model, stream((2, 8, 8), 5), 2, lr=1e-3, weight_decay=0.05, device=torch.device("cpu"),
                         teacher=teacher, kl_coeff=1.0, tau=2.0, mixup=mixup, amp=True)  # fmt: skip
    assert all(torch.isfinite(torch.tensor(losses)))


def test_paper_preset_kd_scale_and_no_revit_on_imagenet():
    cfg = config.paper()
    # the official 1e5 KL coefficient multiplies torch's default 'mean' reduction (divided by the classes too)
    assert cfg.kd.prune_kl_coeff == cfg.kd.finetune_kl_coeff == 1e5 and cfg.kd.kl_reduction == "mean"
    assert cfg.revit_epochs == 0 and cfg.dense.epochs == 0
    assert config.mini().kd.kl_reduction == "batchmean"


def test_pruner_stops_at_a_flops_target():
    from nvit.models import vit_macs
    from tests.nvit.test_models import tiny

    for allocation in ("global", "uniform"):
        model, teacher = tiny(), tiny().eval()
        s = PruneSettings(allocation=allocation, group_sizes=(2, 1, 1, 1, 4), groups_per_step=3, interval=1,
                          max_steps=60, targets=(0.6, 0.35), target_metric="flops")  # fmt: skip
        run = prune(model, teacher, stream((2, 8, 8), 5), s, tiny_lut(model), device=torch.device("cpu"),
                    kd=config.KDConfig())  # fmt: skip
        assert run.reached_all and [sn.target for sn in run.snapshots] == [0.6, 0.35]
        for sn in run.snapshots:
            assert vit_macs(sn.dims) / vit_macs(teacher.dims) <= sn.target + 1e-9
            assert abs(sn.macs_ratio - vit_macs(sn.dims) / vit_macs(teacher.dims)) < 1e-12


def test_baselines_have_no_latency_term_and_targets_are_checked():
    cfg = config.mini()
    runs = dict(method_labels(cfg))
    for b in ("magnitude", "first_order", "random"):
        assert b in runs and settings_for(cfg, b, runs[b]).eta == 0.0
        assert runs[b] == cfg.prune.baseline_targets
    assert settings_for(cfg, NVIT, runs[NVIT]).eta == cfg.latency.eta > 0
    assert set(runs["η=0"]) == set(cfg.prune.latency_targets[:1]) | set(cfg.prune.baseline_targets)
    assert runs["uniform"] == cfg.prune.latency_targets
    bad = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, baseline_targets=(0.25,)))
    with pytest.raises(ValueError, match="baseline_targets"):
        check_inputs(bad)


def test_equal_kd_budget_is_at_least_every_runs_pruning_batches():
    from nvit.reproduce import equal_kd_budget

    assert equal_kd_budget(200, [75, 140, 10]) == (140, 200)
    assert equal_kd_budget(200, [75, 260, 10]) == (260, 260)  # raised for every run, not silently unequal
    assert equal_kd_budget(0, []) == (0, 0)


def test_comparisons_pair_seeds_explicitly():
    from common.stats import paired_difference
    from nvit.claims import paired

    def entry(seed, a, b):
        snaps_b = [{"target": 0.5, "top1_ft": b}] if b is not None else []
        return {"seed": seed, "methods": {"A": {"snapshots": [{"target": 0.5, "top1_ft": a}]},
                                          "B": {"snapshots": snaps_b}}}  # fmt: skip

    per_seed = [entry(0, 80.0, 79.0), entry(1, 81.0, None), entry(2, 82.0, 81.0)]
    a, b = paired(per_seed, "A", "B", 0.5, "top1_ft")
    assert a == [80.0, 82.0] and b == [79.0, 81.0]  # seed 1 has no B: dropped from both, not shifted
    assert paired(per_seed, "A", "B", 0.5, "top1_ft", seeds=[2]) == ([82.0], [81.0])  # a replication half
    assert paired_difference(a, b).estimate == 1.0
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_timm_vit_without_qkv_bias_gives_a_clear_error():
    timm = pytest.importorskip("timm")
    tm = timm.create_model("test_vit", pretrained=False, img_size=32, num_classes=10, qkv_bias=False)
    with pytest.raises(ValueError, match="qkv bias"):
        from_timm(tm)


@pytest.mark.kernel_independent  # both runs use the same kernels
@pytest.mark.parametrize("criterion", ["hessian", "random"])
def test_a_killed_pruning_run_resumes_to_the_uninterrupted_run(kill_and_resume, criterion):
    """prune() on a BatchStream inside a resume slot: killed after the step that finishes the stream's first epoch
    (mid-epoch of the next), run again, it continues from that step and ends with the uninterrupted run's
    snapshots, history and weights, bit for bit (the score sums and their moving average, the random criterion's
    generator and the stream position are saved with the student and optimizer)."""
    from torch.utils.data import TensorDataset

    from nvit.train import BatchStream
    from tests.nvit.test_models import tiny

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 2, 8, 8, generator=g), torch.randint(0, 5, (40,), generator=g))
    teacher = tiny().eval()
    s = PruneSettings(criterion=criterion, group_sizes=(2, 1, 1, 1, 4), groups_per_step=1, interval=2, max_steps=60,
                      targets=(0.8, 0.4), eta=5.0, bonus_floor=(1, 1, 1, 4))  # fmt: skip

    def run():
        torch.manual_seed(1)
        model = tiny()
        stream = BatchStream(data, 8, seed=3)
        assert stream.epoch_steps == 5  # 2 batches a step: the first epoch ends inside step 3
        out = prune(model, teacher, stream, s, tiny_lut(model), device=torch.device("cpu"), kd=config.KDConfig())
        return out, model.state_dict()

    (reference, ref_state), (resumed, state), restored = kill_and_resume(run, after=0)
    assert reference.reached_all and reference.history[-1]["step"] > 3
    assert restored == [1], "the second run restored the state saved after step 3"
    assert resumed.history == reference.history and resumed.eta == reference.eta
    assert [(x.target, x.step, x.batches, x.dims) for x in resumed.snapshots] == [
        (x.target, x.step, x.batches, x.dims) for x in reference.snapshots]  # fmt: skip
    for a, b in zip(resumed.snapshots, reference.snapshots, strict=True):
        assert all(torch.equal(a.state[k], b.state[k]) for k in b.state)
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)


def test_a_batch_stream_restarts_after_any_batch():
    """BatchStream.from_batch(b) yields what the stream yields after its first b batches (in one process and in a
    process's share of two)."""
    from torch.utils.data import TensorDataset

    from nvit.train import BatchStream, batches

    data = TensorDataset(torch.arange(30).float(), torch.arange(30))
    for extra in ({}, {"repeated_augmentation": True}):
        full = BatchStream(data, 4, seed=2, **extra)
        expected = [b[1].tolist() for b in itertools.islice(full, 20)]
        for start in (0, 3, 7, 9):
            got = [b[1].tolist() for b in itertools.islice(full.from_batch(start), 20 - start)]
            assert got == expected[start:], (extra, start)
    share = [b[1].tolist() for b in itertools.islice(batches(data, 4, 2, shard=(1, 2), skip=2), 3)]
    assert share == [b[1].tolist() for b in itertools.islice(batches(data, 4, 2, shard=(1, 2)), 5)][2:]
