"""Errors a user can act on, and the one place that decides how the command line reports them.

A *user error* is a mistake the person running the command can fix: data or weights that are not where
the config says, a path that does not exist, a config value out of range, a pair of models that do not
belong together. The command line prints its message (one or two lines that say what to fix) on stderr
and exits with status 2; ``--debug`` or ``PRUNE_REPRO_DEBUG=1`` shows the traceback as well. Every other
exception is a bug and keeps its traceback.

A *diverged run* (a NaN or infinite loss) is not the user's mistake and not necessarily a bug either: the
run stops at the step where it happened, no record is written, and the command line says which step and
which config, exit status 4 (a crash exits 1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 4  # not 1 (any crash) nor 3 (a preset not implemented yet)
DEBUG_ENV = "PRUNE_REPRO_DEBUG"


class UserError(Exception):
    """A mistake the user can fix; the message says what to fix. The CLI prints it and exits 2."""


class PathNotFoundError(UserError, FileNotFoundError):
    """A file or directory named in the config or on the command line does not exist."""


class IncompatibleModelsError(UserError, ValueError):
    """Two models (a base and its fine-tune, an adapter and its base) that do not belong together."""


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the message names the loop and the step."""


def debug_enabled() -> bool:
    """Whether ``PRUNE_REPRO_DEBUG`` asks for tracebacks of user errors."""
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0", "false", "no")


def require_path(path: str | os.PathLike | None, what: str, *, kind: str = "any", hint: str = "") -> Path:
    """Return ``path`` as a ``Path`` if it exists (and is a ``kind`` of ``file``/``dir``), else raise.

    ``what`` names the thing in the user's terms (``"--base"``, ``"sdxl_path (an SDXL pipeline
    directory)"``); ``hint`` says how to fix it. ``None`` or an empty string counts as missing.
    """
    suffix = f" {hint}" if hint else ""
    if path is None or str(path) == "":
        raise PathNotFoundError(f"{what}: no path given.{suffix}")
    p = Path(path).expanduser()
    if not p.exists():
        raise PathNotFoundError(f"{what}: {p} does not exist.{suffix}")
    if kind == "dir" and not p.is_dir():
        raise PathNotFoundError(f"{what}: {p} is not a directory.{suffix}")
    if kind == "file" and not p.is_file():
        raise PathNotFoundError(f"{what}: {p} is not a file.{suffix}")
    return p


def check_finite(loss: torch.Tensor | float, *, step: int, where: str) -> None:
    """Raise :class:`TrainingDivergedError` if ``loss`` is NaN or infinite.

    ``where`` names the loop in the reader's terms (``"dense training, seed 0"``) and ``step`` the
    optimiser step (0-based), so the message says where the run diverged.
    """
    value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"{where}: loss is {value} at step {step}; the run stopped and wrote no record "
            "(lower the learning rate or check the data)"
        )
