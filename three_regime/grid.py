"""The temperature x density grid as independent, cached jobs that resume, shard and merge.

Two kinds of job, each cached on its own (``common.runtime.ArtifactCache``, keyed by the part of the
config that determines it, so a finished job is never recomputed):

* ``dense``: one dense training run of one seed. For temperature = training epochs a single run yields every
  checkpoint; for batch size and SAM rho each temperature value is its own run.
* ``cell``: one (temperature, density, dense seed): prune once, retrain under every retraining seed with the
  mask fixed, then LMC (training error, BN re-estimated at every point) and CKA on every retrained pair.

``run_jobs(cfg, cache, shard=(i, n))`` runs the cells whose position in :func:`grid_cells` is ``i mod n``
(and the dense runs they need), in ``workers`` single-thread processes; ``merge_caches`` copies finished
jobs of other machines into this cache; :func:`collect` reads every cell (failing if one is missing).

Under a distributed launcher (``make reproduce-three_regime NPROC=N``, ``accelerate launch``; the processes of
``common.distributed``) the shard's jobs are dealt over the N processes, one per GPU: first the missing dense
runs, then the missing cells, each to one process, round robin. A process that needs a dense run another one
trained reads it from the cache, or, where the processes do not share a cache folder (several machines), gets it
sent; every finished cell reaches rank 0's cache the same way, and rank 0 alone goes on to write the record.
Each job is computed by one process with the seeds of its own key, so the grid is the one a single process
computes (bit for bit on the same kind of device and thread count).
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import logging
import multiprocessing
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from common import distributed as dist
from common.config import ConfigError, to_dict
from common.errors import PathNotFoundError
from common.runtime import ArtifactCache, progress, seed_everything

from . import method
from .config import ThreeRegimeConfig
from .data import Data, load_data
from .models import build_model
from .train import Schedule, error_rate, outputs, reestimate_bn, train

log = logging.getLogger(__name__)

NAMESPACE = "three_regime"
JOB_FORMAT = 1
"""Bump when the code changes what a dense or cell job produces, so cached jobs are not reused."""


@dataclass(frozen=True, order=True)
class Cell:
    seed: int
    temperature: float
    density: float


def temperatures(cfg: ThreeRegimeConfig) -> tuple[float, ...]:
    """The temperature values in the config's order."""
    g = cfg.grid
    return {"training_epochs": g.training_epochs, "batch_size": g.batch_sizes, "sam_rho": g.sam_rhos}[g.temperature]


def hot_to_cold(cfg: ThreeRegimeConfig) -> list[float]:
    """Temperature values ordered hottest first: fewer epochs, smaller batches, larger rho are hotter."""
    values = sorted(temperatures(cfg))
    return values[::-1] if cfg.grid.temperature == "sam_rho" else values


def grid_cells(cfg: ThreeRegimeConfig) -> list[Cell]:
    """Every cell, in a fixed order (the order shards are dealt from)."""
    return [Cell(s, t, d) for s in cfg.seeds for t in hot_to_cold(cfg) for d in cfg.grid.densities]


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count}: need 0 <= index < count")
    return [c for k, c in enumerate(cells) if k % count == index]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return i, n


# ----------------------------------------------------------------------------------------------------
# Keys: what determines each job


def dense_run_id(cfg: ThreeRegimeConfig, cell: Cell) -> Any:
    """Dense runs shared by cells: one per seed for training epochs, one per (seed, value) otherwise."""
    return (cell.seed,) if cfg.grid.temperature == "training_epochs" else (cell.seed, cell.temperature)


LEGACY_DEFAULTS = {
    "data": {"crop_fill": "mean"},
    "model": {"shortcut_input": "preact"},
    "metrics": {"bn_batch_size": 512, "bn_weighting": "batch"},
}
"""Fields added after jobs were cached (issue 13), with the value that computes what was computed before them:
at that value a field is left out of the job keys, so the caches of ``smoke`` and ``mini`` stay valid."""


def _key_config(cfg: ThreeRegimeConfig) -> dict[str, Any]:
    c = to_dict(cfg)
    for section, fields in LEGACY_DEFAULTS.items():
        for name, value in fields.items():
            if c[section].get(name) == value:
                del c[section][name]
    return c


