"""A run killed with SIGKILL part-way resumes from its cache and ends with the record of an uninterrupted run.

three_regime's smoke preset is the fastest with many cache entries (one dense run, then nine grid cells, each
its own entry; here on half its data): a run is killed once the dense run and two cells are on disk, started
again in a new process and run to the end, and its record compared with that of a run from an empty cache
(started alongside the first, in a process of its own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.runtime import REPO_ROOT
from three_regime import config, grid

pytestmark = pytest.mark.e2e  # whole preset runs; `make test` skips them on its second kernel pass

# half the smoke data (the same pipeline in about half the time), and jobs in this process: a killed parent
# must not leave worker processes behind that go on writing entries
SETS = ["--set", "data.num_samples=1000", "--set", "shard.workers=1"]
COMMAND = [sys.executable, "-m", "three_regime", "reproduce", "--preset", "smoke", "--no-readme", *SETS]
KILL_AFTER = 3  # cache entries on disk: the dense run and two cells
TIMEOUT_S = 240


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PRUNE_REPRO_CACHE": str(root / "cache"), "PRUNE_REPRO_RESULTS": str(root / "results"),
            "PRUNE_REPRO_THREADS": "1", "PRUNE_REPRO_PROGRESS": "0", "OMP_WAIT_POLICY": "PASSIVE"}  # fmt: skip


def _start(root: Path) -> subprocess.Popen:
    root.mkdir(parents=True)
    with open(root / "log.txt", "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(COMMAND, cwd=REPO_ROOT, env=_env(root), stdout=log, stderr=subprocess.STDOUT)


def _entries(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every finished cache entry: its bytes and modification time."""
    folder = root / "cache" / grid.NAMESPACE
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.glob("*.pt"))}


def _comparable(root: Path) -> dict:
    """The record without its provenance (wall time, start time, versions): measurements, claims, tables, extra."""
    record = json.loads((root / "results" / "three_regime" / "smoke" / "record.json").read_text())
    record.pop("provenance")
    return record


def _log(root: Path) -> str:
    return (root / "log.txt").read_text()[-3000:]


@pytest.mark.timeout(3 * TIMEOUT_S)  # three preset processes, each bounded by TIMEOUT_S
def test_sigkilled_run_resumes_from_its_cache_to_the_uninterrupted_record(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "reference"
    reference = _start(ref)  # from an empty cache, never interrupted
    victim = _start(run)
    try:
        folder, deadline = run / "cache" / grid.NAMESPACE, time.monotonic() + TIMEOUT_S
        while len(list(folder.glob("*.pt"))) < KILL_AFTER and victim.poll() is None:
            assert time.monotonic() < deadline, f"no cache entries in {TIMEOUT_S} s:\n{_log(run)}"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL, f"not killed mid-run:\n{_log(run)}"
        finished = _entries(run)
        n_cells = len(grid.grid_cells(config.smoke()))
        done_cells = sum(name.startswith("cell-") for name in finished)
        assert KILL_AFTER <= len(finished) < 1 + n_cells, "killed mid-run: some cells done, some not"
        assert any(name.startswith("dense-") for name in finished)
        assert not list(run.rglob("record.json"))

        resumed = subprocess.run(COMMAND, cwd=REPO_ROOT, env=_env(run), capture_output=True, text=True,
                                 timeout=TIMEOUT_S)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        # (1) what was finished before the kill is reused, not recomputed: same bytes, same modification time
        after = _entries(run)
        assert {name: after[name] for name in finished} == finished
        assert len(after) == 1 + n_cells
        assert f"{n_cells} cells ({n_cells - done_cells} to compute), 0 dense runs to compute" in resumed.stderr
        # (2) the record is the uninterrupted run's, apart from timings and provenance
        assert reference.wait(timeout=TIMEOUT_S) == 0, _log(ref)
        assert _comparable(run) == _comparable(ref)
    finally:
        for process in (victim, reference):
            process.kill()
            process.wait()
