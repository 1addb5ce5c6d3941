"""A NaN or infinite training loss stops every training loop of the project at the step where it happened.

Each loop gets a tiny model and an infinite learning rate (the weights blow up after the first update, so the
loss of step 1 is NaN) or a loss that is NaN from a given step; the error must name the loop and the step. The
command line turns the error into one line on stderr with the preset and config hash, exit status 1 and no
record.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from common.errors import EXIT_DIVERGED, TrainingDivergedError, check_finite

INF = math.inf


def test_check_finite_accepts_finite_losses_and_names_the_loop_and_step():
    check_finite(torch.tensor(0.5), step=0, where="x")
    check_finite(3.0, step=0, where="x")
    for bad in (math.nan, INF, -INF, torch.tensor(float("nan"))):
        with pytest.raises(TrainingDivergedError, match=r"^dense training, seed 3: loss is .* at step 7;"):
            check_finite(bad, step=7, where="dense training, seed 3")


# ---------------------------------------------------------------------------------------------------- nvit


def _vit_stream(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(8, 2, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)


def test_nvit_training_loop_stops_at_the_diverged_step():
    from nvit.train import train_steps
    from tests.nvit.test_models import tiny

    with pytest.raises(TrainingDivergedError, match=r"^nvit KD fine-tune \(NViT\), seed 0: loss is nan at step 1;"):
        train_steps(tiny(), _vit_stream(), 5, lr=INF, weight_decay=0.0, device=torch.device("cpu"),
                    where="nvit KD fine-tune (NViT), seed 0")  # fmt: skip


def test_nvit_pruning_loop_stops_at_the_diverged_batch():
    from nvit import config
    from nvit.prune import PruneSettings, prune
    from tests.nvit.test_models import tiny
    from tests.nvit.test_prune import tiny_lut

    model, teacher = tiny(), tiny().eval()
    settings = PruneSettings(group_sizes=(2, 1, 1, 1, 4), interval=3, max_steps=5, targets=(0.5,), lr=INF)
    with pytest.raises(TrainingDivergedError, match=r"^nvit KD pruning \(NViT\), seed 2: loss is nan at step 1;"):
        prune(model, teacher, _vit_stream(), settings, tiny_lut(model), device=torch.device("cpu"),
              kd=config.KDConfig(), seed=2, where="nvit KD pruning (NViT), seed 2")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- three_regime


def test_three_regime_training_loop_stops_at_the_diverged_step():
    from three_regime.data import Data
    from three_regime.models import MLPBN
    from three_regime.train import Schedule, train

    g = torch.Generator().manual_seed(0)
    data = Data(torch.randn(128, 40, generator=g), torch.randint(0, 10, (128,), generator=g),
                torch.randn(32, 40, generator=g), torch.randint(0, 10, (32,), generator=g), num_classes=10)  # fmt: skip
    model = MLPBN(40, 10, hidden_layers=1, hidden_width=16)
    with pytest.raises(TrainingDivergedError, match=r"^three_regime dense training, seed 0: loss is nan at step 1;"):
        train(model, data, Schedule(epochs=2, batch_size=32, lr=INF), seed=0,
              where="three_regime dense training, seed 0")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- masksparsity


class _TinyImages:
    """The part of ``masksparsity.train.Data`` that ``train_phase`` uses: random 8x8 images, 10 classes."""

    device = torch.device("cpu")

    def n_train(self) -> int:
        return 64

    def train_batches(self, batch_size: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        for _ in range(self.n_train() // batch_size):
            yield torch.randn(batch_size, 1, 8, 8, generator=g), torch.randint(0, 10, (batch_size,), generator=g)


def test_masksparsity_training_loop_stops_at_the_diverged_step():
    from masksparsity.config import Schedule
    from masksparsity.models import build_model
    from masksparsity.train import train_phase

    model = build_model("resnet8", width=4, in_channels=1)
    schedule = Schedule(epochs=2, batch_size=16, lr=INF, lr_schedule="cosine", lr_steps=())
    with pytest.raises(TrainingDivergedError, match=r"^masksparsity baseline training, seed 0: loss is nan at step 1;"):
        train_phase(model, _TinyImages(), schedule, seed=0, where="masksparsity baseline training, seed 0")


# ---------------------------------------------------------------------------------------------------- darex


@pytest.mark.parametrize("optimizer", ["adamw", "adamr-l2"])
def test_darex_fine_tuning_stops_at_the_diverged_step(optimizer):
    from darex.config import TINY_BERT
    from darex.data import Encoded
    from darex.models import load_classifier
    from darex.train import FinetuneSpec, finetune

    g = torch.Generator().manual_seed(0)
    train = Encoded([torch.randint(1, 100, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (32,))],
                    None, torch.randint(0, 2, (32,), generator=g))  # fmt: skip
    model = load_classifier(TINY_BERT, 2, vocab_size=100, seed=0)
    spec = FinetuneSpec(optimizer=optimizer, lr=INF, steps=4, batch_size=8, weight_decay=0.1)
    pattern = rf"^darex fine-tune standard \({optimizer}, lr inf\), seed 0: loss is nan at step 1;"
    with pytest.raises(TrainingDivergedError, match=pattern):
        finetune(model, train, spec, pad_id=0, desc="fine-tune standard")


def test_darex_per_layer_q_optimisation_stops_at_the_diverged_step():
    from torch.func import functional_call

    from common.runtime import generator
    from darex.method import dare, delta_parameters, optimise_layer_q
    from darex.models import MLP

    torch.manual_seed(0)
    pre = MLP(8, 16, 2, 3)
    ft = MLP(8, 16, 2, 3)
    masked = dare(delta_parameters(pre, ft), 0.9, 1.0, generator(0))
    x = torch.randn(16, 8)

    def loss(model, params, step):  # the output mismatch, NaN from step 3 on
        value = torch.mean(functional_call(model, params, (x,)) ** 2)
        return value * math.nan if step >= 3 else value

    with pytest.raises(TrainingDivergedError, match=r"^darex DAREx-q per-layer q optimisation \(p=0.9\): .* step 3;"):
        optimise_layer_q(ft, pre.state_dict(), masked, 0.9, loss, steps=10)


def test_darex_synthetic_training_stops_at_the_diverged_step():
    from darex.models import MLP
    from darex.synthetic import train

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    with pytest.raises(TrainingDivergedError, match=r"^darex synthetic experiment, pre-train \(seed 0\): .* step 1;"):
        train(MLP(8, 16, 2, 3), x, y, steps=5, lr=INF, batch_size=16, seed=0, desc="pre-train (seed 0)")


# ---------------------------------------------------------------------------------------------------- diffusehigh


def test_diffusehigh_base_unet_training_stops_at_the_diverged_step():
    import dataclasses

    from diffusehigh import config
    from diffusehigh.train import train_base_model

    cfg = config.smoke()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=INF, steps=5))
    with pytest.raises(TrainingDivergedError, match=r"^diffusehigh base UNet training, seed \d+: .* at step 1;"):
        train_base_model(cfg, torch.device("cpu"))


def test_diffusehigh_kid_feature_net_training_stops_at_the_diverged_step(monkeypatch):
    from diffusehigh import config, metrics

    render = metrics._render_with_targets

    def nan_targets_from_step_2(n, resolution, cfg, g, calls=[]):  # noqa: B006 - counts the calls
        calls.append(1)
        images, targets = render(n, resolution, cfg, g)
        return images, targets * math.nan if len(calls) > 2 else targets

    monkeypatch.setattr(metrics, "_render_with_targets", nan_targets_from_step_2)
    with pytest.raises(TrainingDivergedError, match=r"^diffusehigh KID feature-net training, seed 0: .* step 2;"):
        metrics.train_feature_net(config.smoke().data, steps=5, resolutions=(8,))


# ---------------------------------------------------------------------------------------------------- CLI


def test_a_diverged_run_exits_1_with_one_line_and_writes_no_record(tmp_results, capsys):
    """End to end: nvit's smoke preset with a learning rate that blows the dense model up at its second step.
    Nothing is written: no record, and no cache entry a later run would resume from."""
    from common.cli import main
    from common.config import config_hash, override
    from nvit import config, reproduce

    sets = ["--set", "dense.lr=1e30"]
    argv = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_results), *sets]
    assert main("nvit", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv) == EXIT_DIVERGED
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nvit:")]
    assert len(lines) == 1, lines
    digest = config_hash(override(config.smoke(), ["dense.lr=1e30"]))
    assert re.fullmatch(
        rf"nvit: run diverged: nvit dense training, seed 0: loss is (nan|inf|-inf) at step \d+; .*"
        rf"\[preset smoke, config {digest}: python -m nvit reproduce --preset smoke --set dense.lr=1e30\]",
        lines[0],
    ), lines[0]
    assert not list(tmp_results.rglob("record.json"))
    assert not list((tmp_results.parent / "cache").rglob("dense-*.pt")), "the diverged model is not cached either"
