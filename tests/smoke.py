"""The smoke-preset run and record checks that every paper's end-to-end test starts with."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

from common.cli import main
from common.results import RunRecord, load_record
from common.runtime import REPO_ROOT


def run_smoke(paper: str, results_dir: Path, *extra: str) -> Path:
    """``python -m <paper> reproduce --preset smoke`` in-process, writing under ``results_dir``; its run folder."""
    config = importlib.import_module(f"{paper}.config")
    reproduce = importlib.import_module(f"{paper}.reproduce")
    argv = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(results_dir), *extra]
    assert main(paper, presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv) == 0
    return results_dir / paper / "smoke"


def load_smoke_record(out: Path, paper: str) -> RunRecord:
    """The record in ``out``, checked to be a finished smoke run of ``paper`` with seed 0."""
    record = load_record(out)
    assert record.paper == paper and record.preset == "smoke" and record.seeds == [0]
    assert record.command == f"python -m {paper} reproduce --preset smoke"
    assert record.provenance["wall_time_s"] is not None
    assert_claim_ids_stable(record)
    return record


def assert_claim_ids_stable(record: RunRecord) -> None:
    """A fresh run names its claims exactly as the committed record of the same preset does (the ids are what
    users cite, results/README.md links to them, and they must survive a re-run)."""
    committed = REPO_ROOT / "results" / record.paper / record.preset
    if not (committed / "record.json").exists():
        return
    ids = [c.id for c in record.claims]
    assert ids == [c.id for c in load_record(committed).claims], (
        f"{record.paper}: claim ids of a fresh {record.preset} run {ids} differ from the committed record's; "
        "ids are stable names: keep them, or re-run the preset and commit its record"
    )


def launch_two(module_args: list[str], env_extra: dict | None = None, timeout: int = 900):
    """``python -m common.launch --nproc 2 -m <module_args>`` on the CPU (gloo, one thread per process); fails the
    test with the processes' stderr when the launch does not exit 0. Returns the completed process."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "common.launch", "--nproc", "2", "-m", *module_args]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out
