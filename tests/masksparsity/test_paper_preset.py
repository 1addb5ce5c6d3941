"""The paper preset's code paths at tiny scale: |γ| threshold masks, residual groups with the official vote,
pruning by re-thresholding, step learning rates and precise BN; and its data paths fail clearly without data."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.data import DatasetNotFoundError
from common.results import VERDICTS, load_record
from masksparsity import claims, config, reproduce
from masksparsity.train import Data


def tiny_paper_config() -> config.MaskSparsityConfig:
    cfg = config.paper()
    step = dataclasses.replace(cfg.train, epochs=2, batch_size=64, lr_steps=(1,), precise_bn_images=128)
    return dataclasses.replace(
            cfg,
            data=config.DataConfig(train_subset=256, test_subset=128, train_eval_subset=128, image_size=12, workers=0),
            model=dataclasses.replace(cfg.model, arch="resnet8", width=4),
            train=step,
            sparsity=dataclasses.replace(cfg.sparsity, schedule=step, slimming_lambdas=(0.05,),
                                         masksparsity_lambda=0.05, mask_lambda=0.05, mask_threshold=0.05),
            prune=dataclasses.replace(cfg.prune, threshold=0.05, bn_recalibration_images=128, latency_rounds=2,
                                      latency_batch=8),
            finetune=dataclasses.replace(step, epochs=1, lr=5e-3),
    )  # fmt: skip


def test_paper_recipe_runs_at_tiny_scale(tmp_results):
    from common.cli import main

    cfg = tiny_paper_config()
    assert cfg.sparsity.mask_rule == "threshold" and cfg.prune.rule == "threshold" and cfg.prune.residual_groups
    presets = {**config.PRESETS, "paper": lambda: cfg}
    presets["paper"].__doc__ = config.paper.__doc__
    argv = ["reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_results)]
    assert main("masksparsity", presets=presets, run=reproduce.run, report=reproduce.report, argv=argv) == 0
    record = load_record(tmp_results / "masksparsity" / "paper")
    assert record.extra["ops"] == ["|γ| <= 0.05"]
    assert all(c.verdict in VERDICTS for c in record.claims)
    paper_rows = record.tables()[reproduce.PAPER_TABLE]
    assert {m.paper for m in paper_rows} == {63.03, 60.34, 51.07}
    # FLOPs beside the paper's in the official counter's convention (conv, linear, BN, ReLU), as in the op table
    table = reproduce.op_table(record.extra["ops"][0])
    official = record.get(table, reproduce.MS, claims.FLOPS_OFFICIAL).mean
    assert 0 <= official <= record.get(table, reproduce.MS, claims.FLOPS).mean  # equal only if nothing was pruned
    flops_rows = [m for m in paper_rows if m.paper in (63.03, 51.07)]
    assert all("official counter" in m.setting and m.mean == pytest.approx(official) for m in flops_rows)


def test_paper_preset_follows_the_official_scripts():
    """finetune.sh: the 100-epoch step config at lr 5e-4 (the 40-epoch yaml is kept as FINETUNE_YAML); FLOPs as
    the official counter; smoke and mini keep the conv+linear count (their records stay as they are)."""
    cfg = config.paper()
    assert cfg.finetune == config.FINETUNE_SCRIPT
    assert (cfg.finetune.epochs, cfg.finetune.lr, cfg.finetune.lr_steps) == (100, 5e-4, (30, 60, 90))
    assert (config.FINETUNE_YAML.epochs, config.FINETUNE_YAML.lr_steps) == (40, (10, 20, 30))
    assert cfg.prune.flops_counter == "official" and cfg.sparsity.norm == "L1"
    assert config.smoke().prune.flops_counter == config.mini().prune.flops_counter == "conv_linear"


def test_paper_scale_data_fails_with_a_clear_message():
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        Data(config.paper().data, torch.device("cpu"))
