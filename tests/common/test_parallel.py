"""common.parallel: the same results, in job order, whatever the number of workers."""

from __future__ import annotations

import pytest
import torch

from common.parallel import default_workers, map_jobs

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


def test_a_failing_job_raises_in_the_parent():
    with pytest.raises(ValueError, match="job 2 failed"):
        map_jobs(failing_job, [(s,) for s in range(4)], workers=2)


def test_no_jobs_and_default_workers(monkeypatch):
    assert map_jobs(failing_job, [], workers=2) == []
    monkeypatch.setenv("PRUNE_REPRO_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.delenv("PRUNE_REPRO_WORKERS")
    assert 1 <= default_workers() <= 2
