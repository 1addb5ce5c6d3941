"""The base model's training: the same weights whatever the number of worker processes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.cli import main
from diffusehigh import config, reproduce
from diffusehigh import train as train_lib
from diffusehigh.__main__ import COMMANDS

pytestmark = pytest.mark.kernel_independent  # bitwise equality of two runs on one machine holds on any kernels


def tiny(**train) -> config.DiffuseHighConfig:
    cfg = config.smoke()
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6, warmup_steps=2, **train))


def test_two_workers_train_the_one_worker_weights_bit_for_bit():
    cfg = tiny()
    one, s1 = train_lib.train_base_model(cfg, torch.device("cpu"), workers=1)
    two, s2 = train_lib.train_base_model(cfg, torch.device("cpu"), workers=2)
    assert (s1["workers"], s2["workers"]) == (1, 2)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert s1["loss_curve"] == s2["loss_curve"]
    # and training moved the weights (the comparison is not between two untrained models)
    init = train_lib.build_unet(cfg.model).state_dict()
    assert any(not torch.equal(one[k], init[k]) for k in one if k in init and one[k].dtype.is_floating_point)


def test_micro_batches_are_checked():
    with pytest.raises(ValueError, match="a multiple of micro_batches"):
        train_lib.train_base_model(tiny(micro_batches=3), torch.device("cpu"))
    with pytest.raises(ValueError, match="workers must divide"):
        train_lib.train_base_model(tiny(micro_batches=2), torch.device("cpu"), workers=3)


def test_train_command_refuses_a_worker_count_that_does_not_divide_the_micro_batches(capsys):
    argv = ["train", "--preset", "smoke", "--workers", "3"]
    code = main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv,
                commands=COMMANDS)  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "workers must divide train.micro_batches (2), got 3" in err, err


def test_short_trainings_run_in_this_process():
    cpu = torch.device("cpu")
    assert train_lib.default_train_workers(tiny(), cpu) == 1
    long = dataclasses.replace(tiny(), train=dataclasses.replace(tiny().train, steps=train_lib.MIN_STEPS_FOR_WORKERS))
    assert train_lib.default_train_workers(long, cpu) in (1, 2)
