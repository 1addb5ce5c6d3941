"""Training loops: dense training with checkpoints, retraining with fixed masks, SAM, BN re-estimation.

SGD with momentum and weight decay under a step schedule (lr x decay at given fractions of the training
length), on in-memory tensors. Batches are drawn from a seeded generator, so a (seed, config) pair gives
the same run every time on the same device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from common.errors import check_finite

from .data import Data, augment_images
from .method import Masks, apply_masks


@dataclass(frozen=True)
class Schedule:
    """How long and how hard to train: ``epochs`` (or ``iterations`` if > 0) of SGD under a step schedule."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay_at: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    iterations: int = 0
    sam_rho: float = 0.0
    sam_adaptive: bool = False


@dataclass
class TrainLog:
    test_error: dict[int, float] = field(default_factory=dict)
    """Test error at the end of the epochs it was measured after (1-based)."""


def _epoch_batches(n: int, batch_size: int, gen: torch.Generator, drop_last: bool) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def _lr_at(schedule: Schedule, progress: float) -> float:
    passed = sum(progress >= at for at in schedule.lr_decay_at)
    return schedule.lr * schedule.lr_decay**passed


@torch.no_grad()
def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 error (fraction) in eval mode."""
    model.eval()
    wrong = 0
    for start in range(0, len(x), batch_size):
        wrong += int((model(x[start : start + batch_size]).argmax(1) != y[start : start + batch_size]).sum())
    return wrong / len(x)


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])


@torch.no_grad()
def reestimate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 512, weighting: str = "batch") -> None:
    """Recompute every BatchNorm's running mean/var from ``x`` (in order, no augmentation), batch by batch.

    ``weighting="batch"``: the cumulative average of the batch statistics, every batch counted once (torch's
    ``momentum=None``). ``"sample"`` (official ``mc_utils.update_bn``): batch k of size b_k after n_k examples is
    folded in with momentum ``b_k / (n_k + b_k)``, so each batch counts by its number of examples; the running
    mean of a BN that sees ``x`` itself is then the mean over all of ``x``. The two differ only through a last
    batch shorter than the others. The running variance is the same average of the batches' unbiased variances.
    """
    if weighting not in ("batch", "sample"):
        raise ValueError(f"weighting must be 'batch' or 'sample', got {weighting!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    seen = 0
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        if weighting == "sample":
            for m in bns:
                m.momentum = len(batch) / (seen + len(batch))
        model(batch)
        seen += len(batch)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def _set_bn_momentum(model: nn.Module, momentum: float | None) -> list[float | None]:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    old = [m.momentum for m in bns]
    for m in bns:
        m.momentum = momentum
    return old


def _restore_bn_momentum(model: nn.Module, old: Sequence[float | None]) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, momentum in zip(bns, old, strict=True):
        m.momentum = momentum


def _sam_perturb(params: list[nn.Parameter], rho: float, adaptive: bool) -> list[torch.Tensor]:
    """Foret et al. (2021), eq. 2: ε = ρ g / ||g|| (ASAM: ε = ρ w² g / ||w g||); returns the ε added."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    scaled = [(p.abs() if adaptive else 1.0) * g for p, g in zip(params, grads, strict=True)]
    norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2) + 1e-12
    eps = []
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            e = (p.pow(2) if adaptive else 1.0) * g * (rho / norm)
            p.add_(e)
            eps.append(e)
    return eps


def train(
    model: nn.Module,
    data: Data,
    schedule: Schedule,
    seed: int,
    *,
    masks: Masks | None = None,
    checkpoint_epochs: Sequence[int] = (),
    eval_last_epochs: int = 0,
    on_checkpoint: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    where: str = "training",
) -> TrainLog:
    """Train ``model`` in place. With ``masks``, pruned weights are zeroed after every step (fixed masks).

    ``on_checkpoint(epoch, state_dict_copy)`` is called at the end of each epoch in ``checkpoint_epochs``;
    the test error is logged after each of the last ``eval_last_epochs`` epochs. With ``schedule.sam_rho``
    > 0 each step is a SAM step (BN running statistics frozen on the second forward pass). A NaN or infinite
    loss raises :class:`common.errors.TrainingDivergedError` naming ``where`` and the step.
    """
    device = data.x_train.device
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1) if data.augment else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.x_train)
    by_iterations = schedule.iterations > 0
    steps_per_epoch = n // schedule.batch_size if by_iterations else -(-n // schedule.batch_size)
    epochs = -(-schedule.iterations // steps_per_epoch) if by_iterations else schedule.epochs
    log = TrainLog()
    if masks is not None:
        apply_masks(model, masks)
    # the masks as multipliers of their parameters' dtype, made once (apply_masks converts them at every call);
    # multiplying by 1.0 / 0.0 is what apply_masks does, so the result is the same bit for bit
    by_name = dict(model.named_parameters())
    multipliers = [] if masks is None else [(by_name[n], m.to(by_name[n].dtype)) for n, m in masks.items()]
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in _epoch_batches(n, schedule.batch_size, gen, drop_last=by_iterations):
            if by_iterations and step >= schedule.iterations:
                break
            progress = step / schedule.iterations if by_iterations else (epoch - 1) / epochs
            for group in opt.param_groups:
                group["lr"] = _lr_at(schedule, progress)
            idx = idx.to(device)
            x, y = data.x_train[idx], data.y_train[idx]
            if aug_gen is not None:
                x = augment_images(x, aug_gen, pad_value=data.pad_value)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            check_finite(loss, step=step, where=where)
            loss.backward()
            if schedule.sam_rho > 0:
                eps = _sam_perturb(params, schedule.sam_rho, schedule.sam_adaptive)
                opt.zero_grad(set_to_none=True)
                old = _set_bn_momentum(model, 0.0)
                loss_fn(model(x), y).backward()
                _restore_bn_momentum(model, old)
                with torch.no_grad():
                    for p, e in zip(params, eps, strict=True):
                        p.sub_(e)
            opt.step()
            if multipliers:
                with torch.no_grad():
                    for p, m in multipliers:
                        p.mul_(m)
            step += 1
        if epoch > epochs - eval_last_epochs:
            log.test_error[epoch] = error_rate(model, data.x_test, data.y_test)
        if epoch in checkpoint_epochs and on_checkpoint is not None:
            on_checkpoint(epoch, copy.deepcopy(model.state_dict()))
    return log
