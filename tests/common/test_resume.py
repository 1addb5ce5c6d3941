"""Saving and resuming a training loop inside a cached stage (common.resume): a run killed after an epoch and
started again computes bit for bit what an uninterrupted run computes; saves are atomic; nothing is saved outside
a slot or with saving off; the cache deletes a stage's saved state once its result is stored."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from common import resume
from common.runtime import ArtifactCache, key_hash
from tests.conftest import Killed

pytestmark = pytest.mark.kernel_independent  # the same kernels run in both arms of every comparison


def toy_loop(epochs: int = 4) -> tuple[dict, list]:
    """A loop whose result depends on every piece of saved state: weights, momentum, dropout (torch's generator),
    NumPy's and Python's generators; the data of each epoch depend on the epoch alone."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen: list[int] = []
    saved = resume.checkpoint("toy", model, opt)
    for epoch in range(saved.restore(), epochs):
        seen.append(epoch)
        g = torch.Generator().manual_seed(epoch)
        x = torch.randn(32, 6, generator=g) * float(np.random.uniform(0.5, 1.5)) * random.uniform(0.5, 1.5)
        for part in x.split(8):
            opt.zero_grad()
            model(part).pow(2).mean().backward()
            opt.step()
        saved.epoch_done(epoch, last=epoch == epochs - 1)
    return {k: v.clone() for k, v in model.state_dict().items()}, seen


def test_a_killed_loop_resumes_to_the_uninterrupted_result(tmp_path, kill_after):
    reference, _ = toy_loop()
    with resume.saving_every(1):
        kill_after(1)
        with pytest.raises(Killed), resume.slot(tmp_path):  # a run: a process, a slot
            toy_loop()
        assert (tmp_path / "toy.0" / "state" / "done").read_text() == "2"
        kill_after(-1)  # disarmed
        with resume.slot(tmp_path):
            state, seen = toy_loop()
    assert seen == [2, 3], "the second run starts after the two saved epochs"
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_saves_every_n_epochs_and_never_after_the_last(tmp_path):
    with resume.saving_every(2), resume.slot(tmp_path):
        toy_loop(epochs=4)
    assert (tmp_path / "toy.0" / "state" / "done").read_text() == "2"  # after epoch 2; the 4th is the end
    assert not (tmp_path / "toy.0" / "state.new").exists() and not (tmp_path / "toy.0" / "state.old").exists()


def test_nothing_is_saved_outside_a_slot_or_with_saving_off(tmp_path):
    with resume.saving_every(1):
        assert not resume.checkpoint("x", nn.Linear(1, 1)).active
    with resume.saving_every(0), resume.slot(tmp_path):
        _, seen = toy_loop()
    assert seen == [0, 1, 2, 3] and not any(tmp_path.iterdir())


def test_an_incomplete_save_is_ignored_and_the_previous_one_used(tmp_path, kill_after):
    with resume.saving_every(1):
        kill_after(0)
        with pytest.raises(Killed), resume.slot(tmp_path):  # a run: a process, a slot
            toy_loop()
        folder = tmp_path / "toy.0"
        (folder / "state").rename(folder / "state.old")  # killed between the two renames of the next save
        (folder / "state.new").mkdir()  # and a save that never finished
        kill_after(-1)
        with resume.slot(tmp_path):
            _, seen = toy_loop()
    assert seen == [1, 2, 3]


def test_saving_every_restores_the_environment(monkeypatch):
    monkeypatch.delenv(resume.SAVE_EVERY_ENV, raising=False)
    with resume.saving_every(3):
        assert resume.save_every() == 3
    assert resume.SAVE_EVERY_ENV not in os.environ
    monkeypatch.setenv(resume.SAVE_EVERY_ENV, "soon")
    with pytest.raises(Exception, match="whole number of epochs"):
        resume.save_every()


def test_objects_without_state_cannot_be_registered():
    with pytest.raises(TypeError, match="state_dict"):
        resume.checkpoint("x", object())


def test_the_cache_resumes_a_killed_stage_and_then_deletes_its_state(tmp_path, kill_after):
    cache = ArtifactCache("p", root=tmp_path)
    key = {"stage": 1}
    slot = tmp_path / "p" / f"toy-{key_hash(key)}.resume"
    with resume.saving_every(1):
        kill_after(1)
        with pytest.raises(Killed):
            cache.get_or_create("toy", key, lambda: toy_loop())
        assert (slot / "toy.0" / "state").is_dir(), "a failed stage keeps its saved state"
        kill_after(-1)
        _, seen = cache.get_or_create("toy", key, lambda: toy_loop())
    assert seen == [2, 3] and not slot.exists(), "the stored stage's state is deleted"


def test_each_run_of_a_loop_in_one_stage_has_its_own_state(tmp_path, kill_after):
    """A stage that runs the same loop twice (e.g. one fine-tune per snapshot): killed in the second, the re-run's
    first loop resumes from its own save (not the second's) and the second from its own."""

    def stage() -> tuple[list, list]:
        return toy_loop(epochs=3)[1], toy_loop(epochs=4)[1]

    with resume.saving_every(1):
        reference = stage()
        kill_after(2)  # only the 4-epoch loop saves epoch 2 (a loop never saves after its last epoch)
        with pytest.raises(Killed), resume.slot(tmp_path):
            stage()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.0", "toy.1"]
        kill_after(-1)
        with resume.slot(tmp_path):
            first, second = stage()
    assert reference == ([0, 1, 2], [0, 1, 2, 3])
    assert first == [2] and second == [3], "each loop continued after its own last save"
