"""``make test-gpu``: every paper's pipeline on CUDA at smoke scale, in one process and, with 2 GPUs, in two.

CI and CPU machines skip all of it (``-m 'not gpu'`` by default, and each test skips without CUDA). What a GPU
run checked, where and how long it took is recorded in the root README's "Scale-out" section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.overview import PAPERS
from common.runtime import REPO_ROOT

pytestmark = pytest.mark.gpu

CUDA = torch.cuda.is_available()
DEVICES = torch.cuda.device_count() if CUDA else 0


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRUNE_REPRO_RESULTS": str(tmp / "results"), "PRUNE_REPRO_CACHE": str(tmp / "cache"),
           "PRUNE_REPRO_PROGRESS": "0"}  # fmt: skip
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)  # fmt: skip


def _record(tmp: Path, paper: str) -> dict:
    return json.loads((tmp / "results" / paper / "smoke" / "record.json").read_text())


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("paper", [p.package for p in PAPERS])
def test_smoke_runs_on_one_gpu(paper, tmp_path):
    out = _run(["-m", paper, "reproduce", "--preset", "smoke", "--device", "cuda"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    record = _record(tmp_path, paper)
    assert record["provenance"]["device"].startswith("cuda") and record["claims"]


@pytest.mark.skipif(DEVICES < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("paper", [p.package for p in PAPERS])
def test_smoke_runs_on_two_gpus_with_bf16(paper, tmp_path):
    out = _run(["-m", "common.launch", "--nproc", "2", "--mixed-precision", "bf16", "-m", paper, "reproduce",
                "--preset", "smoke"], tmp_path)  # fmt: skip
    if out.returncode == 2 and "launcher" in out.stderr:
        pytest.skip(f"{paper} does not run under a launcher yet: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _record(tmp_path, paper)["provenance"].get("world_size") == 2
