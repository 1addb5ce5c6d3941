"""Run under ``torch.distributed.run --nproc_per_node 2 -m tests.nvit.ddp_probe`` (or called in one process): the
data-parallel pieces of nvit on a tiny ViT, reported as one JSON line by rank 0 (tests/nvit/test_distributed.py).

- the Hessian-aware score of one global batch (float64), each process computing on its share of the batch;
- a short pruning run (float32): the groups pruned at each step (the snapshot dims) and the loss history;
- the top-1 of the pruned model on a test set split over the processes.
"""

from __future__ import annotations

import json
import os

import torch
from torch.utils.data import TensorDataset

from common import distributed
from nvit.config import KDConfig
from nvit.latency import analytic_table
from nvit.method import SaliencyAccumulator
from nvit.prune import PruneSettings, prune
from nvit.train import backward_accumulated, batches, evaluate, kd_objective

GLOBAL_BATCH = 16


def data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 2, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g))


def probe() -> dict:
    from tests.nvit.test_models import tiny

    out = {"world_size": distributed.world_size()}
    # (1) the score of one global batch, float64
    model, teacher = tiny().double(), tiny().double().eval()
    x, y = next(batches(data(), GLOBAL_BATCH, 0))
    kd = KDConfig()

    def loss_fn(a, b, _t, m=model):
        return kd_objective(m, a.double(), b, teacher=teacher, kl_coeff=1.0, tau=2.0, kd=kd)

    acc = SaliencyAccumulator("hessian", divisors=(12.0, 12.0, 2.0, 2.0, 1.0), weights="official")
    out["loss"] = backward_accumulated(model, x, y, None, loss_fn)
    acc.add_batch(model)
    out["scores"] = {f"{k[0]}{'' if k[1] is None else k[1]}": v.tolist() for k, v in acc.step_scores(model).items()}

    # (2) a short pruning run, float32 (each process on its share of every batch)
    torch.manual_seed(0)
    student, teacher = tiny(), tiny().eval()
    d = student.dims
    lut = analytic_table(((4, d.emb), (1, max(d.heads)), (1, max(d.qk)), (1, max(d.v)), (1, max(d.mlp))),
                         tokens=d.tokens, head_cost=50.0, block_cost=10.0)  # fmt: skip
    settings = PruneSettings(group_sizes=(2, 1, 1, 1, 4), groups_per_step=2, interval=2, max_steps=30,
                             targets=(0.7, 0.5), eta=2.0, bonus_floor=(1, 1, 1, 4))  # fmt: skip
    run = prune(student, teacher, batches(data(), GLOBAL_BATCH, 1), settings, lut, device=torch.device("cpu"), kd=kd)
    out["snapshots"] = [{"target": s.target, "step": s.step, "dims": s.dims.to_json()} for s in run.snapshots]
    out["history_loss"] = [h["loss"] for h in run.history]
    out["top1"] = evaluate(student, data(40, seed=2), torch.device("cpu"), batch_size=7)["top1"]
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = probe()
    if distributed.is_main():  # one write: the ranks share the pipe
        os.write(1, ("DDP_PROBE " + json.dumps(result) + "\n").encode())
    if distributed.world_size() > 1:
        torch.distributed.destroy_process_group()
