"""Save and resume a long training loop in the middle of a cached stage (accelerate's ``save_state``).

A stage's result is cached whole (:class:`common.runtime.ArtifactCache`), so a run killed between stages loses
nothing; this module covers a run killed *inside* one (a pre-empted cluster job in the 300th epoch of a fine-tune).
While the cache creates an entry it opens a *slot*, a folder beside the entry (``<tag>-<hash>.resume``); a training
loop inside asks for a :class:`Checkpoint` of its state, restores it, and saves it at the end of every
``save_every()`` epochs; the slot is deleted once the entry is written. Run the same command again and the loop
continues from its last saved epoch. The training loops save at an epoch boundary because that is where their data
order is a function of the seed and the epoch alone (a mid-epoch save could not restore a data loader's worker
processes' random streams), so a resumed run computes what an uninterrupted one computes (tested bit for bit).
nvit's pruning loop, whose steps do not line up with epochs, saves after the step that completes an epoch and
restarts its stream at the next batch (:meth:`nvit.train.BatchStream.from_batch`).

What is saved: the objects the loop registers (model, optimizer, scheduler, EMA: anything with ``state_dict`` and
``load_state_dict``; loop variables through :class:`State`), the number of epochs done, and every process's random
number generators (Python, NumPy, torch, CUDA), all by ``accelerate.Accelerator.save_state`` (rank 0 writes the
objects, every rank its generators). A new save goes to a temporary folder that replaces the previous one only
when it is complete, so a kill during a save keeps the previous save.

How often: ``PRUNE_REPRO_SAVE_EVERY`` epochs (``reproduce --save-every N``; the ``paper`` presets default to 1,
the others to 0 = never, since their stages take minutes).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

SAVE_EVERY_ENV = "PRUNE_REPRO_SAVE_EVERY"
"""Epochs between saves of a running loop's state (0 or unset: never)."""


class _Slot:
    """The folder of the stage being created, and how many loops of each name it has started (a stage may run
    the same loop several times, e.g. one fine-tune per snapshot: each gets its own sub-folder, in order)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.started = directory, {}

    def folder(self, name: str) -> Path:
        index = self.started.get(name, 0)
        self.started[name] = index + 1
        return self.directory / f"{name}.{index}"


_SLOT: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar("resume_slot", default=None)


def save_every() -> int:
    """Epochs between saves, from ``$PRUNE_REPRO_SAVE_EVERY`` (0 when unset)."""
    raw = os.environ.get(SAVE_EVERY_ENV, "0").strip() or "0"
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        from .errors import UserError

        raise UserError(f"{SAVE_EVERY_ENV} must be a whole number of epochs (0 = never), got {raw!r}")
    return value


@contextlib.contextmanager
def saving_every(epochs: int) -> Iterator[None]:
    """Inside, loops save every ``epochs`` epochs (through the environment, so worker processes started inside
    inherit it); the previous setting is restored on leaving."""
    before = os.environ.get(SAVE_EVERY_ENV)
    os.environ[SAVE_EVERY_ENV] = str(epochs)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SAVE_EVERY_ENV, None)
        else:
            os.environ[SAVE_EVERY_ENV] = before


@contextlib.contextmanager
def slot(directory: Path, clear: bool = False) -> Iterator[Path]:
    """Inside, training loops save their state under ``directory``: the k-th loop named ``name`` (counted from 0 on
    entering the block) in ``<name>.<k>``, so a stage that runs a loop several times resumes each from its own
    state. Its owner deletes the folder once the stage's result is stored (``ArtifactCache.save`` does); ``clear``:
    delete it when the block ends without an error (a stage whose result is not cached on its own)."""
    token = _SLOT.set(_Slot(Path(directory)))
    try:
        yield Path(directory)
    finally:
        _SLOT.reset(token)
    if clear:  # reached only without an exception
        from . import distributed as dist  # here, not at the top: the CLI imports this module for --help

        dist.barrier()
        if dist.is_main():
            shutil.rmtree(directory, ignore_errors=True)


class _Epochs:
    """The number of epochs done, saved with the loop's objects."""

    def __init__(self) -> None:
        self.done = 0

    def state_dict(self) -> dict[str, int]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.done = int(state["done"])


class State:
    """Loop variables saved with a checkpoint: ``get()`` returns them (any picklable value), ``put(value)`` sets
    them back on a resume (e.g. closures over a loop's locals)."""

    def __init__(self, get, put) -> None:
        self.get, self.put = get, put

    def state_dict(self) -> Any:
        return self.get()

    def load_state_dict(self, state: Any) -> None:
        self.put(state)


class Checkpoint:
    """The saved state of one training loop: ``restore()`` once before the loop, ``epoch_done(e)`` after each epoch.

    ``checkpoint("dense", model, optimizer)`` gives one bound to the current slot, or an inactive one (restores
    nothing, saves nothing) outside a slot or when saving is off, so a loop calls it unconditionally.
    """

    def __init__(self, directory: Path | None, objects: tuple[Any, ...], every: int):
        self.directory, self.every = directory, every
        self._epochs = _Epochs()
        self._objects = (*objects, self._epochs)
        for obj in objects:
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(f"{type(obj).__name__} has no state_dict/load_state_dict to save and restore")

    @property
    def active(self) -> bool:
        return self.directory is not None and self.every > 0

    def _accelerator(self):
        from accelerate import Accelerator

        from . import distributed as dist

        accelerator = Accelerator(cpu=dist.state().device.type == "cpu")
        accelerator.register_for_checkpointing(*self._objects)
        return accelerator

    def _saved(self) -> Path | None:
        """The newest complete save (``state``, or ``state.old`` if a kill fell between the two renames)."""
        assert self.directory is not None
        for name in ("state", "state.old"):
            if (self.directory / name / "done").is_file():
                return self.directory / name
        return None

    def restore(self) -> int:
        """Load the last save, if any, into the registered objects and the random generators; the epochs done."""
        if not self.active:
            return 0
        saved = self._saved()
        if saved is None:
            return 0
        self._accelerator().load_state(str(saved))
        # A warning, so that it shows from worker processes too: the run did not start this loop afresh.
        _log.warning("resumed %s after epoch %d (its saved state)", self.directory, self._epochs.done)
        return self._epochs.done

    def epoch_done(self, epoch: int, last: bool = False) -> None:
        """Record that epoch ``epoch`` (0-based) has finished; saves every ``every`` epochs, never after the last
        (the stage's result is cached then)."""
        self._epochs.done = epoch + 1
        if not self.active or last or (epoch + 1) % self.every:
            return
        assert self.directory is not None
        from . import distributed as dist

        new, current, old = (self.directory / name for name in ("state.new", "state", "state.old"))
        if dist.is_main():
            shutil.rmtree(new, ignore_errors=True)
        dist.barrier()
        self._accelerator().save_state(str(new))
        dist.barrier()  # every rank's generators are written
        if dist.is_main():
            (new / "done").write_text(str(epoch + 1))
            shutil.rmtree(old, ignore_errors=True)
            if current.exists():
                current.rename(old)
            new.rename(current)
            shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        _log.info("saved the state of %s after epoch %d", self.directory, epoch + 1)


def checkpoint(name: str, *objects: Any) -> Checkpoint:
    """A :class:`Checkpoint` of ``objects`` for the next loop called ``name`` in the current slot (inactive outside
    one). A stage's loops must start in the same order on every run (they do: a stage is a function of its key)."""
    current = _SLOT.get()
    return Checkpoint(None if current is None else current.folder(name), objects, save_every())
