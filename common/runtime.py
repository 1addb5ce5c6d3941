"""Runtime: project paths, device selection, seeding, threads, hub offline mode, and a resumable cache.

Device selection lives here and nowhere else, so the same code runs on the CPU machines and picks up
CUDA where there is one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .errors import UserError
from .machine import cpuinfo

T = TypeVar("T")

_log = logging.getLogger(__name__)

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

    Asking for CUDA on a machine without it is a user error, not a silent fall-back to the CPU.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise UserError(f"--device {preference!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {preference}: CUDA is not available on this machine (use --device cpu or auto)")
    return device


def device_name(device: torch.device) -> str:
    """A human-readable device description for records: the GPU model or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = cpuinfo().get("model name")
    if name:
        return name
    import platform

    return platform.processor() or platform.machine()


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default ``$PRUNE_REPRO_THREADS`` or all cores); return it."""
    if n is None:
        n = int(os.environ.get("PRUNE_REPRO_THREADS", os.cpu_count() or 1))
    if n < 1:
        raise UserError(f"thread count must be >= 1, got {n} (--threads or PRUNE_REPRO_THREADS)")
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


def atomic_write_bytes(path: Path, data: bytes, *more: bytes | memoryview) -> None:
    """Write ``data`` (and ``more`` chunks after it) to ``path`` so that readers see the old file or the new
    one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in (data, *more):
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def key_hash(key: Any, length: int = 16) -> str:
    """A stable hash of any JSON-serialisable key (dicts are hashed with sorted keys)."""
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


class CorruptCacheEntry(Exception):
    """A cache file that is truncated, altered or not written by this cache (read by ``ArtifactCache``)."""


