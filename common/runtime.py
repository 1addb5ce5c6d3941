"""Runtime: project paths, device selection, seeding, threads, hub offline mode, and a resumable cache.

Device selection lives here and nowhere else, so the same code runs on the CPU machines and picks up
CUDA where there is one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout's root (the folder holding pyproject.toml)."""

_HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE")


def results_root() -> Path:
    """Where `make reproduce-*` writes records: ``$PRUNE_REPRO_RESULTS`` or ``<repo>/results``."""
    return Path(os.environ.get("PRUNE_REPRO_RESULTS", REPO_ROOT / "results"))


def cache_root() -> Path:
    """Intermediate artifacts (trained models, per-cell results): ``$PRUNE_REPRO_CACHE`` or ``<repo>/.cache``."""
    return Path(os.environ.get("PRUNE_REPRO_CACHE", REPO_ROOT / ".cache"))


def data_root() -> Path:
    """Datasets extracted by the Makefile: ``$PRUNE_REPRO_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("PRUNE_REPRO_DATA", REPO_ROOT / "data"))


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` are taken as given.

    Asking for CUDA on a machine without it raises instead of silently falling back to the CPU.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available on this machine")
    return device


def device_name(device: torch.device) -> str:
    """A human-readable device description for records: the GPU model or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default ``$PRUNE_REPRO_THREADS`` or all cores); return it."""
    if n is None:
        n = int(os.environ.get("PRUNE_REPRO_THREADS", os.cpu_count() or 1))
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh, seeded torch generator: randomness that does not disturb the global RNG state."""
    return torch.Generator(device=device).manual_seed(seed)


def enable_offline_mode() -> None:
    """Tell huggingface_hub, transformers and diffusers never to reach a hub (idempotent)."""
    for var in _HUB_OFFLINE_VARS:
        os.environ[var] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def key_hash(key: Any, length: int = 16) -> str:
    """A stable hash of any JSON-serialisable key (dicts are hashed with sorted keys)."""
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


class ArtifactCache:
    """Intermediate artifacts of one paper, one file per key, so an interrupted run resumes.

    Keys are JSON-serialisable (typically the part of a config that determines the artifact, plus a
    seed, plus a format number the caller bumps when the code that creates the artifact changes what
    it returns); the file name is a readable tag plus the key's hash::

        cache = ArtifactCache("nvit")
        state = cache.get_or_create("dense", {"model": to_dict(cfg.model), "seed": 0}, lambda: train(...))

    Values are stored with ``torch.save`` (tensors, state dicts, plain Python) and written atomically,
    so a run killed mid-write leaves no corrupt entry. Pass ``root`` to place it elsewhere (tests do).
    """

    def __init__(self, namespace: str, root: Path | None = None):
        self.dir = (root or cache_root()) / namespace

    def path(self, tag: str, key: Any) -> Path:
        return self.dir / f"{tag}-{key_hash(key)}.pt"

    def __contains__(self, item: tuple[str, Any]) -> bool:
        tag, key = item
        return self.path(tag, key).exists()

    def load(self, tag: str, key: Any) -> Any:
        return torch.load(self.path(tag, key), map_location="cpu", weights_only=False)

    def save(self, tag: str, key: Any, value: Any) -> Path:
        import io

        buffer = io.BytesIO()
        torch.save(value, buffer)
        path = self.path(tag, key)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def get_or_create(self, tag: str, key: Any, create: Callable[[], T]) -> T:
        """Load the artifact for ``(tag, key)`` if cached, else compute it with ``create`` and cache it."""
        if (tag, key) in self:
            return self.load(tag, key)
        value = create()
        self.save(tag, key, value)
        return value


def progress(iterable=None, **kwargs):
    """A tqdm progress bar; ``PRUNE_REPRO_PROGRESS=0`` turns bars off (e.g. in CI logs)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", os.environ.get("PRUNE_REPRO_PROGRESS", "1") == "0")
    return tqdm(iterable, **kwargs)