def dense_key(cfg: ThreeRegimeConfig, run_id: tuple) -> dict[str, Any]:
    c = _key_config(cfg)
    key = {k: c[k] for k in ("data", "model", "train")}
    key.update(temperature=cfg.grid.temperature, run=list(run_id), format=JOB_FORMAT)
    if cfg.grid.temperature == "training_epochs":
        key["checkpoints"] = sorted(cfg.grid.training_epochs)
    return key


def cell_key(cfg: ThreeRegimeConfig, cell: Cell) -> dict[str, Any]:
    c = _key_config(cfg)
    key = {k: c[k] for k in ("data", "model", "train", "prune", "retrain", "metrics")}
    key.update(temperature=cfg.grid.temperature, cell=[cell.seed, cell.temperature, cell.density], format=JOB_FORMAT)
    return key


# ----------------------------------------------------------------------------------------------------
# The jobs


def dense_schedule(cfg: ThreeRegimeConfig, temperature: float | None) -> Schedule:
    t = cfg.train
    batch_size, rho = t.batch_size, (t.sam_rho if t.optimizer == "sam" else 0.0)
    if cfg.grid.temperature == "batch_size":
        batch_size = int(temperature)
    if cfg.grid.temperature == "sam_rho":
        rho = float(temperature)
    return Schedule(t.epochs, batch_size, t.lr, t.momentum, t.weight_decay, t.lr_decay_at, t.lr_decay,
                    t.iterations, rho, t.sam_adaptive)  # fmt: skip


def retrain_schedule(cfg: ThreeRegimeConfig) -> Schedule:
    r = cfg.retrain
    return Schedule(r.epochs, r.batch_size, r.lr, r.momentum, r.weight_decay, r.lr_decay_at, r.lr_decay, r.iterations)


