"""The `paper` preset follows the official code (issue 13): PreResNet's projection shortcut reads the raw input,
and BN statistics for LMC are re-estimated on batches of 64 weighted by their number of examples."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.runtime import key_hash
from three_regime import config, grid
from three_regime.config import MetricsConfig, ModelConfig
from three_regime.models import PreActBlock, PreResNet, build_model
from three_regime.train import reestimate_bn


def _block_reference(block: PreActBlock, x: torch.Tensor, shortcut_reads: str) -> torch.Tensor:
    """The block written out: conv2(relu(bn2(conv1(relu(bn1(x)))))) + projection of x or of relu(bn1(x))."""
    pre = torch.relu(block.bn1(x))
    out = block.conv2(torch.relu(block.bn2(block.conv1(pre))))
    return out + block.shortcut(x if shortcut_reads == "input" else pre)


@pytest.mark.parametrize("shortcut_input", ["input", "preact"])
def test_projection_shortcut_reads_what_the_setting_says(shortcut_input):
    torch.manual_seed(0)
    block = PreActBlock(4, 8, stride=2, shortcut_input=shortcut_input).double().eval()
    with torch.no_grad():  # BN statistics away from (0, 1), so relu(bn1(x)) is far from x
        block.bn1.running_mean.uniform_(-1, 1)
        block.bn1.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out, _block_reference(block, x, shortcut_input), rtol=0, atol=1e-12)
        other = "preact" if shortcut_input == "input" else "input"
        assert (out - _block_reference(block, x, other)).abs().max() > 1e-2


def test_identity_shortcut_adds_the_raw_input_in_both_variants():
    torch.manual_seed(0)
    for shortcut_input in ("input", "preact"):
        block = PreActBlock(4, 4, stride=1, shortcut_input=shortcut_input).double().eval()
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        with torch.no_grad():
            out = block.conv2(torch.relu(block.bn2(block.conv1(torch.relu(block.bn1(x))))))
            torch.testing.assert_close(block(x), out + x, rtol=0, atol=1e-12)


def test_paper_preset_builds_the_official_preresnet20():
    cfg = config.paper()
    assert cfg.model.shortcut_input == "input"
    model = build_model(cfg.model, (3, 32, 32), 10)
    projections = [b for b in model.blocks if b.shortcut is not None]
    assert len(projections) == 2 and all(b.shortcut_input == "input" for b in model.blocks)
    # parameters: the same for both variants (only the shortcut's input differs), a closed form for depth 20
    widths, n, total = (16, 32, 64), 3, 3 * 16 * 9
    c_in = 16
    for w in widths:
        for _ in range(n):
            total += 2 * c_in + 9 * c_in * w + 2 * w + 9 * w * w + (c_in * w if c_in != w else 0)
            c_in = w
    total += 2 * 64 + 64 * 10 + 10
    assert total == 272_282
    assert sum(p.numel() for p in model.parameters()) == total
    legacy = PreResNet(20, shortcut_input="preact")
    assert [(k, v.shape) for k, v in legacy.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ], "the same state-dict layout: the setting changes the forward pass only"
    with pytest.raises(ValueError, match="shortcut_input"):
        PreActBlock(4, 8, stride=2, shortcut_input="x")


def test_bn_reestimation_weighted_by_sample_recovers_the_full_data_mean():
    """400 examples in batches of 64: six full batches and one of 16. Weighted per sample (official), the running
    mean of a BN on the data is the mean over all 400; weighted per batch, the short batch counts as much as a
    full one. In float64, so both closed forms hold to rounding (means of 400 values of |x| <~ 4: <~ 1e-13)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 5, dtype=torch.float64)
    x[384:] += 3.0  # the short last batch has a different mean, so the two weightings differ visibly
    bn = torch.nn.BatchNorm1d(5).double()
    batches = list(x.split(64))
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    means = torch.stack([b.mean(0) for b in batches])
    variances = torch.stack([b.var(0) for b in batches])  # unbiased, as BatchNorm keeps them

    reestimate_bn(bn, x, batch_size=64, weighting="sample")
    torch.testing.assert_close(bn.running_mean, x.mean(0), rtol=0, atol=1e-12)
    expected_var = (sizes[:, None] * variances).sum(0) / sizes.sum()
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-12, atol=0)
    assert bn.momentum == 0.1 and not bn.training, "momentum and eval mode restored"

    reestimate_bn(bn, x, batch_size=64, weighting="batch")
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-12, atol=0)
    assert (means.mean(0) - x.mean(0)).abs().min() > 0.1  # the short batch's shift, over-weighted 4x

    # equal batches: the two weightings agree
    reestimate_bn(bn, x[:384], batch_size=64, weighting="sample")
    by_sample = bn.running_mean.clone()
    reestimate_bn(bn, x[:384], batch_size=64, weighting="batch")
    torch.testing.assert_close(bn.running_mean, by_sample, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="weighting"):
        reestimate_bn(bn, x, weighting="per-batch")


