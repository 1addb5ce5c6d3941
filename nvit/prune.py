"""The iterative pruner (paper §3.2, official ``prune_with_Taylor``): train with KD, score, remove groups, repeat.

Every ``interval`` batches the student is trained with the pruning-phase objective (KD from the dense model)
while the criterion accumulates over those batches; then the ``groups_per_step`` lowest-ranked groups are
removed, one at a time, and the estimated latency (the LUT) is checked after each removal, so a run stops exactly
when it crosses a target. A snapshot is taken at every latency target (paper §4.1: one run, checkpoints at
several targets). ``allocation="uniform"`` is the baseline that keeps the same ratio of every structure in every
block (ranked by the same score within each layer), lowered step by step to the same targets.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from common import distributed, resume
from common.errors import check_finite
from common.runtime import generator

from .config import KDConfig
from .latency import LatencyTable
from .method import (
    SaliencyAccumulator,
    apply_latency_term,
    calibrate_eta,
    kept_fractions,
    make_groups,
    prune_to_counts,
    prune_units,
    redraw_random_scores,
    uniform_keep_counts,
)
from .models import FlexViT, ViTDims, vit_macs
from .train import BatchStream, autocast, backward_accumulated, kd_objective, make_optimizer, unpack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneSettings:
    """What one pruning run needs besides the model and data (built from the config by ``reproduce``)."""

    criterion: str = "hessian"
    allocation: Literal["global", "uniform"] = "global"
    structure_divisors: tuple[float, ...] = (12.0, 12.0, 2.0, 2.0, 1.0)
    score_momentum: float = 0.9
    group_sizes: tuple[int, ...] = (4, 1, 2, 2, 16)
    groups_per_step: int = 6
    interval: int = 5
    max_steps: int = 200
    targets: tuple[float, ...] = (0.5,)
    lr: float = 1e-4
    weight_decay: float = 0.05
    eta: float = 0.0
    eta_mode: Literal["absolute", "relative"] = "relative"
    bonus_floor: tuple[int, ...] = (1, 2, 2, 16)
    uniform_step: float = 0.05
    kl_coeff: float = 1.0
    tau: float = 2.0
    target_metric: Literal["latency", "flops"] = "latency"
    """What ``targets`` are fractions of: the LUT latency or the MACs of the dense model."""
    score_weights: Literal["dependency", "official"] = "dependency"
    """The weights a unit's Σ w·∂L/∂w runs over (``nvit.method.WEIGHT_SETS``)."""
    accumulation: int = 1
    """Micro-batches per batch and process (gradient accumulation; the score and the step are the batch's)."""


@dataclass
class Snapshot:
    """The masked student when the estimated latency first reached ``target`` (fraction of dense)."""

    target: float
    step: int
    batches: int
    latency_ratio: float
    macs_ratio: float
    dims: ViTDims
    kept: dict[str, float]
    state: dict[str, torch.Tensor]

    def model(self, dense_dims: ViTDims) -> FlexViT:
        m = FlexViT(dense_dims)
        m.load_state_dict(self.state)
        return m


@dataclass
class PruneRun:
    settings: PruneSettings
    snapshots: list[Snapshot]
    history: list[dict] = field(default_factory=list)
    eta: float = 0.0
    reached_all: bool = False
    negative_fraction: float | None = None
    """Share of the groups whose Eq. 7 score I_S − η·ΔLat is negative at the first step (latency-dominated)."""


def uniform_dims(dense: ViTDims, counts: dict) -> ViTDims:
    d = dense.depth
    return ViTDims(
        emb=counts[("EMB", None)], heads=tuple(counts[("H", i)] for i in range(d)),
        qk=tuple(counts[("QK", i)] for i in range(d)), v=tuple(counts[("V", i)] for i in range(d)),
        mlp=tuple(counts[("MLP", i)] for i in range(d)),
        **{k: getattr(dense, k) for k in ("image_size", "patch_size", "in_chans", "num_classes",
                                          "distillation_token", "scale", "ln_eps")},
    )  # fmt: skip


