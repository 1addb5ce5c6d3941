"""Fine-tuning and evaluation of sequence classifiers for the DAREx experiments (plain torch loops)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common import resume
from common.errors import check_finite
from common.runtime import progress

from .adamr import AdamR
from .data import Encoded, batches


@dataclass(frozen=True)
class FinetuneSpec:
    """How one fine-tuning run is done (the part of a config that determines the fine-tuned weights)."""

    optimizer: str  # "adamw", "adamr-l2" or "adamr-l1"
    lr: float
    steps: int
    batch_size: int
    weight_decay: float = 0.0  # AdamW's decay towards 0, or AdamR's λ towards the pre-trained weights
    warmup_ratio: float = 0.06
    freeze: str = ""  # parameters whose name contains this string are frozen (e.g. "embeddings")
    seed: int = 0


def finetune(model: nn.Module, train: Encoded, spec: FinetuneSpec, pad_id: int, desc: str = "fine-tune",
             where: str | None = None) -> nn.Module:  # fmt: skip
    """Fine-tune ``model`` in place for ``spec.steps`` steps with linear warm-up and linear decay.

    A NaN or infinite loss raises :class:`common.errors.TrainingDivergedError` naming ``where`` (default: the
    ``desc``, optimiser and seed) and the step.

    Inside a cached stage (:meth:`common.runtime.ArtifactCache.resume_slot`) the model, optimizer, schedule and
    random generators (dropout) are saved every ``$PRUNE_REPRO_SAVE_EVERY`` epochs of the training data, and a
    re-run continues from the last save (:mod:`common.resume`): each epoch's batches depend only on the seed and
    the epoch, so it computes what an uninterrupted run does.
    """
    where = where or f"darex {desc} ({spec.optimizer}, lr {spec.lr:g}), seed {spec.seed}"
    torch.manual_seed(spec.seed)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not (spec.freeze and spec.freeze in name))
        if p.requires_grad:
            params.append(p)
    if spec.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    elif spec.optimizer in ("adamr-l2", "adamr-l1"):
        optimizer = AdamR(params, reference=[p.detach() for p in params], lr=spec.lr,
                          weight_decay=spec.weight_decay, mode=spec.optimizer[-2:])  # fmt: skip
    else:
        raise ValueError(f"unknown optimizer {spec.optimizer!r}")
    warmup = max(1, round(spec.warmup_ratio * spec.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (spec.steps - s) / max(1, spec.steps - warmup)))
    )
    device = next(model.parameters()).device
    model.train()
    epoch_steps = math.ceil(len(train) / spec.batch_size)  # batches() keeps the last, partial batch
    saved = resume.checkpoint("finetune", model, optimizer, schedule)  # inside a cached stage: resumable
    start = saved.restore() * epoch_steps

    def endless(epoch: int) -> Iterable[dict]:
        while True:
            yield from batches(train, spec.batch_size, pad_id, shuffle=True, seed=spec.seed * 1000 + epoch)
            epoch += 1

    stream = iter(endless(start // epoch_steps))
    for step in progress(range(start, spec.steps), desc=desc, initial=start, total=spec.steps):
        batch = {k: v.to(device) for k, v in next(stream).items()}
        loss = model(**batch).loss
        check_finite(loss, step=step, where=where)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % epoch_steps == 0:
            saved.epoch_done((step + 1) // epoch_steps - 1, last=step + 1 == spec.steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, pad_id: int, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (class ids, or scores for a one-output regression head) and the labels, in batch order."""
    model.eval()
    device = next(model.parameters()).device
    preds, labels = [], []
    for batch in batches(data, batch_size, pad_id):
        labels.append(batch.pop("labels"))
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        preds.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
    return torch.cat(preds), torch.cat(labels)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return (preds == labels).float().mean().item() * 100


def matthews(preds: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(labels.numpy(), preds.numpy()) * 100


def accuracy_f1(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean of accuracy and F1 (MRPC's GLUE score)."""
    from sklearn.metrics import f1_score

    return (accuracy(preds, labels) + f1_score(labels.numpy(), preds.numpy()) * 100) / 2


def pearson_spearman(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean of Pearson and Spearman correlations (STS-B's GLUE score)."""
    from scipy.stats import pearsonr, spearmanr

    x, y = preds.double().numpy(), labels.double().numpy()
    if np.std(x) == 0:
        return 0.0
    return (pearsonr(x, y)[0] + spearmanr(x, y)[0]) / 2 * 100


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy,
    "matthews": matthews,
    "accuracy_f1": accuracy_f1,
    "pearson_spearman": pearson_spearman,
}


def score(model: nn.Module, data: Encoded, pad_id: int, metric: str = "accuracy", batch_size: int = 64) -> float:
    preds, labels = predict(model, data, pad_id, batch_size)
    value = METRICS[metric](preds, labels)
    return value if math.isfinite(value) else 0.0
