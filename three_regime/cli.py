"""Extra sub-commands for spreading the grid: ``grid`` runs one shard's cells, ``merge`` gathers caches.

On a cluster, one job-array task per shard (Slurm: ``sbatch --array=0-7``), each with its own cache::

    python -m three_regime grid --preset paper --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT \
        --set data.root=/data/cifar10 --cache-dir /scratch/cache-$SLURM_ARRAY_TASK_ID      # task i of n
    python -m three_regime merge /scratch/cache-0 /scratch/cache-1 ...   # into this machine's cache
    python -m three_regime reproduce --preset paper --set data.root=/data/cifar10   # reads every cell: the record

With a shared cache folder (``PRUNE_REPRO_CACHE``) no merge is needed. A cell already in the cache is never
recomputed, so an interrupted shard resumes where it stopped. A task with several GPUs runs its shard on all
of them under a launcher (``accelerate launch --num_processes 4 -m three_regime grid --shard i/n ...``): the
shard's jobs are dealt over the processes (``grid.run_jobs``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from common import distributed as dist
from common.config import get_preset, override
from common.runtime import ArtifactCache, select_device

from . import grid
from .config import PRESETS

log = logging.getLogger(__name__)


def configure_grid(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="mini", choices=list(PRESETS), help="which preset's grid (default: mini)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (as for reproduce)")  # fmt: skip
    parser.add_argument(
        "--shard", default=None, help="i/n: run the cells whose index mod n is i (default: from config)"
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: shard.workers)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="cache root (default: $PRUNE_REPRO_CACHE or .cache)"
    )


def grid_command(args: argparse.Namespace) -> int:
    cfg = override(get_preset(PRESETS, args.preset), args.sets)  # a ConfigError is one line, exit 2 (common.cli)
    shard = grid.parse_shard(args.shard) if args.shard else (cfg.shard.index, cfg.shard.count)
    device = dist.device() if dist.world_size() > 1 else select_device(args.device)
    if device.type == "cpu" and cfg.model.arch == "mlp_bn":
        torch.set_num_threads(1)
    cache = ArtifactCache(grid.NAMESPACE, root=args.cache_dir)
    cells = grid.run_jobs(cfg, cache, device, shard=shard, workers=args.workers or cfg.shard.workers)
    if dist.is_main():
        print(f"shard {shard[0]}/{shard[1]}: {len(cells)} cells cached in {cache.dir}")
    return 0


def configure_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", nargs="+", type=Path, help="cache roots (or their three_regime/ folders) to copy from"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="destination cache root (default: this one)")


def merge_command(args: argparse.Namespace) -> int:
    if not dist.is_main():  # under a launcher: one process copies
        return 0
    cache = ArtifactCache(grid.NAMESPACE, root=args.cache_dir)
    copied = grid.merge_caches(args.sources, cache)
    print(f"merged {copied} finished jobs into {cache.dir}")
    return 0
