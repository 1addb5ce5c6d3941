"""common.parallel: the same results, in job order, whatever the number of workers."""

from __future__ import annotations

import os
import time

import pytest
import torch

from common.parallel import GroupError, default_workers, map_jobs, run_group, shared_workers

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


def seeded_job(seed: int, size: int) -> tuple[int, list[float], int]:
    """A job that seeds itself, as every worker job must; also reports its torch thread count."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(size, size, generator=g)
    x = torch.randn(4, size, generator=g)
    return seed, (x @ w).sum(dim=1).tolist(), torch.get_num_threads()


def failing_job(seed: int) -> int:
    if seed == 2:
        raise ValueError(f"job {seed} failed")
    return seed


def test_two_workers_give_the_one_worker_results_in_order():
    jobs = [(s, 16) for s in (5, 3, 9, 1)]
    one = map_jobs(seeded_job, jobs, workers=1)
    two = map_jobs(seeded_job, jobs, workers=2)
    assert [r[:2] for r in one] == [r[:2] for r in two]  # bit-identical: same kernels, same thread count
    assert [r[0] for r in two] == [5, 3, 9, 1]
    assert all(r[2] == 1 for r in two)  # each worker runs one torch thread


def pid_job(seed: int) -> int:
    time.sleep(0.2)  # long enough that both workers take a job
    return os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_calls_inside_shared_workers_reuse_one_set_of_processes_closed_at_the_end():
    """Inside ``shared_workers`` every call (and a nested block) runs in the first call's processes, a failing job
    still raises, and the processes are gone after the block (outside one, each call starts its own: the tests
    above and below)."""
    with shared_workers():
        first = map_jobs(pid_job, [(s,) for s in range(4)], workers=2)
        second = map_jobs(pid_job, [(s,) for s in range(4)], workers=2)
        with shared_workers():  # nested: the outer block's workers
            third = map_jobs(pid_job, [(s,) for s in range(2)], workers=2)
        # a failing job raises here, and leaves the shared workers usable for the next call
        with pytest.raises(ValueError, match="job 2 failed"):
            map_jobs(failing_job, [(s,) for s in range(4)], workers=2)
        fourth = map_jobs(pid_job, [(s,) for s in range(4)], workers=2)
        assert os.getpid() not in first and len(set(first)) <= 2
        assert set(second) <= set(first) and set(third) <= set(first) and set(fourth) <= set(first)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in set(first)) and time.monotonic() < deadline:
        time.sleep(0.05)  # joined on leaving the block; a reaped pid can only be reused, not left running
    assert not any(_alive(p) for p in set(first))


def test_no_jobs_and_default_workers(monkeypatch):
    assert map_jobs(failing_job, [], workers=2) == []
    monkeypatch.setenv("PRUNE_REPRO_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.delenv("PRUNE_REPRO_WORKERS")
    assert 1 <= default_workers() <= 2


def group_job(fail_rank: int) -> dict:
    """Each rank contributes its rank; rank ``fail_rank`` raises instead (none when -1)."""
    group = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if group else (0, 1)
    if rank == fail_rank:
        raise ValueError(f"rank {rank} failed")
    x = torch.tensor([float(rank + 1)])
    if group:
        torch.distributed.all_reduce(x)
    return {"rank": rank, "world": world, "sum": x.item(), "threads": torch.get_num_threads()}


def test_a_group_returns_rank_0s_result_and_one_worker_runs_here_on_one_thread():
    assert run_group(group_job, (-1,), workers=2) == {"rank": 0, "world": 2, "sum": 3.0, "threads": 1}
    before = torch.get_num_threads()
    assert run_group(group_job, (-1,), workers=1) == {"rank": 0, "world": 1, "sum": 1.0, "threads": 1}
    assert torch.get_num_threads() == before  # restored


def test_a_failing_group_member_raises_with_its_traceback():
    with pytest.raises(GroupError, match=r"worker 1 of 2 failed(.|\n)*rank 1 failed"):
        run_group(group_job, (1,), workers=2)