def compute_dense(cfg: ThreeRegimeConfig, run_id: tuple, data: Data, device: torch.device) -> dict[str, Any]:
    """``{"states": {temperature: state_dict}, "test_error": {...}, "train_error": {...}}`` of one dense run."""
    seed = run_id[0]
    temperature = run_id[1] if len(run_id) > 1 else None
    seed_everything(seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    states: dict[float, dict[str, torch.Tensor]] = {}
    schedule = dense_schedule(cfg, temperature)
    where = f"three_regime dense training, seed {seed}" + (
        f", {cfg.grid.temperature} = {temperature:g}" if temperature is not None else ""
    )
    if cfg.grid.temperature == "training_epochs":
        checkpoints = sorted(int(e) for e in cfg.grid.training_epochs)
        if checkpoints[-1] > schedule.epochs:
            raise ConfigError(f"checkpoint epoch {checkpoints[-1]} beyond train.epochs={schedule.epochs}")
        train(model, data, schedule, seed, checkpoint_epochs=checkpoints, where=where,
              on_checkpoint=lambda e, s: states.__setitem__(float(e), {k: v.cpu() for k, v in s.items()}))  # fmt: skip
    else:
        train(model, data, schedule, seed, where=where)
        states[float(temperature)] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    test_error, train_error = {}, {}
    for t, state in states.items():
        model.load_state_dict(state)
        test_error[t] = error_rate(model, data.x_test, data.y_test)
        train_error[t] = error_rate(model, data.x_train, data.y_train)
    return {"states": states, "test_error": test_error, "train_error": train_error}


def compute_cell(cfg: ThreeRegimeConfig, cell: Cell, dense: dict[str, Any], data: Data, device: torch.device) -> dict:
    """Prune the dense checkpoint once, retrain it under each retraining seed, measure every pair."""
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    model.load_state_dict(dense["states"][float(cell.temperature)])
    masks = method.magnitude_masks(model, cell.density / 100.0, cfg.prune.scope, cfg.prune.prune_classifier)
    method.apply_masks(model, masks)
    pruned_state = {k: v.clone() for k, v in model.state_dict().items()}
    density = method.achieved_density(model, masks)
    r = cfg.retrain
    schedule = retrain_schedule(cfg)
    last = min(r.test_error_last_epochs, r.epochs) if r.iterations == 0 else 1
    states, test_errors, final_errors = [], [], []
    for s in r.seeds:
        model.load_state_dict(pruned_state)
        seed_everything(s)
        where = (f"three_regime retraining of the cell (dense seed {cell.seed}, {cfg.grid.temperature} = "
                 f"{cell.temperature:g}, density {cell.density:g}%), retraining seed {s}")  # fmt: skip
        log_ = train(model, data, schedule, seed=s * 1000 + cell.seed, masks=masks, eval_last_epochs=last,
                     where=where)  # fmt: skip
        test_errors.append(sum(log_.test_error.values()) / len(log_.test_error))
        final_errors.append(error_rate(model, data.x_test, data.y_test))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    m = cfg.metrics
    n_lmc = len(data.x_train) if m.lmc_samples <= 0 else min(m.lmc_samples, len(data.x_train))
    x_lmc, y_lmc = data.x_train[:n_lmc], data.y_train[:n_lmc]
    x_cka = data.x_train[: min(m.cka_samples, len(data.x_train))]

    def error_at(net: torch.nn.Module) -> float:
        if m.lmc_bn_reestimate:
            reestimate_bn(net, x_lmc, batch_size=m.bn_batch_size, weighting=m.bn_weighting)
        return error_rate(net, x_lmc, y_lmc)

    feats = []
    for state in states:
        model.load_state_dict(state)
        out = outputs(model, x_cka)
        feats.append(out.softmax(1) if m.cka_features == "softmax" else out)
    pairs = []
    for a, b in combinations(range(len(states)), 2):
        lmc = method.linear_mode_connectivity(model, states[a], states[b], error_at, m.lmc_points)
        cka = method.linear_cka(feats[a], feats[b], debiased=m.cka_debiased)
        pairs.append({"seeds": [r.seeds[a], r.seeds[b]], "mc": lmc.mc, "errors": lmc.errors, "cka": cka})
    return {
        "cell": [cell.seed, cell.temperature, cell.density],
        "achieved_density": density,
        "dense_test_error": dense["test_error"][float(cell.temperature)],
        "dense_train_error": dense["train_error"][float(cell.temperature)],
        "test_error": test_errors,
        "final_test_error": final_errors,
        "pairs": pairs,
    }


# ----------------------------------------------------------------------------------------------------
# Running jobs, in this process or in single-thread worker processes

_DATA: dict[Any, Data] = {}


def _data(cfg: ThreeRegimeConfig, device: torch.device) -> Data:
    key = (str(to_dict(cfg.data)), str(device))
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_data(cfg.data).to(device)
    return _DATA[key]


def dense_job(cfg: ThreeRegimeConfig, run_id: tuple, cache_root: Path, device: str) -> str:
    cache = ArtifactCache(NAMESPACE, root=cache_root)
    key = dense_key(cfg, run_id)
    if ("dense", key) not in cache:
        cache.save("dense", key, compute_dense(cfg, run_id, _data(cfg, torch.device(device)), torch.device(device)))
    return str(run_id)


def cell_job(cfg: ThreeRegimeConfig, cell: Cell, cache_root: Path, device: str) -> Cell:
    cache = ArtifactCache(NAMESPACE, root=cache_root)
    key = cell_key(cfg, cell)
    if ("cell", key) not in cache:
        dev = torch.device(device)
        dense = cache.load("dense", dense_key(cfg, dense_run_id(cfg, cell)))
        cache.save("cell", key, compute_cell(cfg, cell, dense, _data(cfg, dev), dev))
    return cell


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_pool(
    cfg: ThreeRegimeConfig, todo_dense: list[tuple], todo_cells: list[Cell], root: Path, device: str, workers: int
) -> None:
    """Dense runs and cells in one pool of ``workers`` single-thread processes.

    A cell is submitted as soon as the dense run it prunes is in the cache, so cells of one seed start while
    another seed's dense run still trains (no worker waits for the slowest dense run), and the workers are
    spawned, and generate the data, once for both kinds of job.
    """
    waiting: dict[tuple, list[Cell]] = {}
    ready: list[Cell] = []
    for c in todo_cells:
        run_id = dense_run_id(cfg, c)
        (waiting.setdefault(run_id, []) if run_id in todo_dense else ready).append(c)
    ctx = multiprocessing.get_context("spawn")
    bar = progress(total=len(todo_dense) + len(todo_cells), desc=f"dense runs and cells ({workers} workers)")
    with futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(1,)) as pool:
        pending = {pool.submit(dense_job, cfg, r, root, device): ("dense", r) for r in todo_dense}
        pending.update({pool.submit(cell_job, cfg, c, root, device): ("cell", c) for c in ready})
        try:
            while pending:
                done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                for f in sorted(done, key=lambda f: pending[f][0] != "dense"):
                    kind, item = pending.pop(f)
                    f.result()
                    bar.update(1)
                    if kind == "dense":
                        for c in waiting.pop(item, []):
                            pending[pool.submit(cell_job, cfg, c, root, device)] = ("cell", c)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        finally:
            bar.close()


