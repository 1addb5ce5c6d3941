"""The grid runner: cached cells, resuming after an interruption, shards that merge to the unsharded result."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.runtime import ArtifactCache
from three_regime import cli, grid
from three_regime.config import DataConfig, GridConfig, RetrainConfig, TrainConfig, smoke


def tiny():
    cfg = smoke()
    return dataclasses.replace(
        cfg,
        data=DataConfig(dataset="mnist1d", num_samples=400),
        train=TrainConfig(epochs=2, batch_size=64, weight_decay=5e-4),
        retrain=RetrainConfig(seeds=(0, 1), epochs=1, batch_size=64, test_error_last_epochs=1),
        grid=GridConfig(training_epochs=(1, 2), densities=(10.0, 50.0)),
    )


def cache_at(path) -> ArtifactCache:
    return ArtifactCache(grid.NAMESPACE, root=path)


def _flat(results: dict) -> dict:
    return {c: (r["test_error"], [p["mc"] for p in r["pairs"]], [p["cka"] for p in r["pairs"]],
                r["achieved_density"]) for c, r in results.items()}  # fmt: skip


def test_cells_and_shards_partition_the_grid():
    cfg = tiny()
    cells = grid.grid_cells(cfg)
    assert len(cells) == len(cfg.seeds) * 2 * 2 and len(set(cells)) == len(cells)
    shards = [grid.shard_cells(cells, i, 3) for i in range(3)]
    assert sorted(c for s in shards for c in s) == sorted(cells)
    assert grid.parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError):
        grid.parse_shard("3/3")
    rho = dataclasses.replace(cfg, grid=GridConfig(temperature="sam_rho", sam_rhos=(0.1, 0.5)))
    assert grid.hot_to_cold(rho) == [0.5, 0.1]  # larger rho = hotter
    # a cell's key does not depend on the regime thresholds, the parallelism or the rest of the grid
    other = dataclasses.replace(cfg, grid=dataclasses.replace(cfg.grid, densities=(10.0, 50.0, 80.0)))
    assert grid.cell_key(cfg, cells[0]) == grid.cell_key(other, cells[0])


def test_interrupted_grid_resumes_without_recomputing_finished_cells(tmp_path, monkeypatch):
    cfg, cache = tiny(), cache_at(tmp_path / "cache")
    real_cell, real_dense = grid.compute_cell, grid.compute_dense
    calls = {"cell": 0, "dense": 0}

    def counting_cell(*args, **kwargs):
        if calls["cell"] == 2 and interrupt:
            raise KeyboardInterrupt
        calls["cell"] += 1
        return real_cell(*args, **kwargs)

    def counting_dense(*args, **kwargs):
        calls["dense"] += 1
        return real_dense(*args, **kwargs)

    monkeypatch.setattr(grid, "compute_cell", counting_cell)
    monkeypatch.setattr(grid, "compute_dense", counting_dense)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        grid.run_jobs(cfg, cache)
    assert calls == {"cell": 2, "dense": 1}
    with pytest.raises(FileNotFoundError, match="2 of 4 grid cells"):
        grid.collect(cfg, cache)
    interrupt, calls["cell"], calls["dense"] = False, 0, 0
    grid.run_jobs(cfg, cache)
    assert calls == {"cell": 2, "dense": 0}, "only the unfinished cells run; the dense run is reused"
    results = grid.collect(cfg, cache)
    assert len(results) == 4
    grid.run_jobs(cfg, cache)
    assert calls == {"cell": 2, "dense": 0}, "a finished grid computes nothing"
    for r in results.values():
        assert len(r["test_error"]) == 2 and len(r["pairs"]) == 1 and len(r["pairs"][0]["errors"]) == 5


def test_shards_merge_to_the_unsharded_result(tmp_path):
    cfg = tiny()
    torch.set_num_threads(1)  # as the `grid` command does for MLPs on the CPU: the same arithmetic, bit for bit
    grid.run_jobs(cfg, cache_at(tmp_path / "whole"))
    whole = grid.collect(cfg, cache_at(tmp_path / "whole"))
    for i in range(2):  # two "machines", each with its own cache
        assert cli.grid_command(_args(preset="smoke", sets=_sets(cfg), shard=f"{i}/2",
                                                  cache_dir=tmp_path / f"shard{i}")) == 0  # fmt: skip
    merged = cache_at(tmp_path / "merged")
    with pytest.raises(FileNotFoundError):
        grid.collect(cfg, merged)
    assert cli.merge_command(_args(sources=[tmp_path / "shard0", tmp_path / "shard1" / grid.NAMESPACE],
                                               cache_dir=tmp_path / "merged")) == 0  # fmt: skip
    assert _flat(grid.collect(cfg, merged)) == _flat(whole)
    assert grid.merge_caches([tmp_path / "shard0"], merged) == 0, "merging twice copies nothing"


@pytest.mark.slow  # spawning workers that import torch takes ~20 s on a loaded 2-core machine
def test_worker_processes_give_the_in_process_result(tmp_path):
    cfg = dataclasses.replace(tiny(), grid=GridConfig(training_epochs=(2,), densities=(10.0, 50.0)))
    # one thread here too, as in the single-thread workers: the same kernels in the same order, so the trained
    # models agree bit for bit (with other thread counts their difference after training has no useful bound)
    torch.set_num_threads(1)
    grid.run_jobs(cfg, cache_at(tmp_path / "a"), workers=1)
    grid.run_jobs(cfg, cache_at(tmp_path / "b"), workers=2)
    a, b = grid.collect(cfg, cache_at(tmp_path / "a")), grid.collect(cfg, cache_at(tmp_path / "b"))
    assert _flat(a) == _flat(b)


def _sets(cfg) -> list[str]:
    d = cfg.data
    return [f"data.num_samples={d.num_samples}", "train.epochs=2", "retrain.seeds=(0,1)", "retrain.epochs=1",
            "retrain.weight_decay=0.0001", "grid.training_epochs=(1,2)", "grid.densities=(10.0,50.0)"]  # fmt: skip


def _args(**kwargs):
    import argparse

    defaults = {"preset": "smoke", "sets": [], "shard": None, "workers": None, "device": "cpu", "cache_dir": None}
    return argparse.Namespace(**{**defaults, **kwargs})


def test_corrupt_grid_entries_are_recomputed_and_reported(tmp_path, monkeypatch, caplog):
    """The grid asks the cache ``in`` before ``load``: a damaged cell or dense run counts as missing, is reported,
    recomputed (the dense run too, when a cell to recompute needs it) and gives the same results; ``collect``
    alone names the missing cell instead of failing on the damaged file."""
    import logging

    cfg, cache = tiny(), cache_at(tmp_path / "cache")
    torch.set_num_threads(1)
    grid.run_jobs(cfg, cache)
    before = _flat(grid.collect(cfg, cache))
    cells = grid.grid_cells(cfg)
    cell_path = cache.path("cell", grid.cell_key(cfg, cells[0]))
    dense_path = cache.path("dense", grid.dense_key(cfg, grid.dense_run_id(cfg, cells[0])))
    sound = {p.name: p.read_bytes() for p in cache.dir.glob("*.pt")}

    blob = cell_path.read_bytes()
    cell_path.write_bytes(blob[:-9] + bytes([blob[-9] ^ 0xFF]) + blob[-8:])  # one flipped byte
    with caplog.at_level(logging.WARNING, logger="common.runtime"), pytest.raises(FileNotFoundError, match="1 of 4"):
        grid.collect(cfg, cache)
    assert cell_path.name in caplog.text and not cell_path.exists()

    dense_path.write_bytes(dense_path.read_bytes()[:100])  # truncated
    calls = {"cell": 0, "dense": 0}
    real_cell, real_dense = grid.compute_cell, grid.compute_dense

    def counting(kind, real):
        def fn(*args, **kwargs):
            calls[kind] += 1
            return real(*args, **kwargs)

        return fn

    monkeypatch.setattr(grid, "compute_cell", counting("cell", real_cell))
    monkeypatch.setattr(grid, "compute_dense", counting("dense", real_dense))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="common.runtime"):
        grid.run_jobs(cfg, cache)
    assert calls == {"cell": 1, "dense": 1}, "only the damaged cell, and the damaged dense run it needs"
    assert dense_path.name in caplog.text
    assert _flat(grid.collect(cfg, cache)) == before
    assert {p.name: p.read_bytes() for p in cache.dir.glob("*.pt")} == sound, "rewritten bit for bit"
