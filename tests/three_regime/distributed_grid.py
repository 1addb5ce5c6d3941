"""Run by test_distributed.py in 2 processes (``torch.distributed.run -m tests.three_regime.distributed_grid``):
the tiny grid of test_grid.py dealt over the processes, first with one cache folder per process (as on several
machines: jobs are sent between the processes), then with one shared folder (as on one machine).

For each mode each process writes what its cache holds to ``<out>/<mode>-rank<r>.json``; rank 0 also writes
every cell's results (``<out>/<mode>-results.pt``), collected from its own cache after the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from common import distributed as dist
from common.runtime import ArtifactCache
from tests.three_regime.test_grid import _flat, tiny
from three_regime import grid


def run(out: Path, mode: str) -> None:
    root = out / ("shared" if mode == "shared" else f"{mode}-rank{dist.rank()}")
    cache = ArtifactCache(grid.NAMESPACE, root=root)
    cfg = tiny()
    grid.run_jobs(cfg, cache)
    held = sorted(p.name.split("-")[0] for p in cache.dir.glob("*.pt"))
    (out / f"{mode}-rank{dist.rank()}.json").write_text(json.dumps({"world_size": dist.world_size(), "held": held}))
    if dist.is_main():
        torch.save(_flat(grid.collect(cfg, cache)), out / f"{mode}-results.pt")
    dist.barrier()


def main(out: Path) -> None:
    torch.set_num_threads(1)  # as the reference run in the test's process: the same arithmetic, bit for bit
    for mode in ("separate", "shared"):
        run(out, mode)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