def test_paper_preset_measures_lmc_with_the_official_bn_pass(monkeypatch):
    """compute_cell hands the preset's BN batch size and weighting to the re-estimation at every LMC point."""
    from tests.three_regime.test_grid import tiny

    assert (config.paper().metrics.bn_batch_size, config.paper().metrics.bn_weighting) == (64, "sample")
    cfg = dataclasses.replace(tiny(), metrics=MetricsConfig(lmc_points=3, cka_samples=50, bn_batch_size=64,
                                                            bn_weighting="sample"))  # fmt: skip
    seen = []
    real = grid.reestimate_bn

    def spy(model, x, **kwargs):
        seen.append((len(x), kwargs))
        return real(model, x, **kwargs)

    monkeypatch.setattr(grid, "reestimate_bn", spy)
    torch.set_num_threads(1)
    cell = grid.grid_cells(cfg)[0]
    data = grid._data(cfg, torch.device("cpu"))
    dense = grid.compute_dense(cfg, grid.dense_run_id(cfg, cell), data, torch.device("cpu"))
    result = grid.compute_cell(cfg, cell, dense, data, torch.device("cpu"))
    assert len(seen) == 3 and all(k == {"batch_size": 64, "weighting": "sample"} for _, k in seen)
    assert all(n == len(data.x_train) for n, _ in seen)  # the whole training set (lmc_samples = 0)
    assert len(result["pairs"][0]["errors"]) == 3


def test_new_fields_at_their_old_values_keep_the_cached_jobs_of_smoke_and_mini():
    """The job keys of smoke and mini are those computed before issue 13 added the fields (their caches and
    records stay valid); the paper preset's keys changed, since it now computes something else. mini's retraining
    was shortened afterwards (issue 17: 12 epochs, not 30), so its keys are checked at the earlier retraining."""
    before = {"smoke": ("5e73448ac1b67c8f", "6e1f8a1cf29d491f"), "mini": ("90b3da25074611cd", "1c5d4f9a7fc6d028")}
    earlier = {"mini": {"epochs": 30, "test_error_last_epochs": 5}}
    for name, (cell_hash, dense_hash) in before.items():
        cfg = config.PRESETS[name]()
        cfg = dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, **earlier.get(name, {})))
        assert cfg.model.shortcut_input == "preact" and cfg.metrics.bn_batch_size == 512
        cell = grid.grid_cells(cfg)[0]
        assert key_hash(grid.cell_key(cfg, cell)) == cell_hash
        assert key_hash(grid.dense_key(cfg, grid.dense_run_id(cfg, cell))) == dense_hash
    paper = config.paper()
    cell = grid.grid_cells(paper)[0]
    legacy = dataclasses.replace(paper, model=dataclasses.replace(paper.model, shortcut_input="preact"))
    assert grid.dense_key(paper, (1,)) != grid.dense_key(legacy, (1,))
    assert grid.cell_key(paper, cell)["metrics"]["bn_batch_size"] == 64
    assert ModelConfig().shortcut_input == "preact"


def test_crop_padding_is_black_as_in_torchvision_before_normalize(monkeypatch):
    """Padding the normalised image with -mean/std (``crop_fill="black"``) equals padding the raw image with
    black (0) and normalising afterwards, as torchvision's RandomCrop(32, padding=4) before Normalize does."""
    from types import SimpleNamespace

    import numpy as np

    from three_regime import data as data_module
    from three_regime.data import CIFAR10_MEAN, CIFAR10_STD, augment_images

    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    raw = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pad = tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True))
    ours = augment_images((raw - mean) / std, torch.Generator().manual_seed(1), padding=4, pad_value=pad)
    reference = (augment_images(raw, torch.Generator().manual_seed(1), padding=4) - mean) / std
    # float32: -m/s rounded once vs (0 - m)/s rounded twice: at most a few ulp of values <~ 2.5 (ulp 2.4e-7)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert (ours == torch.tensor(pad).view(1, 3, 1, 1)).any(), "some padding was cropped in"
    plain = augment_images((raw - mean) / std, torch.Generator().manual_seed(1), padding=4)
    assert not torch.allclose(plain, reference), "the old padding (0 after normalising) is the mean colour"

    rng = np.random.default_rng(0)

    def fake_cifar10(root, train=True, **kwargs):
        return SimpleNamespace(data=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), targets=[0, 1, 2, 3])

    monkeypatch.setattr(data_module, "cifar10", fake_cifar10)
    paper = config.paper()
    assert paper.data.crop_fill == "black"
    loaded = data_module.load_data(dataclasses.replace(paper.data, root="unused"))
    assert loaded.augment and loaded.pad_value == pytest.approx(pad) and loaded.to("cpu").pad_value == loaded.pad_value
    legacy = data_module.load_data(dataclasses.replace(paper.data, root="unused", crop_fill="mean"))
    assert legacy.pad_value is None
