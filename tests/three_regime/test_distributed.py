"""The grid dealt over the processes of a launcher (issue 14): 2 CPU processes (gloo) compute the 1-process grid.

Each job is computed by one process from the seeds of its own key, so on one kind of device with one thread per
job the grid is the same bit for bit, whichever process computed which job and whether the processes share a
cache folder (one machine) or not (several machines: jobs are sent between them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from common.results import load_record
from common.runtime import REPO_ROOT
from tests.three_regime.test_grid import _flat, cache_at, tiny
from three_regime import grid

pytestmark = pytest.mark.e2e  # subprocesses; `make test` skips them on its second kernel pass

TIMEOUT_S = 900  # a 2-process launch of the tiny grid: ~30 s of CPU, 5.5 min of wall time on a starved 2-core VM


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "PRUNE_REPRO_PROGRESS": "0", **extra}  # fmt: skip


@pytest.mark.timeout(TIMEOUT_S + 300)
def test_two_processes_deal_the_jobs_and_compute_the_one_process_grid(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.three_regime.distributed_grid", str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]

    torch.set_num_threads(1)  # as in the processes: the same kernels in the same order
    cfg = tiny()
    grid.run_jobs(cfg, cache_at(tmp_path / "one"))
    reference = _flat(grid.collect(cfg, cache_at(tmp_path / "one")))
    n_cells = len(grid.grid_cells(cfg))
    held = {}
    for mode in ("separate", "shared"):
        assert torch.load(tmp_path / f"{mode}-results.pt", weights_only=False) == reference, mode
        ranks = [json.loads((tmp_path / f"{mode}-rank{r}.json").read_text()) for r in (0, 1)]
        assert [r["world_size"] for r in ranks] == [2, 2]
        held[mode] = [r["held"] for r in ranks]
    # one cache per process: rank 0 trained the one dense run and computed 2 cells, rank 1 computed the other 2
    # from the dense run rank 0 sent it, then sent them to rank 0, which holds the whole grid
    assert held["separate"] == [["cell"] * n_cells + ["dense"], ["cell"] * (n_cells // 2) + ["dense"]]
    assert held["shared"] == [["cell"] * n_cells + ["dense"]] * 2  # one folder: every job once, nothing sent


@pytest.mark.slow  # `make test-slow`: two smoke runs (~5-10 min on a busy 2-core machine)
@pytest.mark.timeout(2 * TIMEOUT_S + 300)
def test_smoke_preset_under_a_two_process_launch_writes_the_one_process_record(tmp_path):
    """``python -m common.launch --nproc 2 -m three_regime reproduce --preset smoke`` (what ``make
    reproduce-three_regime PRESET=smoke NPROC=2`` runs) against the same command in one process: the same record
    apart from provenance (timings, and world_size 2 with its backend). Two dense seeds, so the dense runs too are
    dealt over the processes."""
    sets = ["--set", "data.num_samples=1000", "--set", "seeds=(0,1)"]
    records = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}"
        cmd = [sys.executable, "-m", "common.launch", "--nproc", str(nproc), "-m", "three_regime", "reproduce",
               "--preset", "smoke", "--no-readme", "--results-dir", str(out), *sets]  # fmt: skip
        env = _env(PRUNE_REPRO_CACHE=str(out / "cache"), PRUNE_REPRO_THREADS="1")
        run = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert run.returncode == 0, run.stderr[-3000:]
        records[nproc] = load_record(out / "three_regime" / "smoke")
        assert len(list((out / "cache" / grid.NAMESPACE).glob("cell-*.pt"))) == 2 * 9, "every cell once"
    provenance = records[2].provenance
    assert provenance["world_size"] == 2 and "gloo" in provenance["backend"].lower()
    assert records[1].provenance["world_size"] == 1
    one, two = (json.loads(json.dumps(r.to_json())) for r in (records[1], records[2]))
    one.pop("provenance"), two.pop("provenance")
    assert one == two