def uniform_ratio_for(model: FlexViT, cost, target: float, group_sizes) -> float:
    """The largest keep ratio whose uniform dims cost at most ``target`` (bisection; ``cost(dims)``: LUT or MACs)."""
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        c = cost(uniform_dims(model.dims, uniform_keep_counts(model, mid, group_sizes)))
        lo, hi = (mid, hi) if c <= target else (lo, mid)
    return lo


def prune(
    model: FlexViT,
    teacher: nn.Module | None,
    stream: Iterator[tuple] | BatchStream,
    settings: PruneSettings,
    lut: LatencyTable,
    *,
    device: torch.device,
    kd: KDConfig,
    seed: int = 0,
    cnn_teacher: nn.Module | None = None,
    progress_bar=None,
    mixup=None,
    amp: bool = False,
    where: str = "nvit KD pruning",
) -> PruneRun:
    """Prune ``model`` in place until its LUT latency (or MACs, ``target_metric="flops"``) is at most every target ×
    the dense model's.

    Returns the snapshots (one per target, in decreasing order of target) and a per-step history. A NaN or
    infinite KD loss raises :class:`common.errors.TrainingDivergedError` naming ``where`` and the batch.

    Data parallel (``common.distributed``, P processes): ``stream`` yields this process's share of each global
    batch; the gradients are averaged over the processes before the score takes them, so each batch's Σ w·∂L/∂w,
    and with it the score (an expectation over batches), is the one-process score of the same global batch (up
    to float summation order); every process then ranks rank 0's scores, so all prune the same groups.

    Resuming: with a :class:`~nvit.train.BatchStream` inside a cached stage, the whole state of the run (the masked
    student, optimizer, score sums and their moving average, random generators, targets left, snapshots and
    history) is saved after the first pruning step that completes each ``$PRUNE_REPRO_SAVE_EVERY``-th epoch of
    the stream (:mod:`common.resume`); a re-run continues from there, the stream from the
    batch after the last one used. In-memory data give the uninterrupted run bit for bit (tested); a loader with
    worker processes re-reads the skipped batches of the epoch so their augmentations stay in step.
    """
    s = settings
    dense_dims = model.dims
    dense_lat = lut.model_latency(dense_dims)
    dense_macs = vit_macs(dense_dims)
    if s.target_metric not in ("latency", "flops"):
        raise ValueError(f"target_metric must be 'latency' or 'flops', got {s.target_metric!r}")
    cost = vit_macs if s.target_metric == "flops" else lut.model_latency
    dense_cost = cost(dense_dims)
    pending = sorted(s.targets, reverse=True)
    criterion = s.criterion if s.allocation == "global" else "hessian"
    acc = SaliencyAccumulator(criterion, divisors=s.structure_divisors, momentum=s.score_momentum,
                              generator=generator(seed + 17), weights=s.score_weights)  # fmt: skip
    rng = generator(seed + 23)
    opt = make_optimizer(model, s.lr, s.weight_decay)
    run = PruneRun(settings=s, snapshots=[])
    eta = s.eta if s.eta_mode == "absolute" else None
    ratio = 1.0
    batches_used = 0
    first_step = 1

    def state() -> dict:  # what a resumed run needs, besides the student and the optimizer
        return {"step": step, "batches_used": batches_used, "pending": list(pending), "ratio": ratio, "eta": eta,
                "run": run, "acc": (acc.sum, acc.batches, acc.ema, acc.generator.get_state()),
                "rng": rng.get_state()}  # fmt: skip

    def restore(saved: dict) -> None:
        nonlocal first_step, batches_used, pending, ratio, eta, run
        first_step, batches_used, pending = saved["step"] + 1, saved["batches_used"], saved["pending"]
        ratio, eta, run = saved["ratio"], saved["eta"], saved["run"]
        acc.sum, acc.batches, acc.ema, gen_state = saved["acc"]
        acc.generator.set_state(gen_state)
        rng.set_state(saved["rng"])

    epoch_steps = stream.epoch_steps if isinstance(stream, BatchStream) else 0
    saved = resume.checkpoint("prune", model, opt, resume.State(state, restore))
    step = 0
    model.to(device)  # before a restore: the optimizer's state goes to its parameters' device
    if epoch_steps:
        saved.restore()
    stream = stream.from_batch(batches_used) if epoch_steps else iter(stream)
    epochs_done = batches_used // epoch_steps if epoch_steps else 0

    def check_targets(step: int) -> None:
        dims = model.current_dims()
        lat = lut.model_latency(dims) / dense_lat
        ratio_now = cost(dims) / dense_cost
        while pending and ratio_now <= pending[0] + 1e-12:
            target = pending.pop(0)
            run.snapshots.append(Snapshot(
                target=target, step=step, batches=batches_used, latency_ratio=lat,
                macs_ratio=vit_macs(dims) / dense_macs, dims=dims, kept=kept_fractions(model),
                state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            ))  # fmt: skip

    def loss_fn(x, y, t_logits):
        with autocast(device, amp):
            return kd_objective(model, x, y, teacher=teacher, kl_coeff=s.kl_coeff, tau=s.tau, kd=kd,
                                cnn_teacher=cnn_teacher, teacher_logits=t_logits)  # fmt: skip

    for step in range(first_step, s.max_steps + 1):
        model.train()
        for _ in range(s.interval):
            x, y, t_logits = unpack(next(stream), device)  # t_logits: the teacher's, precomputed, or None
            if mixup is not None:
                if t_logits is not None:
                    raise ValueError("precomputed teacher logits cannot be used with mixup/cutmix")
                x, y = mixup(x, y)
            opt.zero_grad(set_to_none=True)
            value = backward_accumulated(model, x, y, t_logits, loss_fn, s.accumulation)  # gradients: global mean
            check_finite(value, step=batches_used, where=where)
            acc.add_batch(model)
            opt.step()
            model.apply_masks_()
            batches_used += 1
        scores = acc.step_scores(model)
        if distributed.world_size() > 1:  # the same numbers on every process, so the same groups everywhere
            scores = {k: v.to(device) for k, v in distributed.broadcast_object({k: v.cpu() for k, v in
                                                                                 scores.items()}).items()}  # fmt: skip
        if s.allocation == "global":
            groups = make_groups(model, scores, s.group_sizes)
            if criterion == "random":
                redraw_random_scores(groups, rng)
            if s.eta:
                dims = model.current_dims()
                memo: dict = {}  # a saving depends only on (layer, n) within a step: the same value, looked up once

                def saving(layer, n, d=dims, memo=memo):
                    if (layer, n) not in memo:
                        memo[layer, n] = lut.saving(d, layer, n, s.bonus_floor)
                    return memo[layer, n]

                apply_latency_term(groups, saving, 0.0)
                if eta is None:
                    eta = calibrate_eta(groups, s.eta)
                    run.eta = eta
                for g in groups:
                    g.ranked = g.score - eta * g.latency_saving
                if run.negative_fraction is None:
                    run.negative_fraction = sum(g.ranked < 0 for g in groups) / max(1, len(groups))
            groups.sort(key=lambda g: (g.ranked, g.layer[0], g.layer[1] or 0, g.units[0]))
            for g in groups[: s.groups_per_step]:
                prune_units(model, g.layer, g.units)
                check_targets(step)
                if not pending:
                    break
        else:
            floor = uniform_ratio_for(model, cost, pending[0] * dense_cost, s.group_sizes)
            ratio = max(ratio - s.uniform_step, floor)
            prune_to_counts(model, scores, uniform_keep_counts(model, ratio, s.group_sizes))
            check_targets(step)
        dims = model.current_dims()
        run.history.append({"step": step, "batches": batches_used, "latency_ratio": lut.model_latency(dims) / dense_lat,
                            "macs_ratio": vit_macs(dims) / dense_macs, "loss": value})  # fmt: skip
        if progress_bar is not None:
            progress_bar.set_postfix(step=step, lat=f"{run.history[-1]['latency_ratio']:.3f}")
        if not pending:
            run.reached_all = True
            break
        if epoch_steps and batches_used // epoch_steps > epochs_done:  # this step finished an epoch of the stream
            epochs_done = batches_used // epoch_steps
            saved.epoch_done(epochs_done - 1)
    if pending:
        log.warning("pruning stopped at max_steps=%d before reaching targets %s", s.max_steps, pending)
    return run


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
