"""A real `reproduce` killed (SIGKILL, worker processes and all) right after a training loop saved its state, then
started again: it continues from that save and writes the record of an uninterrupted run (common.resume).

This is how the per-stage bug of two loops sharing one save was found; `make test-slow` runs it (about a minute
per paper on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from common.runtime import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.kernel_independent]

CASES = {  # paper: (its smoke preset made long enough to save mid-stage, the loop folder to kill after)
    "darex": (["--set", "finetune.steps=40"], "finetune.0"),
    "masksparsity": (["--set", "train.epochs=8"], "train_phase.0"),
    "nvit": (["--set", "prune.baselines=('uniform',)", "--set", "finetune.scratch_baseline=False", "--set",
              "prune.groups_per_step=1", "--set", "prune.max_steps=200", "--set", "prune.interval=4"], "prune.0"),
}  # fmt: skip


def _command(paper: str, results, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", paper, "reproduce", "--preset", "smoke", "--no-readme", "--save-every", "1",
            "--results-dir", str(results), *extra]  # fmt: skip


def _measurements(results, paper: str) -> dict:
    record = json.loads((results / paper / "smoke" / "record.json").read_text())
    return {(m["table"], m["setting"], m["metric"]): m["values"] for m in record["measurements"]
            if "speedup" not in m["metric"]}  # fmt: skip


@pytest.mark.parametrize("paper", sorted(CASES))
def test_a_killed_run_continues_to_the_uninterrupted_record(paper, tmp_path):
    extra, loop = CASES[paper]
    env = {**os.environ, "PRUNE_REPRO_CACHE": str(tmp_path / "cache-ref")}
    done = subprocess.run(_command(paper, tmp_path / "ref", extra), cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    env["PRUNE_REPRO_CACHE"] = str(tmp_path / "cache")
    run = subprocess.Popen(_command(paper, tmp_path / "res", extra), cwd=REPO_ROOT, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, saved = time.monotonic() + 600, []
    while not saved and run.poll() is None and time.monotonic() < deadline:
        saved = list((tmp_path / "cache").glob(f"**/*.resume/{loop}/state/done"))
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its worker processes, mid-stage
    run.wait()
    assert saved, f"{paper}: no {loop} state was saved before the run ended"

    again = subprocess.run(_command(paper, tmp_path / "res", extra), cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stderr, "the second run continued from the save"
    assert _measurements(tmp_path / "res", paper) == _measurements(tmp_path / "ref", paper)
    assert not list((tmp_path / "cache").glob("**/*.resume")), "finished stages leave no saved state"
