"""Independent jobs (seeds, arms, grid cells) in single-thread worker processes, results in job order.

torch on tiny models runs fastest on one thread, which leaves the second core of a 2-core machine idle. Jobs
that do not depend on each other run in ``workers`` spawned processes, each with one torch thread::

    results = map_jobs(run_seed, [(cfg, seed) for seed in cfg.seeds], workers=2, desc="seeds")

Results come back in the order of ``jobs`` whatever the number of workers, and each job seeds itself, so a
record is the same with 1 or 2 workers apart from timings (``tests/common/test_parallel.py``). ``fn`` must be
a module-level function and its arguments picklable. With ``workers <= 1`` the jobs run here, in order.
Measured latencies must not be taken while workers run: time them afterwards, in the parent, alone.

A spawned worker spends seconds importing torch and the paper's code before its first job. Inside
``with shared_workers():`` (``common.cli`` wraps every ``reproduce`` in it) the ``map_jobs`` calls of one run
share their worker processes rather than spawning new ones per call; the workers are closed when the block
ends. Jobs must not depend on what an earlier job left in a worker, which ``map_jobs`` requires anyway (a
worker runs many jobs), so sharing changes nothing but the time.

Work that is one job shared by the workers (data-parallel training of one model) runs in a process group
instead: ``run_group(train, (cfg,), workers=2)`` starts ``workers`` processes joined by a gloo group on this
machine, each calling ``train(cfg)`` with one torch thread (``torch.distributed`` gives it its rank), and returns
rank 0's result. With ``workers <= 1`` it calls ``fn`` here, on one torch thread, without a group, so a function
whose collectives combine the ranks' shares in a fixed order returns the same with 1 or N workers.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import multiprocessing
import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from . import machine
from .runtime import progress

R = TypeVar("R")


def default_workers() -> int:
    """``$PRUNE_REPRO_WORKERS`` if set, else the number of CPUs this process may use (at most 2 on CPU runs)."""
    env = os.environ.get("PRUNE_REPRO_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(2, machine.visible_cores()))


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
    if _shared is not None:
        env = _worker_env()
        key = (workers, threads_per_worker, tuple(sorted(env.items())))
        if key not in _shared:
            _shared[key] = _new_pool(workers, threads_per_worker, env)
        return _collect(_shared[key], fn, jobs, f"{desc} ({min(workers, len(jobs))} workers)")
    workers = min(workers, len(jobs))
    with _new_pool(workers, threads_per_worker, _worker_env()) as pool:
        return _collect(pool, fn, jobs, f"{desc} ({workers} workers)")


_shared: dict[tuple, futures.ProcessPoolExecutor] | None = None
"""The pools of the innermost active :func:`shared_workers` block, by (workers, threads, environment); else None."""


@contextlib.contextmanager
def shared_workers():
    """Within the block, :func:`map_jobs` calls that ask for the same workers, threads per worker and environment
    reuse one pool of worker processes (spawned when first needed, one by one as jobs arrive); on leaving it the
    pools are shut down and their processes joined (so their CPU time counts as the caller's children's). A nested
    block uses the outer one's pools."""
    global _shared
    if _shared is not None:
        yield
        return
    _shared = {}
    try:
        yield
    finally:
        pools, _shared = _shared, None
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


def _new_pool(workers: int, threads_per_worker: int, env: dict[str, str]) -> futures.ProcessPoolExecutor:
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has started torch's thread pools
    return futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(threads_per_worker, env)
    )


def _collect(pool: futures.ProcessPoolExecutor, fn: Callable[..., R], jobs: list[tuple], desc: str) -> list[R]:
    """Submit every job to ``pool``; their results in job order. On the first failure the jobs not yet started
    are cancelled and the exception is raised (jobs already running finish in the background)."""
    results: list[Any] = [None] * len(jobs)
    pending = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
    try:
        for f in progress(futures.as_completed(pending), total=len(pending), desc=desc):
            results[pending[f]] = f.result()
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    return results


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("PRUNE_REPRO_", "OMP_", "MKL_", "ATEN_", "ONEDNN_"))}


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_member(rank: int, world: int, port: int, threads: int, env: dict[str, str], fn, args, results) -> None:
    """One process of :func:`run_group`: join the group, run ``fn``, send back (rank, ok, result or traceback)."""
    _init_worker(threads, env)
    try:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        out = fn(*args)
        # as bytes: torch sends tensors through a queue as shared memory that dies with this process
        results.put((rank, True, pickle.dumps(out) if rank == 0 else None))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class GroupError(RuntimeError):
    """A process of :func:`run_group` failed (its traceback is the message)."""


def run_group(fn: Callable[..., R], args: tuple[Any, ...], workers: int = 1, threads_per_worker: int = 1) -> R:
    """``fn(*args)`` run by ``workers`` processes joined in a gloo process group; rank 0's result.

    ``fn`` must be a module-level function; it finds its rank and the group's size in ``torch.distributed`` (not
    initialised when ``workers <= 1``: then it runs here, on ``threads_per_worker`` torch threads). If a process
    fails, the others are stopped and :class:`GroupError` carries the failing process's traceback.
    """
    if workers <= 1:
        with torch_threads(threads_per_worker):
            return fn(*args)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port, env = _free_port(), _worker_env()
    procs = [ctx.Process(target=_group_member, args=(r, workers, port, threads_per_worker, env, fn, args, results),
                         daemon=True) for r in range(workers)]  # fmt: skip
    for p in procs:
        p.start()
    out, done = None, set()
    try:
        while len(done) < workers:
            try:
                rank, ok, value = results.get(timeout=1.0)
            except queue.Empty as empty:
                dead = [r for r, p in enumerate(procs) if r not in done and p.exitcode not in (None, 0)]
                if dead:
                    code = procs[dead[0]].exitcode
                    raise GroupError(f"worker {dead[0]} of {workers} died (exit code {code})") from empty
                continue
            if not ok:
                raise GroupError(f"worker {rank} of {workers} failed:\n{value}")
            done.add(rank)
            if rank == 0:
                out = pickle.loads(value)
    finally:
        for p in procs:
            if p.is_alive() and len(done) < workers:
                p.terminate()
            p.join()
    return out
