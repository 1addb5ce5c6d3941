"""Test configuration: offline, CPU, seeded, with every cache and output in a temporary directory.

Any attempt to open a network connection fails loudly (tests must never touch the network), and the
project's caches and results go to a per-session temporary folder so tests never write into the repo.
"""

from __future__ import annotations

import os
import socket
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ["PRUNE_REPRO_PROGRESS"] = "0"
os.environ["PRUNE_REPRO_SPEED_PROBE"] = "0"  # every run's one-second speed probe (common.machine): tested on its own
_SESSION_DIR = tempfile.mkdtemp(prefix="prune-repro-tests-")
os.environ["PRUNE_REPRO_CACHE"] = os.path.join(_SESSION_DIR, "cache")
os.environ["PRUNE_REPRO_RESULTS"] = os.path.join(_SESSION_DIR, "results")

import pytest  # noqa: E402
import torch  # noqa: E402


class NetworkAccessError(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkAccessError(f"tests must not use the network (attempted connection: {args[1:] or kwargs})")


_INET = (socket.AF_INET, socket.AF_INET6)
_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


def _guarded(original):
    def connect(self, address):
        if self.family in _INET:
            _refuse(self, address)
        return original(self, address)

    return connect


socket.socket.connect = _guarded(_original_connect)
socket.socket.connect_ex = _guarded(_original_connect_ex)
socket.create_connection = lambda address, *a, **k: _refuse(None, address)


_THREADS = int(os.environ.get("PRUNE_REPRO_THREADS", min(2, os.cpu_count() or 1)))


_KERNEL_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def pytest_report_header(config):
    """Which CPU kernels and how many threads: a float test that fails on one machine only shows up here."""
    forced = ", ".join(f"{var}={os.environ[var]}" for var in _KERNEL_VARS if os.environ.get(var))
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"torch {torch.__version__}, CPU kernels {capability}"
        + (f" (forced: {forced})" if forced else "")
        + f", {_THREADS} thread(s) (PRUNE_REPRO_THREADS)"
    )


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Same seed and thread count for every test, so a failure reproduces; ``PRUNE_REPRO_THREADS`` sets
    the count (default: 2, or 1 on a one-core machine), so the suite can be run with 1 and with 2."""
    torch.manual_seed(0)
    torch.set_num_threads(_THREADS)
    yield


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """A private results root and cache for one test."""
    monkeypatch.setenv("PRUNE_REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PRUNE_REPRO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "results"


class Killed(Exception):
    """Stands for the kill of a pre-empted job (``kill_after``)."""


@pytest.fixture
def kill_after(monkeypatch):
    """``kill_after(k)``: from now on an active :class:`common.resume.Checkpoint` raises :class:`Killed` right after
    saving epoch ``k`` (0-based), as a job killed then would stop; ``kill_after(-1)`` disarms it."""
    from common import resume

    original = resume.Checkpoint.epoch_done

    def arm(k: int) -> None:
        def epoch_done(self, epoch, last=False):
            original(self, epoch, last)
            if self.active and epoch == k and not last:  # a loop's last epoch saves nothing
                raise Killed

        monkeypatch.setattr(resume.Checkpoint, "epoch_done", epoch_done)

    return arm


@pytest.fixture
def kill_and_resume(tmp_path, kill_after, monkeypatch):
    """``kill_and_resume(run, after=k)`` -> ``(reference, resumed, restored)``: ``run()`` uninterrupted; then, saving
    every epoch, a ``run()`` killed right after saving epoch ``k`` and a second ``run()`` of the same stage, each in
    a slot of its own as separate processes would be (:mod:`common.resume`); ``resumed`` is what the second returned,
    ``restored`` the epochs each checkpoint of the second run restored."""
    from common import resume

    restored: list[int] = []
    original = resume.Checkpoint.restore
    monkeypatch.setattr(resume.Checkpoint, "restore", lambda self: restored.append(original(self)) or restored[-1])

    def go(run, after: int):
        reference = run()
        with resume.saving_every(1):
            kill_after(after)
            with pytest.raises(Killed), resume.slot(tmp_path / "stage"):
                run()
            kill_after(-1)
            restored.clear()
            with resume.slot(tmp_path / "stage"):
                resumed = run()
        return reference, resumed, list(restored)

    return go


def run_darex_smoke(root, workers: int):
    """darex's ``smoke`` preset in this process with ``workers`` worker processes, from an empty cache of its own
    (``root/cache``, so the fine-tunes are trained); its record is in ``root/darex/smoke``."""
    from tests.test_cli import run_cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNE_REPRO_CACHE", str(root / "cache"))
        mp.setenv("PRUNE_REPRO_WORKERS", str(workers))
        assert run_cli("reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(root)) == 0
    return root


@pytest.fixture(scope="session")
def darex_smoke(tmp_path_factory):
    """One darex ``smoke`` run with 2 workers per session (~30 s), shared by tests/test_cli.py and
    tests/darex/test_reproduce.py: its results folder, with its cache in ``cache/``."""
    return run_darex_smoke(tmp_path_factory.mktemp("darex-smoke-w2"), 2)
