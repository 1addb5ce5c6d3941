"""A data-parallel training phase inside a resume slot, for ``python -m common.launch --nproc 2 -m
tests.masksparsity.resume_probe SLOT [KILL_AFTER]``: trains 3 epochs (killed with exit status 3 right after saving
epoch ``KILL_AFTER`` when given) and prints ``MS_RESUME {json}`` from process 0: the epochs this run trained and a
digest of the final state (tests/masksparsity/test_distributed.py)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from common import distributed as dist
from common import resume
from masksparsity import config
from masksparsity.models import build_model
from masksparsity.train import Data, train_phase


def main(slot: Path, kill_after: int | None) -> dict:
    cfg = config.smoke()
    device = dist.device() if dist.world_size() > 1 else torch.device("cpu")
    data = Data(cfg.data, device)
    torch.manual_seed(0)
    model = build_model("resnet8", width=2, in_channels=1, num_classes=10)
    schedule = config.Schedule(epochs=3, batch_size=64, lr=0.05, lr_schedule="cosine", lr_steps=(),
                               precise_bn_images=128)  # fmt: skip
    epochs: list[float] = []  # the epoch learning rate of every step this run trained
    if kill_after is not None:
        done = resume.Checkpoint.epoch_done

        def epoch_done(self, epoch, last=False):
            done(self, epoch, last)
            if epoch == kill_after:
                os._exit(3)  # as a killed job: no clean-up, nothing after the save

        resume.Checkpoint.epoch_done = epoch_done
    with resume.saving_every(1), resume.slot(slot):
        train_phase(model, data, schedule, seed=0, regularizer=epochs.append, desc="resume probe")
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    return {"world_size": dist.world_size(), "lrs": sorted(set(epochs), reverse=True), "digest": digest}


if __name__ == "__main__":
    out = main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
    if dist.is_main():  # one write(2): the ranks share the pipe
        os.write(1, ("MS_RESUME " + json.dumps(out) + "\n").encode())
    if dist.world_size() > 1:
        dist.barrier()
        torch.distributed.destroy_process_group()