class ArtifactCache:
    """Intermediate artifacts of one paper, one file per key, so an interrupted run resumes.

    Keys are JSON-serialisable (typically the part of a config that determines the artifact, plus a
    seed, plus a format number the caller bumps when the code that creates the artifact changes what
    it returns); the file name is a readable tag plus the key's hash::

        cache = ArtifactCache("nvit")
        state = cache.get_or_create("dense", {"model": to_dict(cfg.model), "seed": 0}, lambda: train(...))

    Values are stored with ``torch.save`` (tensors, state dicts, plain Python) behind a header with the
    payload's length and SHA-256, and written atomically, so a run killed mid-write leaves no entry at
    all; an entry that is truncated or altered afterwards is detected on reading, reported, deleted and
    recomputed by ``get_or_create`` (``load`` raises :class:`CorruptCacheEntry`). Entries written by
    earlier versions (plain ``torch.save`` files, no header) are kept: one that still loads gets its
    header added in place, one that does not counts as corrupt. Pass ``root`` to place it elsewhere
    (tests do).
    """

    MAGIC = b"PRCACHE1"
    _HEADER = len(MAGIC) + 8 + 32  # magic, payload length (big-endian u64), SHA-256 of the payload
    _LEGACY_MAGIC = b"PK\x03\x04"  # torch.save's zip format: what the cache wrote before the header

    def __init__(self, namespace: str, root: Path | None = None):
        self.dir = (root or cache_root()) / namespace

    def path(self, tag: str, key: Any) -> Path:
        return self.dir / f"{tag}-{key_hash(key)}.pt"

    def resume_slot(self, tag: str, key: Any, clear: bool = False) -> contextlib.AbstractContextManager[Path]:
        """A :func:`common.resume.slot` beside the entry: training loops run inside save their state there, so a
        run killed while creating the entry resumes from the last saved epoch; :meth:`save` deletes it (``clear``:
        the block's end does, for work that is not stored as an entry of its own)."""
        from .resume import slot

        return slot(self.dir / f"{tag}-{key_hash(key)}.resume", clear=clear)

    def __contains__(self, item: tuple[str, Any]) -> bool:
        """Whether a sound entry exists; a corrupt one is reported, deleted and so counts as missing."""
        tag, key = item
        path = self.path(tag, key)
        if not path.exists():
            return False
        try:
            self._payload(path)
        except CorruptCacheEntry as err:
            _log.warning("corrupt cache entry, will recompute: %s", err)
            path.unlink(missing_ok=True)
            return False
        return True

    def load(self, tag: str, key: Any) -> Any:
        """The cached value; :class:`CorruptCacheEntry` if the file fails its length or checksum test."""
        return torch.load(io.BytesIO(self._payload(self.path(tag, key))), map_location="cpu", weights_only=False)

    def _payload(self, path: Path) -> bytes:
        blob = path.read_bytes()
        if not blob.startswith(self.MAGIC):
            if blob.startswith(self._LEGACY_MAGIC):
                return self._adopt_legacy(path, blob)
            raise CorruptCacheEntry(f"{path}: no cache header (not a cache entry, or its start was overwritten)")
        header, payload = memoryview(blob)[: self._HEADER], memoryview(blob)[self._HEADER :]
        if len(header) < self._HEADER:
            raise CorruptCacheEntry(f"{path}: truncated inside the header ({len(blob)} bytes)")
        length = int.from_bytes(header[len(self.MAGIC) : len(self.MAGIC) + 8], "big")
        if len(payload) != length:
            raise CorruptCacheEntry(f"{path}: truncated or extended ({len(payload)} of {length} bytes)")
        if hashlib.sha256(payload).digest() != header[-32:]:
            raise CorruptCacheEntry(f"{path}: checksum mismatch (the file was altered after it was written)")
        return payload.tobytes()

    def _adopt_legacy(self, path: Path, blob: bytes) -> bytes:
        """An entry from before the header: keep it if it still loads (and add its header), else corrupt."""
        try:
            torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
        except Exception as err:
            raise CorruptCacheEntry(f"{path}: an entry from before checksums that no longer loads ({err})") from err
        self._write(path, blob)
        _log.info("cache: added a checksum header to %s (written by an earlier version)", path.name)
        return blob

    def _write(self, path: Path, payload: bytes) -> None:
        header = self.MAGIC + len(payload).to_bytes(8, "big") + hashlib.sha256(payload).digest()
        atomic_write_bytes(path, header, payload)

    def save(self, tag: str, key: Any, value: Any) -> Path:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        path = self.path(tag, key)
        self._write(path, buffer.getbuffer())
        shutil.rmtree(path.with_suffix(".resume"), ignore_errors=True)  # a saved training state is done with
        return path

    def get_or_create_together(self, tag: str, key: Any, create: Callable[[], T]) -> T:
        """:meth:`get_or_create` for data-parallel processes that create an entry together (``create`` runs
        collectives): rank 0 says whether the entry exists and every process follows, so all run ``create`` or none
        does; rank 0 alone writes it, and the others wait until it is written (``common.distributed``). In one
        process it is :meth:`get_or_create`."""
        from . import distributed as dist

        if dist.world_size() == 1:
            return self.get_or_create(tag, key, create)
        if dist.broadcast_object((tag, key) in self if dist.is_main() else None):
            return self.load(tag, key)
        with self.resume_slot(tag, key):  # a killed run continues its training loops (common.resume)
            value = create()
        if dist.is_main():
            self.save(tag, key, value)
        dist.barrier()
        return value

    def get_or_create(self, tag: str, key: Any, create: Callable[[], T]) -> T:
        """Load the artifact for ``(tag, key)`` if cached, else compute it with ``create`` and cache it.

        A corrupt entry is reported (a warning naming the file), deleted and computed again.
        """
        path = self.path(tag, key)
        try:
            value = self.load(tag, key)
        except FileNotFoundError:
            pass
        except CorruptCacheEntry as err:
            _log.warning("corrupt cache entry, recomputing: %s", err)
            path.unlink(missing_ok=True)
        else:
            _log.info("cache: loaded %s", path.name)
            return value
        with self.resume_slot(tag, key):
            value = create()
        self.save(tag, key, value)
        _log.info("cache: computed %s", path.name)
        return value


class PhaseTimer:
    """Wall time per named phase of a run (dense training, pruning, fine-tuning, evaluation, ...).

    ``with timer.phase("fine-tuning"): ...`` adds the block's wall time to that phase; a phase entered
    inside another pauses the outer one, so the times are exclusive and add up to the time spent inside
    phases. Entering the same name again accumulates.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []  # [name, start of the current stretch]

    def _charge(self, now: float) -> None:
        if self._stack:
            name, since = self._stack[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - since

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_initialized():  # charge queued GPU work to the phase that launched it
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        now = self._now()
        self._charge(now)
        self.seconds.setdefault(name, 0.0)
        self._stack.append([name, now])
        try:
            yield
        finally:
            now = self._now()
            self._charge(now)
            self._stack.pop()
            if self._stack:
                self._stack[-1][1] = now

    def breakdown(self, total_s: float | None = None) -> dict[str, float]:
        """Seconds per phase in the order first entered (rounded to 0.01 s); with ``total_s``, the time
        outside every phase is added as ``"other"``."""
        out = {name: round(sec, 2) for name, sec in self.seconds.items()}
        if total_s is not None:
            out["other"] = round(max(total_s - sum(self.seconds.values()), 0.0), 2)
        return out


def progress(iterable=None, **kwargs):
    """A tqdm progress bar; ``PRUNE_REPRO_PROGRESS=0`` turns bars off (e.g. in CI logs)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", os.environ.get("PRUNE_REPRO_PROGRESS", "1") == "0")
    return tqdm(iterable, **kwargs)
