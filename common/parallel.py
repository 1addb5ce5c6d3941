"""Independent jobs (seeds, arms, grid cells) in single-thread worker processes, results in job order.

torch on tiny models runs fastest on one thread, which leaves the second core of a 2-core machine idle. Jobs
that do not depend on each other run in ``workers`` spawned processes, each with one torch thread::

    results = map_jobs(run_seed, [(cfg, seed) for seed in cfg.seeds], workers=2, desc="seeds")

Results come back in the order of ``jobs`` whatever the number of workers, and each job seeds itself, so a
record is the same with 1 or 2 workers apart from timings (``tests/common/test_parallel.py``). ``fn`` must be
a module-level function and its arguments picklable. With ``workers <= 1`` the jobs run here, in order.
Measured latencies must not be taken while workers run: time them afterwards, in the parent, alone.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from .runtime import progress

R = TypeVar("R")


def default_workers() -> int:
    """``$PRUNE_REPRO_WORKERS`` if set, else the number of CPUs this process may use (at most 2 on CPU runs)."""
    env = os.environ.get("PRUNE_REPRO_WORKERS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


def _init_worker(threads: int, env: dict[str, str]) -> None:
    os.environ.update(env)
    torch.set_num_threads(threads)


def map_jobs(
    fn: Callable[..., R],
    jobs: Sequence[tuple[Any, ...]],
    workers: int = 1,
    desc: str = "jobs",
    threads_per_worker: int = 1,
) -> list[R]:
    """``[fn(*job) for job in jobs]``, in ``workers`` processes when ``workers > 1``; results in job order.

    The first exception of a job is raised here (the other jobs are cancelled), with the worker's traceback
    attached as its cause.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    if workers <= 1 or len(jobs) == 1:
        return [fn(*job) for job in progress(jobs, desc=desc)]
    workers = min(workers, len(jobs))
    env = {k: v for k, v in os.environ.items() if k.startswith(("PRUNE_REPRO_", "OMP_", "MKL_", "ATEN_", "ONEDNN_"))}
    ctx = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(jobs)
    with futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(threads_per_worker, env)
    ) as pool:
        pending = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            for f in progress(futures.as_completed(pending), total=len(pending), desc=f"{desc} ({workers} workers)"):
                results[pending[f]] = f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    return results
