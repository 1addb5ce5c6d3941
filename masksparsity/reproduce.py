"""The MaskSparsity experiment for each preset: runs it, returns the results record (see common.cli).

Per seed (notes §5.4): train a baseline; from it, Network Slimming runs (global L1 on γ, one per λ); a mask per
operating point from the Network Slimming model at ``mask_lambda`` (or a uniform mask); MaskSparsity runs from
the baseline with the penalty on the masked γ only (one per mask); a control with the same epochs and no
penalty, and that control fine-tuned unpruned (the dense reference with the same total epochs). MaskSparsity,
the control (and the directly pruned baseline) are pruned with MaskSparsity's mask; each Network Slimming run
with a mask built from its own γ at the same FLOPs target (``prune.rule=mask``), or every arm thresholded on
its own γ (``prune.rule=threshold``). Each pruned model is measured right after pruning (raw, β folded, BN
re-estimated), fine-tuned and measured again (test and validation). FLOPs and params come from ``common``.

Seeds are independent jobs: they run in single-thread worker processes (``common.parallel.map_jobs``), and
the measured CPU speedups are timed afterwards in this process, with no worker running. In a data-parallel run
(``make reproduce-masksparsity NPROC=N``, :mod:`common.distributed`) the seeds run one after the other and every
training phase, precise BN and evaluation is split over the N processes (:mod:`masksparsity.train`); the masks are
chosen on process 0 and sent to the others, only process 0 writes cache entries (all load them), times the
speedups and writes the record. The claims are judged
from the record by :mod:`masksparsity.claims`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from common import distributed as dist
from common.cli import RunContext, default_report
from common.config import config_hash, to_dict
from common.counting import count_params, model_cost
from common.latency import compare_latency
from common.parallel import default_workers, map_jobs
from common.plotting import method_color, method_marker, plt, savefig, style
from common.results import RunRecord, claims_table, markdown_table, paper_vs_ours_table
from common.runtime import ArtifactCache, PhaseTimer, seed_everything

from .claims import (
    BASELINE,
    CONTROL,
    DENSE,
    DENSE_REF,
    FLOPS,
    FLOPS_OFFICIAL,
    FOLD,
    FT,
    MASKED_SMALL,
    MS,
    PAPER_TABLE,
    PARAMS,
    PRE_TABLE,
    RAW,
    RECAL,
    REF_TABLE,
    SCRATCH,
    SPEEDUP,
    TEST_ACC,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_FT,
    add_claims,
    ms_pre_label,
    ns_label,
    op_table,
)
from .config import MaskSparsityConfig
from .flops import OfficialMacs, official_macs
from .method import (
    MacModel,
    Mask,
    PruneSpec,
    full_mask,
    gamma_summary,
    gamma_values,
    global_mask_for_reduction,
    masksparsity_regularizer,
    prune,
    prune_spec,
    slimming_regularizer,
    threshold_mask,
    uniform_mask,
)
from .models import build_model
from .paper import PAPER_NUMBERS
from .train import Data, evaluate, precise_bn, train_phase

__all__ = ["BASELINE", "CONTROL", "DENSE", "DENSE_REF", "MS", "PAPER_TABLE", "PRE_TABLE", "REF_TABLE", "SCRATCH",
           "ns_label", "op_table", "report", "run", "run_seed"]  # fmt: skip

log = logging.getLogger(__name__)

TRAIN_FORMAT = 1
"""Bump when training code changes what it produces, so cached models are not reused."""

OLD_COST_ROW = "every pruned arm (same mask)"
"""Where records written before per-arm masks kept the FLOPs of every (identically) pruned arm."""

STAGES = (("raw", RAW), ("fold", FOLD), ("recal", RECAL), ("ft", FT), ("val_ft", VAL_FT))
"""(key in a seed's results, metric) of each arm's accuracies in the operating-point tables."""


# ----------------------------------------------------------------------------------------------------
# Training with caching


@dataclass
class SeedContext:
    """What one seed's job needs from the run: the cache, the device and its own phase timer (a worker process
    cannot charge the main process's timer; its breakdown is returned and summed)."""

    cache: ArtifactCache
    device: torch.device
    timer: PhaseTimer = field(default_factory=PhaseTimer)

    def phase(self, name: str):
        return self.timer.phase(name)


class Runner:
    def __init__(self, cfg: MaskSparsityConfig, ctx: SeedContext, data: Data, seed: int):
        self.cfg, self.ctx, self.data, self.seed = cfg, ctx, data, seed
        self.base_key = {"format": TRAIN_FORMAT, "data": to_dict(cfg.data), "model": to_dict(cfg.model), "seed": seed}
        if cfg.amp:  # bf16 autocast trains other weights (the key of fp32 runs stays as it was)
            self.base_key["amp"] = True
        if cfg.accumulation != 1:  # BN over micro-batches trains other weights
            self.base_key["accumulation"] = cfg.accumulation
        self._states: dict[str, dict] = {}
        self.dense_official: OfficialMacs | None = None
        """The baseline's MACs in the official counter's convention (with prune.flops_counter=official)."""

    def new_model(self) -> nn.Module:
        m = self.cfg.model
        return build_model(m.arch, width=m.width, num_classes=self.data.num_classes,
                           in_channels=self.data.in_channels, shortcut=m.shortcut,
                           zero_init_last_bn=m.zero_init_last_bn).to(self.ctx.device)  # fmt: skip

    def trained(self, tag: str, key: dict, create, phase: str) -> nn.Module:
        """A fresh copy of the model ``create()`` trains, cached (on disk, and here for this seed); training it or
        loading it is timed as ``phase``."""

        def make() -> dict:
            seed_everything(self.seed)
            return {k: v.cpu() for k, v in create().state_dict().items()}

        full_key = {**self.base_key, **key}
        name = f"{tag}:{json.dumps(full_key, sort_keys=True, default=str)}"
        with self.ctx.phase(phase):
            if name not in self._states:
                self._states[name] = self.ctx.cache.get_or_create_together(tag, full_key, make)
            model = self.new_model()
            model.load_state_dict(self._states[name])
        return model

    def train(self, model: nn.Module, schedule, seed: int, regularizer, desc: str, where: str) -> nn.Module:
        """:func:`train_phase` on this run's data with its mixed precision and gradient accumulation."""
        return train_phase(model, self.data, schedule, seed, regularizer, self.cfg.amp, desc, where=where,
                           accumulation=self.cfg.accumulation)  # fmt: skip

    def resumable(self, tag: str, key: dict):
        """A resume slot (:mod:`common.resume`) for training that is not cached on its own (a pruned arm's
        fine-tune): keyed by the whole config and this seed, deleted when the block ends without an error."""
        full_key = {**self.base_key, "config": config_hash(self.cfg), **key}
        return self.ctx.cache.resume_slot(tag, full_key, clear=True)

    def baseline(self) -> nn.Module:
        return self.trained("baseline", {"train": to_dict(self.cfg.train)}, lambda: self.train(
            self.new_model(), self.cfg.train, self.seed, None, "baseline",
            f"masksparsity baseline training, seed {self.seed}"), "dense training")  # fmt: skip

    def sparsity_key(self) -> dict:
        return {"train": to_dict(self.cfg.train), "sparsity": to_dict(self.cfg.sparsity.schedule)}

    def slimming(self, lam: float, spec: PruneSpec) -> nn.Module:
        sp = self.cfg.sparsity

        def create() -> nn.Module:
            model = self.baseline()
            scope = None if sp.slimming_scope == "all_bn" else spec
            reg = slimming_regularizer(model, lam, sp.norm, scope)
            return self.train(model, sp.schedule, self.seed + 1, reg, f"slimming {lam:g}",
                              f"masksparsity slimming training (λ={lam:g}), seed {self.seed}")  # fmt: skip

        key = {**self.sparsity_key(), "lam": lam, "norm": sp.norm, "scope": sp.slimming_scope}
        return self.trained("slimming", key, create, "sparsity training")

    def masksparsity(self, spec: PruneSpec, mask: Mask, start: nn.Module, start_key: str) -> nn.Module:
        sp = self.cfg.sparsity

        def create() -> nn.Module:
            model = self.new_model()
            model.load_state_dict(start.state_dict())
            reg = masksparsity_regularizer(model, spec, mask, sp.masksparsity_lambda, sp.norm, sp.regularize_beta)
            return self.train(model, sp.schedule, self.seed + 1, reg, "masksparsity",
                              f"masksparsity MaskSparsity training, seed {self.seed}")  # fmt: skip

        key = {**self.sparsity_key(), "lam": sp.masksparsity_lambda, "norm": sp.norm, "beta": sp.regularize_beta,
               "start": start_key, "mask": {k: v.int().tolist() for k, v in mask.items()}}  # fmt: skip
        return self.trained("masksparsity", key, create, "sparsity training")

    def control(self) -> nn.Module:
        def create() -> nn.Module:
            return self.train(self.baseline(), self.cfg.sparsity.schedule, self.seed + 1, None, "control",
                              f"masksparsity no-regularisation control training, seed {self.seed}")  # fmt: skip

        return self.trained("control", self.sparsity_key(), create, "controls")

    def dense_reference(self) -> nn.Module:
        """The control, unpruned, trained for the fine-tuning epochs with the fine-tuning schedule and batch order:
        the unpruned model with the same total epochs as every pruned arm."""

        def create() -> nn.Module:
            seed_everything(self.seed + 3)
            return self.train(self.control(), self.cfg.finetune, self.seed + 2, None, "dense reference",
                              f"masksparsity dense reference, seed {self.seed}")  # fmt: skip

        key = {**self.sparsity_key(), "finetune": to_dict(self.cfg.finetune)}
        return self.trained("dense_reference", key, create, "controls")


# ----------------------------------------------------------------------------------------------------
# One seed


def _op_labels(cfg: MaskSparsityConfig) -> list[str]:
    sp = cfg.sparsity
    if sp.mask_rule == "threshold":
        return [f"|γ| <= {sp.mask_threshold:g}"]
    return [f"{100 * r:.0f}% FLOPs ↓" for r in sp.flops_reductions]


def _masks(cfg: MaskSparsityConfig, source: nn.Module, spec: PruneSpec, cost: MacModel, uniform: bool) -> dict:
    """{operating-point label: mask} from ``source``'s γ: the globally smallest |γ| at each FLOPs target (or
    |γ| <= mask_threshold), or with ``uniform`` the same keep fraction in every unit."""
    sp, pr = cfg.sparsity, cfg.prune
    labels = _op_labels(cfg)
    if sp.mask_rule == "threshold":
        if uniform:
            raise ValueError("mask_source=uniform needs mask_rule=flops_target")
        return {labels[0]: threshold_mask(source, spec, sp.mask_threshold, pr.min_channels)}
    masks = {}
    dense = cost.macs(full_mask(source, spec))
    for label, r in zip(labels, sp.flops_reductions, strict=True):
        if uniform:
            lo, hi = 0.0, 1.0
            for _ in range(30):  # largest keep fraction that reaches the target
                mid = (lo + hi) / 2
                if 1 - cost.macs(uniform_mask(source, spec, mid, pr.min_channels)) / dense >= r:
                    lo = mid
                else:
                    hi = mid
            masks[label] = uniform_mask(source, spec, lo, pr.min_channels)
        else:
            masks[label] = global_mask_for_reduction(source, spec, cost, r, pr.min_channels)
    return masks


def _pre_metrics(model: nn.Module, data: Data) -> dict[str, float]:
    train_loss, train_acc = evaluate(model, data, "train_eval")
    _, test_acc = evaluate(model, data, "test_quick")
    return {"train_loss": train_loss, "train_acc": train_acc, "test_acc": test_acc}


def run_seed(cfg: MaskSparsityConfig, ctx: SeedContext, data: Data, seed: int) -> tuple[dict, dict[str, nn.Module]]:
    """Every arm of one seed: (its measurements, the models the caller times: ``"dense"``, the baseline, and
    {operating point: MaskSparsity pruned and fine-tuned})."""
    runner = Runner(cfg, ctx, data, seed)
    sp, pr, arms_cfg = cfg.sparsity, cfg.prune, cfg.arms
    base = runner.baseline()
    with ctx.phase("pruning"):  # the masks (the Network Slimming runs they come from are timed as training)
        spec = prune_spec(base, residual_groups=pr.residual_groups)
        cost = MacModel(base, spec, data.example())
        dense_cost = model_cost(base.eval(), data.example())
        if pr.flops_counter == "official":
            runner.dense_official = official_macs(base, data.example())
    lambdas = list(sp.slimming_lambdas) if arms_cfg.network_slimming else []
    slimmed = {lam: runner.slimming(lam, spec) for lam in lambdas}
    needs_mask_run = sp.mask_source == "slimming" or sp.start_from == "slimming"
    if needs_mask_run and sp.mask_lambda not in slimmed:
        slimmed[sp.mask_lambda] = runner.slimming(sp.mask_lambda, spec)
    with ctx.phase("pruning"):
        uniform = sp.mask_source == "uniform"
        masks = _masks(cfg, base if uniform else slimmed[sp.mask_lambda], spec, cost, uniform)
        own = {lam: _masks(cfg, slimmed[lam], spec, cost, uniform=False) for lam in lambdas}  # NS's own rule
        masks, own = dist.broadcast_object((masks, own))  # data parallel: process 0's choice on every process
    control = runner.control() if arms_cfg.no_regularization else None

    pre_models: dict[str, nn.Module] = {DENSE: base, **{ns_label(lam): slimmed[lam] for lam in lambdas}}
    if control is not None:
        pre_models[CONTROL] = control
    arms: dict[str, dict[str, tuple[nn.Module, Mask]]] = {}  # op -> label -> (trained unpruned model, its mask)
    for op, mask in masks.items():
        arms[op] = {}
        if arms_cfg.direct_prune:
            arms[op][BASELINE] = (base, mask)
        for lam in lambdas:
            arms[op][ns_label(lam)] = (slimmed[lam], own[lam][op])
        if control is not None:
            arms[op][CONTROL] = (control, mask)
        if arms_cfg.masksparsity:
            start, start_key = (base, "baseline") if sp.start_from == "baseline" else (
                slimmed[sp.mask_lambda], f"slimming {sp.mask_lambda}")  # fmt: skip
            arms[op][MS] = (runner.masksparsity(spec, mask, start, start_key), mask)
            pre_models[ms_pre_label(op)] = arms[op][MS][0]

    out: dict = {"pre": {}, "gamma": {}, "post": {}, "ref": {}, "masks": {}}
    with ctx.phase("evaluation"):
        for label, model in pre_models.items():
            out["pre"][label] = _pre_metrics(model, data)
    if arms_cfg.dense_reference and control is not None:
        reference = runner.dense_reference()
        with ctx.phase("evaluation"):
            out["ref"][DENSE_REF] = {"ft": evaluate(reference, data, "test")[1]}
    op0 = next(iter(masks))
    gamma_models = {k: v for k, v in pre_models.items() if not k.startswith(MS)}
    if MS in arms[op0]:
        gamma_models[MS] = arms[op0][MS][0]
    with ctx.phase("evaluation"):  # |γ| of kept and masked channels under MaskSparsity's first mask
        for label, model in gamma_models.items():
            out["gamma"][label] = {**gamma_summary(model, spec, masks[op0], pr.threshold),
                                   "values": gamma_values(model, spec, masks[op0])}  # fmt: skip
    tuned_ms: dict[str, nn.Module] = {}
    for op, mask in masks.items():
        out["masks"][op] = {k: int(v.sum()) for k, v in mask.items()}
        out["post"][op] = {}
        for label, (model, arm_mask) in arms[op].items():
            res, tuned = _prune_and_finetune(cfg, runner, spec, arm_mask, model, label, op, dense_cost)
            out["post"][op][label] = res
            if label == MS:
                tuned_ms[op] = tuned.cpu().eval()
        if arms_cfg.scratch and MS in out["post"][op]:
            with ctx.phase("controls"):
                out["post"][op][SCRATCH] = _scratch(cfg, runner, spec, mask, dense_cost, op)
    return out, {"dense": base.cpu().eval(), **tuned_ms}


def _prune_and_finetune(cfg, runner: Runner, spec, mask, model, label, op, dense_cost) -> tuple[dict, nn.Module]:
    pr, data, phase = cfg.prune, runner.data, runner.ctx.phase
    res: dict[str, float] = {}
    with phase("pruning"):  # incl. BN re-estimation; the accuracy right after pruning is timed as evaluation
        arm_mask = mask if pr.rule == "mask" else dist.broadcast_object(
            threshold_mask(model, spec, pr.threshold, pr.min_channels))  # fmt: skip
        res["masked_small"] = 100 * gamma_summary(model, spec, arm_mask, pr.threshold)["masked_below_small"]
        raw = prune(model, spec, arm_mask)
        with phase("evaluation"):
            res["raw"] = evaluate(raw, data, "test_quick")[1]
        if pr.fold_beta:
            folded = prune(model, spec, arm_mask, fold_beta=True)
            with phase("evaluation"):
                res["fold"] = evaluate(folded, data, "test_quick")[1]
        if pr.bn_recalibration_images:
            recal = precise_bn(prune(model, spec, arm_mask), data, pr.bn_recalibration_images, runner.seed + 7)
            with phase("evaluation"):
                res["recal"] = evaluate(recal, data, "test_quick")[1]
    with phase("fine-tuning"):
        seed_everything(runner.seed + 3)
        where = f"masksparsity fine-tune of the pruned {label} ({op}), seed {runner.seed}"
        with runner.resumable("finetune", {"arm": label, "op": op}):  # not cached on its own, but resumable
            tuned = runner.train(raw, cfg.finetune, runner.seed + 2, None, f"finetune {label}", where)
    with phase("evaluation"):
        res["ft"] = evaluate(tuned, data, "test")[1]
        if data.has("val"):
            res["val_ft"] = evaluate(tuned, data, "val")[1]
        pruned_cost = model_cost(tuned.eval(), data.example())
        res["flops_reduction"] = 100 * (1 - pruned_cost.flops / dense_cost.flops)
        res["params_reduction"] = 100 * (1 - pruned_cost.params / dense_cost.params)
        res["params"] = count_params(tuned)
        if runner.dense_official is not None:
            pruned_official = official_macs(tuned, data.example())
            res["flops_reduction_official"] = 100 * (1 - pruned_official.total / runner.dense_official.total)
    return res, tuned


def _scratch(cfg, runner: Runner, spec, mask, dense_cost, op) -> dict[str, float]:
    """The official scratch.sh ablation: the pruned architecture, re-initialised, trained with the baseline's
    schedule for the total epochs of the other arms (baseline + sparsity phase + fine-tuning)."""
    seed_everything(runner.seed + 5)
    model = prune(runner.new_model(), spec, mask)
    epochs = cfg.train.epochs + cfg.sparsity.schedule.epochs + cfg.finetune.epochs
    schedule = dataclasses.replace(cfg.train, epochs=epochs)
    with runner.resumable("scratch", {"op": op}):
        tuned = runner.train(model, schedule, runner.seed + 4, None, "scratch",
                             f"masksparsity scratch training ({op}), seed {runner.seed}")  # fmt: skip
    with runner.ctx.phase("evaluation"):
        pruned_cost = model_cost(tuned.eval(), runner.data.example())
        res = {"ft": evaluate(tuned, runner.data)[1],
               "flops_reduction": 100 * (1 - pruned_cost.flops / dense_cost.flops),
               "params_reduction": 100 * (1 - pruned_cost.params / dense_cost.params)}  # fmt: skip
        if runner.data.has("val"):
            res["val_ft"] = evaluate(tuned, runner.data, "val")[1]
        return res


_DATA: dict[str, Data] = {}


def _data(cfg: MaskSparsityConfig, device: torch.device) -> Data:
    """The dataset, loaded once per process (each worker process serves several seeds)."""
    key = json.dumps([to_dict(cfg.data), str(device)], sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = Data(cfg.data, device)
    return _DATA[key]


def seed_job(cfg: MaskSparsityConfig, seed: int, cache: ArtifactCache, device: str) -> dict:
    """One seed end to end, in a worker process or here: its measurements, its time by phase, and the
    MaskSparsity models to time (the caller times them once no worker runs)."""
    ctx = SeedContext(cache, torch.device(device))
    with ctx.phase("data"):
        data = _data(cfg, ctx.device)
    out, models = run_seed(cfg, ctx, data, seed)
    return {"seed": seed, "results": out, "phases_s": ctx.timer.breakdown(), "models": models}


# ----------------------------------------------------------------------------------------------------
# The record


def launcher_bf16(device: torch.device) -> bool:
    """Whether ``accelerate launch --mixed_precision bf16`` (``make ... NPROC=N`` on CUDA) asked for bf16 on CUDA."""
    return device.type == "cuda" and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "bf16"


def run(cfg: MaskSparsityConfig, ctx: RunContext) -> RunRecord:
    record = ctx.new_record()
    world = dist.world_size()
    if world > 1:
        batches = {"train": cfg.train.batch_size, "sparsity": cfg.sparsity.schedule.batch_size,
                   "finetune": cfg.finetune.batch_size}  # fmt: skip
        record.provenance["data_parallel"] = {
            "processes": world,
            "global_batch": batches,
            "batch_per_process": {k: v // world for k, v in batches.items()},
            "batch_norm": "global-batch statistics (summed over the processes)",
        }
    if launcher_bf16(ctx.device) and not cfg.amp:
        cfg = dataclasses.replace(cfg, amp=True)
        record.provenance["bf16_autocast"] = "from the launcher (accelerate --mixed_precision bf16)"
    with ctx.phase("data"):
        data = _data(cfg, ctx.device)
    seeds = list(cfg.seeds)
    workers = min(default_workers(), len(seeds)) if ctx.device.type == "cpu" and world == 1 else 1
    jobs = [(cfg, seed, ctx.cache, str(ctx.device)) for seed in seeds]
    with ctx.phase("seed runs"):  # in the workers: their own breakdown is summed into seed_phases_s
        done = map_jobs(seed_job, jobs, workers=workers, desc="masksparsity seeds")
    per_seed = [d["results"] for d in done]
    with ctx.phase("timing measurements"):  # here, alone: no worker process runs any more
        speedups: list[dict[str, float]] = []
        for d in done:
            dense = d["models"].pop("dense").to(ctx.device)
            speedups.append({})
            for op, tuned in d["models"].items():
                if dist.is_main():  # one process times; the others wait for its numbers
                    example = data.example(cfg.prune.latency_batch).normal_()
                    cmp = compare_latency(dense, tuned.to(ctx.device), example,
                                          rounds=cfg.prune.latency_rounds)  # fmt: skip
                    speedups[-1][op] = cmp.speedup
        for res, sp in zip(per_seed, dist.broadcast_object(speedups), strict=True):
            for op, value in sp.items():
                res["post"][op][MS]["speedup"] = value
    worker_phases: dict[str, float] = {}
    for d in done:
        for name, sec in d["phases_s"].items():
            worker_phases[name] = round(worker_phases.get(name, 0.0) + sec, 2)
    record.provenance.update(workers=workers, threads_per_worker=1 if workers > 1 else ctx.threads,
                             seed_phases_s=worker_phases)  # fmt: skip
    _fill_record(record, cfg, ctx, data, per_seed)
    add_claims(record)
    return record


def _fill_record(record: RunRecord, cfg: MaskSparsityConfig, ctx: RunContext, data: Data, per_seed: list[dict]) -> None:
    seeds = record.seeds

    def add(table, setting, metric, key_fn, **kw):
        values = [key_fn(s) for s in per_seed]
        if any(v is None for v in values):
            return
        record.add(table, setting, metric, values, seeds=seeds, **kw)

    first = per_seed[0]
    ops = list(first["post"])
    for label in first["pre"]:
        for metric, key, unit, digits in ((TRAIN_ACC, "train_acc", "%", 2), (TRAIN_LOSS, "train_loss", "", 3),
                                          (TEST_ACC, "test_acc", "%", 2)):  # fmt: skip
            add(PRE_TABLE, label, metric, lambda s, label=label, key=key: s["pre"][label][key], unit=unit,
                digits=digits)  # fmt: skip
    op0 = ops[0]
    for label in first["gamma"]:
        setting = ms_pre_label(op0) if label == MS else label
        for metric, key, scale, unit, digits in (
            ("mean |γ| of kept channels", "kept_mean_abs_gamma", 1, "", 4),
            ("mean |γ| of masked channels", "masked_mean_abs_gamma", 1, "", 4),
            (f"masked γ below {cfg.prune.threshold:g}", "masked_below_small", 100, "%", 1),
        ):
            add(PRE_TABLE, setting, f"{metric} (mask {op0})",
                lambda s, label=label, key=key, scale=scale: scale * s["gamma"][label][key],
                unit=unit, digits=digits)  # fmt: skip
    for op in ops:
        table = op_table(op)
        for label in first["post"][op]:
            get = lambda key, op=op, label=label: lambda s: s["post"][op][label].get(key)  # noqa: E731
            for key, metric in STAGES:
                add(table, label, metric, get(key), unit="%")
            add(table, label, MASKED_SMALL, get("masked_small"), unit="%", digits=1)
            add(table, label, FLOPS, get("flops_reduction"), unit="%")
            add(table, label, FLOPS_OFFICIAL, get("flops_reduction_official"), unit="%")
            add(table, label, PARAMS, get("params_reduction"), unit="%")
        if MS in first["post"][op]:
            add(table, MS, f"{SPEEDUP} (batch {cfg.prune.latency_batch}, {ctx.threads} threads, timed in the main "
                "process with no worker running)", lambda s, op=op: s["post"][op][MS]["speedup"], unit="x")  # fmt: skip
    for label in first["ref"]:
        add(REF_TABLE, label, FT, lambda s, label=label: s["ref"][label]["ft"], unit="%")
    _paper_table(record, per_seed, ops)
    split_sizes = {name: len(data.splits[name].y) for name in data.splits} if not data.loaders else {
        name: len(ds) for name, ds in data.loaders.items()}  # fmt: skip
    record.extra = {
        "ops": ops,
        "arms": list(first["post"][op0]),
        "mask_kept_channels": [s["masks"] for s in per_seed],
        "gamma_values": {label: {k: [round(v, 6) for v in vals] for k, vals in zip(
            ("kept", "masked"), g["values"], strict=True)} for label, g in first["gamma"].items()},
        "gamma_op": op0,
        "image_size": data.image_size,
        "n_train": data.n_train(),
        "split_sizes": split_sizes,
    }  # fmt: skip


def _paper_table(record: RunRecord, per_seed: list[dict], ops: list[str]) -> None:
    seeds = record.seeds
    if MS not in per_seed[0]["post"][ops[0]]:
        return
    numbers = {(p.setting, p.metric): p for p in PAPER_NUMBERS}
    # FLOPs in the official counter's convention when the run counted them (prune.flops_counter=official)
    official = "flops_reduction_official" in per_seed[0]["post"][ops[0]][MS]
    flops_key = "flops_reduction_official" if official else "flops_reduction"
    rows = (("ResNet-110 / CIFAR-10", "FLOPs reduction", flops_key, 0.6303),
            ("ResNet-110 / CIFAR-10", "params reduction", "params_reduction", 0.6303),
            ("ResNet-50 / ILSVRC-2012", "FLOPs reduction, lower bound ('more than 51.07%')", flops_key,
             0.5107))  # fmt: skip
    for setting, metric, key, target in rows:
        paper = numbers[(setting, metric)]
        # our operating point closest to the paper's FLOPs reduction
        op = min(ops, key=lambda o: abs(per_seed[0]["post"][o][MS][flops_key] / 100 - target))
        where = f"{setting} → ours at {op}" + (", FLOPs as the official counter (conv, linear, BN, ReLU)"
                                               if official and key == flops_key else "")  # fmt: skip
        record.add(PAPER_TABLE, where, metric, [s["post"][op][MS][key] for s in per_seed],
                   seeds=seeds, unit="%", paper=paper.value, paper_source="abstract")  # fmt: skip


def _get(record: RunRecord, table: str, setting: str, metric: str):
    try:
        return record.get(table, setting, metric)
    except KeyError:
        return None


# ----------------------------------------------------------------------------------------------------
# Report


def plot_gamma_histograms(record: RunRecord, path: Path) -> Path:
    values = record.extra["gamma_values"]
    labels = list(values)
    with style():
        fig, axes = plt.subplots(1, len(labels), figsize=(3.0 * len(labels), 2.8), sharey=True, squeeze=False)
        bins = [10**e for e in [x / 4 for x in range(-32, 5)]]
        for ax, label in zip(axes[0], labels, strict=True):
            for part, color in (("kept", method_color("baseline")), ("masked", method_color("ours"))):
                vals = [max(v, 1e-8) for v in values[label][part]]
                ax.hist(vals, bins=bins, color=color, alpha=0.6, label=f"{part} ({len(vals)})")
            ax.set(xscale="log", title=textwrap.fill(label, 28), xlabel="|γ|")
            ax.legend()
        axes[0][0].set_ylabel(f"channels (seed {record.seeds[0]}, mask {record.extra['gamma_op']})")
        return savefig(fig, path)


def plot_accuracy_vs_flops(record: RunRecord, path: Path) -> Path:
    ops = record.extra["ops"]
    with style():
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        for label in record.extra["arms"]:
            pts = []
            for op in ops:
                m = _get(record, op_table(op), label, FT)
                # per arm; records from before per-arm masks had one row for every arm
                f = _get(record, op_table(op), label, FLOPS) or _get(record, op_table(op), OLD_COST_ROW, FLOPS)
                if m and f:
                    pts.append((f.mean, m.mean, m.std))
            if pts:
                color = method_color("ours") if label == MS else method_color(label)
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], label=label,
                            color=color, marker=method_marker(label), capsize=2)  # fmt: skip
        reference = _get(record, REF_TABLE, DENSE_REF, FT)
        if reference:
            ax.axhline(reference.mean, color=method_color("dense"), linestyle="--", linewidth=1,
                       label="unpruned, same total epochs")  # fmt: skip
        ax.set(xlabel="FLOPs (MACs) reduction (%)", ylabel="test accuracy after fine-tuning (%)")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        return savefig(fig, path)


def wide_table(measurements: list) -> str:
    """One row per setting, one column per metric (mean ± std over seeds); "–" where an arm lacks a metric."""
    rows: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for m in measurements:
        column = f"{m.metric} [{m.unit}]" if m.unit else m.metric
        if column not in columns:
            columns.append(column)
        rows.setdefault(m.setting, {})[column] = m.ours()
    body = [(setting, *(cells.get(c, "–") for c in columns)) for setting, cells in rows.items()]
    return markdown_table(["Arm", *columns], body)


def _seed_phases(record: RunRecord) -> str:
    p = record.provenance
    phases = p.get("seed_phases_s")
    if not phases:
        return ""
    total = sum(phases.values()) or 1.0
    shares = " · ".join(f"{name} {sec:.0f} s ({100 * sec / total:.0f}%)" for name, sec in phases.items())
    where = f"{p.get('workers')} worker processes of {p.get('threads_per_worker')} thread(s)"
    return f"Inside the seed runs ({where}; seconds summed over the {len(record.seeds)} seeds): {shares}."


def report(record: RunRecord, out_dir: Path) -> str:
    figures = out_dir / "figures"
    plot_gamma_histograms(record, figures / "gamma_histograms.png")
    plot_accuracy_vs_flops(record, figures / "accuracy_vs_flops.png")
    head = default_report(record, out_dir).split("\n\n", 1)[0]  # the provenance line
    seed_phases = _seed_phases(record)
    extra = record.extra
    n = len(record.seeds)
    sizes = extra.get("split_sizes")
    if sizes:
        quick = sizes.get("test_quick", sizes.get("test", 0))
        val = f", {sizes['val']:,} validation images held out of the training set" if "val" in sizes else ""
        setup = (
            f"{extra['n_train']:,} training images at {extra['image_size']}x{extra['image_size']}{val}. Accuracy "
            f"after fine-tuning is measured on {sizes.get('test', 0):,} test images, accuracy before and right after "
            f"pruning on {quick:,} of them, train accuracy on {sizes.get('train_eval', 0):,} training images without "
            f"augmentation. Every cell is mean ± std over {n} seed(s). Within a seed MaskSparsity and the control "
            "share one mask; each Network Slimming run is pruned with a mask from its own γ at the same FLOPs target."
        )
    else:  # a record written before the validation split and per-arm masks
        setup = (
            f"{extra['n_train']} training images at {extra['image_size']}x{extra['image_size']}; every cell is mean "
            f"± std over {n} seed(s). Within a seed every pruned arm is pruned with the same mask."
        )
    parts = [
        head + (f"<br>\n{seed_phases}" if seed_phases else ""),
        setup + " The paper's tables could not be read (paper.py), so only the abstract's operating points have a "
        "Paper column.",
        "![|γ| of kept vs masked channels after each training arm](figures/gamma_histograms.png)\n\n"
        "![test accuracy after fine-tuning vs FLOPs reduction](figures/accuracy_vs_flops.png)",
    ]
    for table, ms in record.tables().items():
        if table == PAPER_TABLE:
            parts.append(f"#### {table}\n\n{paper_vs_ours_table(ms)}")
            continue
        arms = [m for m in ms if not m.metric.startswith(SPEEDUP)]
        rest = [m for m in ms if m not in arms]
        text = f"#### {table}\n\n{wide_table(arms)}"
        if rest:
            rows = [(m.setting, f"{m.metric} [{m.unit}]" if m.unit else m.metric, m.ours(), m.n) for m in rest]
            text += "\n\n" + markdown_table(["Setting", "Metric", "Ours (mean ± std)", "n"], rows)
        parts.append(text)
    if record.claims:
        parts.append(f"#### Claims\n\n{claims_table(record.claims)}")
    return "\n\n".join(parts) + "\n"
