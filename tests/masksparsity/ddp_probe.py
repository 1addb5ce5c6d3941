"""A small data-parallel MaskSparsity pipeline, run in one process or under ``python -m common.launch --nproc 2``.

``python -m common.launch --nproc 2 -m tests.masksparsity.ddp_probe`` prints ``MS_PROBE {json}`` from process 0: the
probe's values by gradient accumulation, for each k of ``MS_PROBE_ACCUMULATION=k1,k2,...`` (default 1; one launch
for several, since starting the processes costs more than the probe);
:func:`probe` in the test process gives the one-process values to compare with
(tests/masksparsity/test_distributed.py). Smoke-sized: a width-4 ResNet-8 on 256 Fashion-MNIST images, in float64
(in float32 a mere change of summation order, e.g. the BN formula, already moves γ by ~1e-4 relative in 8 steps;
in float64 the same changes stay near 1e-12, so the comparison can be sharp).
"""

from __future__ import annotations

import json
import os

import torch

from common import distributed as dist
from masksparsity import config
from masksparsity import method as M
from masksparsity.models import build_model
from masksparsity.train import Data, evaluate, precise_bn, train_phase


def probe(accumulation: int = 1) -> dict:
    """MaskSparsity training (DDP when launched: batch shares, global BN, precise BN; ``accumulation`` micro-batches
    per batch), then a mask from the trained γ, pruning, BN re-estimation and evaluation; what process 0 reports."""
    cfg = config.smoke()
    device = dist.device() if dist.world_size() > 1 else torch.device("cpu")
    data = Data(cfg.data, device)
    for split in data.splits.values():  # float64: the two runs differ by summation order only, ~1e-16 per step
        split.x = split.x.double()
    torch.manual_seed(0)
    model = build_model("resnet8", width=4, in_channels=1, num_classes=10, zero_init_last_bn=False).double()
    spec = M.prune_spec(model)
    with torch.no_grad():  # distinct γ, so the uniform mask is not decided by ties
        for unit in spec.units:
            bn = model.get_submodule(unit.bns[0])
            bn.weight.copy_(torch.linspace(0.5, 1.5, bn.num_features))
    mask = M.uniform_mask(model, spec, 0.5)
    schedule = config.Schedule(epochs=2, batch_size=64, lr=0.05, lr_schedule="cosine", lr_steps=(),
                               precise_bn_images=128)  # fmt: skip
    reg = M.masksparsity_regularizer(model, spec, mask, 0.05)
    train_phase(model, data, schedule, seed=0, regularizer=reg, desc="probe", accumulation=accumulation)
    loss, acc = evaluate(model, data, "test")
    cost = M.MacModel(model, spec, data.example().double())
    new_mask = M.global_mask_for_reduction(model, spec, cost, 0.5)
    pruned = precise_bn(M.prune(model, spec, new_mask), data, 128, seed=7)
    _, acc_pruned = evaluate(pruned, data, "test")
    bns = M.all_bns(model)
    return {
        "world_size": dist.world_size(),
        "test_loss": loss,
        "test_acc": acc,
        "n_test": len(data.splits["test"].y),
        "gamma": [v for bn in bns for v in bn.weight.tolist()],
        "running_mean": [v for bn in bns for v in bn.running_mean.tolist()],
        "masked_gamma_summary": M.gamma_summary(model, spec, mask),
        "mask": {name: keep.int().tolist() for name, keep in new_mask.items()},
        "pruned_test_acc": acc_pruned,
    }


if __name__ == "__main__":
    out = {k: probe(int(k)) for k in os.environ.get("MS_PROBE_ACCUMULATION", "1").split(",")}
    if dist.is_main():  # one write(2): the ranks share the pipe
        os.write(1, ("MS_PROBE " + json.dumps(out) + "\n").encode())
    if dist.world_size() > 1:
        dist.barrier()
        torch.distributed.destroy_process_group()
