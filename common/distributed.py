"""Data-parallel scale-out on accelerate: one process per device, started by ``accelerate launch``.

``make reproduce-<paper> PRESET=paper NPROC=8`` runs ``accelerate launch --num_processes 8 -m <paper> reproduce``
(``--cpu`` and gloo where there is no GPU). Without a launcher the world has one process and every function
here is a no-op, so one code path serves a laptop, CI and a node of GPUs::

    from common import distributed as dist
    my_prompts = dist.shard(prompts)                 # rank r takes items r, r + N, r + 2N, ...
    score = dist.all_reduce(score, op="mean")        # an expectation over batches, equal on every rank
    rows = dist.gather_objects(my_rows)              # a list of every rank's rows, on every rank
    if dist.is_main(): write(...)                    # only rank 0 writes records, tables, figures and caches

The state is accelerate's ``PartialState`` (created on first use; it reads the launcher's environment).
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_LAUNCH_VARS = ("WORLD_SIZE", "ACCELERATE_DYNAMO_BACKEND", "LOCAL_RANK")


def launched() -> bool:
    """Whether this process was started by a distributed launcher (``accelerate launch``, ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@functools.cache
def state():
    """accelerate's ``PartialState``; ``cpu=True`` when the launcher asked for CPU processes."""
    from accelerate import PartialState

    return PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"))


def world_size() -> int:
    return state().num_processes if launched() else 1


def rank() -> int:
    return state().process_index if launched() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This rank's device (``cuda:<local rank>`` on GPUs, ``cpu`` for gloo processes)."""
    return state().device


def barrier() -> None:
    if world_size() > 1:
        state().wait_for_everyone()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th one from position ``rank`` (all of them on 1)."""
    return list(items)[rank() :: world_size()]


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The sum (or mean) of ``tensor`` over ranks, returned on every rank (a new tensor; float64 stays float64)."""
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
    if world_size() == 1:
        return tensor.clone()
    out = tensor.detach().clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out / world_size() if op == "mean" else out


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a mask chosen on rank 0)."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def _accelerators_used(run_device: torch.device | str | None) -> set[str]:
    """This process's accelerator devices, as ``"cuda:0"``: its run device (unless ``cpu``) and every CUDA device
    on which its caching allocator holds or held memory (a model spread over GPUs with ``device_map``)."""
    used: set[str] = set()
    if run_device is not None and torch.device(run_device).type != "cpu":
        d = torch.device(run_device)
        index = d.index if d.index is not None else (torch.cuda.current_device() if d.type == "cuda" else 0)
        used.add(f"{d.type}:{index}")
    if torch.cuda.is_initialized():  # never initialises CUDA itself
        for i in range(torch.cuda.device_count()):
            if torch.cuda.memory_reserved(i) > 0 or torch.cuda.max_memory_reserved(i) > 0:
                used.add(f"cuda:{i}")
    return used


def describe(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a record's provenance says about the process group and the devices it ran on.

    ``world_size``: the number of processes. ``num_devices``: the number of distinct accelerator devices used by
    all processes together (per machine and device index, so 2 nodes of 8 GPUs give 16); 0 when every process ran
    on the CPU, where ``world_size`` is the number of CPU processes. ``device_type``: ``cuda`` (also ROCm), another
    accelerator's type, or ``cpu``. A process's devices are its run device (the launcher's under a launcher, else
    ``device`` when given) and the CUDA devices its allocator used. Under a launcher this is a collective: call it
    on every rank.
    """
    if world_size() == 1:
        used = _accelerators_used(device)
        out: dict[str, Any] = {"world_size": 1}
    else:
        run_device = state().device if device is None else device
        mine = [f"{socket.gethostname()}/{d}" for d in sorted(_accelerators_used(run_device))]
        used = {d for theirs in gather_objects(mine) for d in theirs}  # the same GPU named twice counts once
        out = {
            "world_size": world_size(),
            "backend": str(state().backend),
            "distributed_type": str(state().distributed_type),
        }
    types = sorted({d.rsplit("/", 1)[-1].split(":")[0] for d in used})
    out["num_devices"] = len(used)
    out["device_type"] = ",".join(types) if types else "cpu"
    return out


def _selftest() -> None:
    """``accelerate launch --cpu --num_processes 2 -m common.distributed``: prints what each rank sees (tests)."""
    x = torch.arange(4, dtype=torch.float64) + rank()
    out = {
        "rank": rank(),
        "world_size": world_size(),
        "sum": all_reduce(x).tolist(),
        "mean": all_reduce(x, op="mean").tolist(),
        "gathered": gather_objects({"rank": rank()}),
        "shard": shard(list(range(7))),
        "broadcast": broadcast_object(f"from rank {rank()}"),
        "describe": describe(),
    }
    barrier()
    # one write(2) per rank: the ranks share the pipe, and a print may split text and newline into two writes
    os.write(1, ("SELFTEST " + json.dumps(out) + "\n").encode())
    if world_size() > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _selftest()