def run_jobs(
    cfg: ThreeRegimeConfig,
    cache: ArtifactCache,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    phase: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> list[Cell]:
    """Compute the missing dense runs and cells of ``shard``; return the shard's cells. Finished jobs are skipped.

    ``phase(name)`` (e.g. ``RunContext.phase``) times the stages. In this process (``workers <= 1``): "data"
    (loading the data set), "grid: dense runs", then "grid: cells". With worker processes the two kinds of
    job overlap (:func:`_run_in_pool`), so their time is one phase, "grid: dense runs and cells (workers)".
    Under a launcher with N > 1 processes the jobs are dealt over them (:func:`_run_distributed`); on the CPU
    each process then runs ``workers // N`` worker processes (at least 1), so the machine holds ``workers``.
    """
    phase = phase or (lambda name: contextlib.nullcontext())
    cells = shard_cells(grid_cells(cfg), *shard)
    if dist.world_size() > 1:
        if torch.device(device).type == "cpu":
            workers = max(1, workers // dist.world_size())
        _run_distributed(cfg, cache, device, cells, workers, phase, shard)
        return cells
    root = cache.dir.parent
    todo_cells = [c for c in cells if ("cell", cell_key(cfg, c)) not in cache]
    run_ids = sorted({dense_run_id(cfg, c) for c in todo_cells})
    todo_dense = [r for r in run_ids if ("dense", dense_key(cfg, r)) not in cache]
    start = time.perf_counter()
    log.info("shard %d/%d: %d cells (%d to compute), %d dense runs to compute, %d workers",
             *shard, len(cells), len(todo_cells), len(todo_dense), workers)  # fmt: skip
    _compute(cfg, todo_dense, todo_cells, root, str(device), workers, phase)
    log.info("shard %d/%d done in %.1f s", *shard, time.perf_counter() - start)
    return cells


def _compute(
    cfg: ThreeRegimeConfig,
    todo_dense: list[tuple],
    todo_cells: list[Cell],
    root: Path,
    device: str,
    workers: int,
    phase: Callable[[str], contextlib.AbstractContextManager],
) -> None:
    """The given jobs, in ``workers`` processes (dense runs and cells overlapping) or in this one."""
    if workers > 1 and len(todo_dense) + len(todo_cells) > 1:
        with phase("grid: dense runs and cells (workers)"):
            _run_in_pool(cfg, todo_dense, todo_cells, root, device, workers)
        return
    if todo_dense or todo_cells:
        with phase("data"):
            _data(cfg, torch.device(device))  # what the first job would load; the in-process jobs reuse it
    with phase("grid: dense runs"):
        for r in progress(todo_dense, desc="dense"):
            dense_job(cfg, r, root, device)
    with phase("grid: cells"):
        for c in progress(todo_cells, desc="cells"):
            cell_job(cfg, c, root, device)


def _run_distributed(
    cfg: ThreeRegimeConfig,
    cache: ArtifactCache,
    device: torch.device | str,
    cells: list[Cell],
    workers: int,
    phase: Callable[[str], contextlib.AbstractContextManager],
    shard: tuple[int, int],
) -> None:
    """The jobs of ``cells`` dealt over the launcher's processes; every process must call it (collectives).

    1. Every process says which of the shard's cells and dense runs its cache holds; a job held by any process
       is done. The others are dealt round robin: the missing dense runs of the missing cells, then the cells.
    2. Each process trains its dense runs; each one then holds the dense runs its own cells prune (read from a
       shared cache, or sent by the process that has it).
    3. Each process computes its cells; rank 0 then holds every cell of the shard (sent where not shared).
    """
    rank, world = dist.rank(), dist.world_size()
    root = cache.dir.parent
    run_ids = sorted({dense_run_id(cfg, c) for c in cells})
    cell_keys = [cell_key(cfg, c) for c in cells]
    dense_keys = [dense_key(cfg, r) for r in run_ids]
    held = dist.gather_objects(
        ([i for i, k in enumerate(cell_keys) if ("cell", k) in cache],
         [j for j, k in enumerate(dense_keys) if ("dense", k) in cache])
    )  # fmt: skip
    cell_holder: dict[int, int] = {}
    dense_holder: dict[int, int] = {}
    for r, (have_cells, have_dense) in enumerate(held):
        for i in have_cells:
            cell_holder.setdefault(i, r)
        for j in have_dense:
            dense_holder.setdefault(j, r)
    todo_cells = [i for i in range(len(cells)) if i not in cell_holder]
    needed = sorted({run_ids.index(dense_run_id(cfg, cells[i])) for i in todo_cells})
    todo_dense = [j for j in needed if j not in dense_holder]
    dense_holder.update({j: k % world for k, j in enumerate(todo_dense)})
    cell_holder.update({i: k % world for k, i in enumerate(todo_cells)})
    my_dense = [run_ids[j] for j in todo_dense[rank::world]]
    my_cells = [cells[i] for i in todo_cells[rank::world]]
    start = time.perf_counter()
    log.info("shard %d/%d, process %d of %d: %d cells of %d to compute here (%d in all), %d dense runs of %d, "
             "%d workers", *shard, rank, world, len(my_cells), len(cells), len(todo_cells), len(my_dense),
             len(todo_dense), workers)  # fmt: skip
    _compute(cfg, my_dense, [], root, str(device), workers, phase)
    with phase("grid: exchange between processes"):
        mine = {run_ids.index(dense_run_id(cfg, c)) for c in my_cells}
        sent = _share(cache, "dense", dense_keys, dense_holder, needed_here=mine)
    _compute(cfg, [], my_cells, root, str(device), workers, phase)
    with phase("grid: exchange between processes"):
        everything_on_rank_0 = set(range(len(cells))) if rank == 0 else set()
        sent += _share(cache, "cell", cell_keys, cell_holder, needed_here=everything_on_rank_0)
    log.info("shard %d/%d, process %d of %d done in %.1f s (%d jobs sent between processes)",
             *shard, rank, world, time.perf_counter() - start, sent)  # fmt: skip


def _share(cache: ArtifactCache, tag: str, keys: list, holder: dict[int, int], needed_here: set[int]) -> int:
    """Every process ends with the jobs ``needed_here`` in its cache: each one some process lacks is sent by the
    process that ``holder`` names (nothing is sent where the processes share one cache folder). Collective."""
    lacking = sorted(i for i in needed_here if (tag, keys[i]) not in cache)
    wanted = sorted({i for lacks in dist.gather_objects(lacking) for i in lacks})
    for i in wanted:
        src = holder[i]
        value = dist.broadcast_object(cache.load(tag, keys[i]) if dist.rank() == src else None, src=src)
        if i in lacking:
            cache.save(tag, keys[i], value)
    return len(wanted)


def collect(cfg: ThreeRegimeConfig, cache: ArtifactCache) -> dict[Cell, dict]:
    """Every cell's result; a missing cell is a PathNotFoundError naming it (run the shards, then merge)."""
    cells = grid_cells(cfg)
    missing = [c for c in cells if ("cell", cell_key(cfg, c)) not in cache]
    if missing:
        raise PathNotFoundError(
            f"{len(missing)} of {len(cells)} grid cells are not in {cache.dir} (e.g. {missing[0]}): run every "
            "shard (`python -m three_regime grid --shard i/n`) and merge their caches (`python -m three_regime merge`)"
        )
    return {c: cache.load("cell", cell_key(cfg, c)) for c in cells}


def merge_caches(sources: list[Path], dest: ArtifactCache) -> int:
    """Copy the finished jobs of other caches (their ``three_regime/`` folders or parents) into ``dest``."""
    copied = 0
    dest.dir.mkdir(parents=True, exist_ok=True)
    for src in sources:
        src = Path(src)
        folder = src / NAMESPACE if (src / NAMESPACE).is_dir() else src
        if not folder.is_dir():
            raise PathNotFoundError(f"merge: no cache folder at {src}")
        for path in sorted(folder.glob("*.pt")):
            if path.name.startswith(("cell-", "dense-")) and not (dest.dir / path.name).exists():
                shutil.copy2(path, dest.dir / path.name)
                copied += 1
    return copied
