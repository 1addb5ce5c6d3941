"""Two launched CPU processes (gloo) write the record of one process (issue 14), fast enough for ``make test``.

The collapse regime (the synthetic MLP) at a size below smoke: one pre-training job and four pruning jobs (one per
fine-tune), which the ranks split (:func:`darex.reproduce._run_jobs`): rank 0 pre-trains, each rank fine-tunes and
prunes two of the models from the shared cache, and every rank receives every result. A job seeds itself and runs
on one thread wherever it runs, so rank 0's record equals the one-process record field for field (measurements,
every mask's chosen q, claims) apart from timings and provenance. The whole smoke preset launched the same way is
``tests/darex/test_reproduce.py::test_two_launched_processes_write_the_record_of_one`` (slow).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from common.launch import build_command
from common.runtime import REPO_ROOT
from darex.regimes import SYNTHETIC, q_table
from tests.darex.test_reproduce import _comparable
from tests.test_cli import run_cli

pytestmark = pytest.mark.e2e  # a launched subprocess; `make test` skips it on its second kernel pass

TINY = ["experiment=synthetic", "synthetic.hidden=16", "synthetic.n_pretrain=512", "synthetic.pretrain_steps=30",
        "synthetic.n_finetune=256", "synthetic.finetune_steps=20", "synthetic.batch_size=64", "synthetic.n_val=100",
        "synthetic.n_test=200", "synthetic.n_unlabelled=32"]  # fmt: skip
"""Smoke's collapse regime, smaller: its 4 masks, 2 rates and q searches, on a 16-wide MLP trained a few steps."""


@pytest.mark.timeout(900)  # ~20 s of 2 idle cores (torch imported in 3 processes); minutes niced beside other jobs
def test_two_launched_processes_write_the_record_of_one(tmp_path, monkeypatch):
    sets = [a for s in TINY for a in ("--set", s)]
    args = ["reproduce", "--preset", "smoke", "--no-readme", *sets]
    monkeypatch.setenv("PRUNE_REPRO_WORKERS", "1")  # every job in this process, on one thread (as run_job sets)
    monkeypatch.setenv("PRUNE_REPRO_CACHE", str(tmp_path / "cache1"))
    assert run_cli(*args, "--results-dir", str(tmp_path / "one")) == 0
    # Their own empty cache, so the two processes train the models too; 2 workers asked, 1 per rank used.
    env = {"PRUNE_REPRO_CACHE": str(tmp_path / "cache2"), "PRUNE_REPRO_WORKERS": "2", "CUDA_VISIBLE_DEVICES": ""}
    # What `python -m common.launch --nproc 2 -m darex ...` runs on a machine without CUDA (torch's launcher, gloo),
    # without the process of common.launch itself (one torch import less: seconds on this test's clock).
    cmd, launch_env = build_command(
        2, ["-m", "darex", *args, "--results-dir", str(tmp_path / "two")], cuda_devices=0, mixed_precision="no"
    )
    env = {**os.environ, **launch_env, **env, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stderr[-4000:]

    one_dir, two_dir = (tmp_path / name / "darex" / "smoke" for name in ("one", "two"))
    two = json.loads((two_dir / "record.json").read_text())
    assert two["provenance"]["world_size"] == 2 and "gloo" in two["provenance"]["backend"].lower()
    assert two["extra"]["workers"] == 1 and two["extra"]["regimes"] == [SYNTHETIC]
    one = json.loads((one_dir / "record.json").read_text())
    assert one["provenance"]["world_size"] == 1 and one["extra"]["workers"] == 1
    assert len(list((tmp_path / "cache2").rglob("finetuned-*.pt"))) == 4, "the ranks trained every fine-tune once"
    chosen_q = [m for m in two["measurements"] if m["table"] == q_table(SYNTHETIC)]
    assert chosen_q and all(len(m["values"]) == 4 for m in chosen_q if "per mask" in m["setting"])
    assert [c["id"] for c in two["claims"]] == [f"C{i}-mlp" for i in range(1, 6)]
    assert _comparable(two_dir) == _comparable(one_dir)  # measurements (q included), claims, extra: equal
