"""The NViT experiment for each preset: runs it, returns the results record (see common.cli).

Pipeline, in four stages. (A) Per seed, in worker processes: the dense ViT (trained here with that seed when
``dense.per_seed``, else one model of seed 0 shared by all seeds, or a local timm/DeiT checkpoint), its top-1, its
logits on the training images (the fixed KD target of every later KD step, computed once), the gate identity and
the score-vs-true-loss check (App. B.5). (B) Per seed and method, in workers: one pruning run (NViT = Hessian
score, global ranking, latency term; the baselines: uniform allocation, other global criteria; the η ablation),
snapshotted at every latency target. (C) Per seed and method, in workers: each snapshot converted to a dense model,
topped up to the same number of KD batches (the most any run of stage B used, at least the configured budget),
fine-tuned with KD and evaluated (top-1, params, FLOPs); per seed, NViT's architecture trained from scratch with
the same compute; once, the ReViT rule. (D) In this process, with no worker running: the measured speedup of
every converted model against its dense model, timed interleaved. The claims are judged by ``nvit.claims``.

Every job seeds itself and runs one torch thread, so a record is the same with 1 or 2 workers
(``PRUNE_REPRO_WORKERS``) apart from timings (``tests/nvit/test_reproduce.py``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch.utils.data import TensorDataset

from common import distributed
from common.cli import RunContext, default_report
from common.config import ConfigError, config_hash, to_dict
from common.counting import count_params, model_cost
from common.data import DatasetNotFoundError
from common.errors import PathNotFoundError
from common.latency import compare_latency_many
from common.parallel import default_workers, map_jobs
from common.plotting import method_color, method_marker, plt, savefig, style
from common.results import RULES_MARKDOWN, RunRecord, claims_table, load_record, markdown_table
from common.runtime import ArtifactCache, PhaseTimer, device_name, generator, progress, seed_everything

from . import claims as nvit_claims
from . import paper as paper_numbers
from .claims import NVIT, method_name, snapshot_of, target_label, values_of
from .config import NViTConfig
from .latency import LatencyTable, analytic_table, measured_table
from .method import STRUCTURES, SaliencyAccumulator, layer_mask
from .models import FlexViT, ViTDims, count_dims_params, from_timm, scale_revit_to, set_drop_path, to_dense
from .prune import PruneSettings, prune
from .train import (
    BatchStream,
    Data,
    batches_per_epoch,
    evaluate,
    load_data,
    logits_of,
    make_mixup,
    train_dense,
    train_steps,
    with_teacher_logits,
)

log = logging.getLogger(__name__)

FORMAT = 2
"""Bump when the code changes what a cached artifact contains (2: dense models per seed, teacher logits, the
converted models' weights in the fine-tune entries, timings apart)."""

T1 = "Table 1 analogue: dense vs NViT-pruned"
T_BASE = "Methods at the same latency targets and the same KD budget"
T_KEPT = "Kept fraction of each structure type (%)"
T_SCORE = "Score vs true loss change of removing a group (App. B.5 analogue)"
T_ETA = "Latency-aware score (Eq. 7): η ablation at the first target"
T_SCRATCH = "Pruned + KD vs the same architecture trained from scratch"
T_REVIT = "ReViT rule (Table 6) vs the uniform (DeiT-rule) model of about the same size, from scratch"
T_CHECK = "Exactness checks"
HESSIAN_OFFICIAL = "hessian with the official structure factors"
HESSIAN_RAW = "hessian, raw Eq. 6 on the full dependency sets (no structure factors)"

# ---------------------------------------------------------------------------------------------------------
# Building blocks


_SOLO = False
"""True while one process works alone (rank 0 timing the models after the others have finished)."""


@contextlib.contextmanager
def solo():
    """Inside, :func:`cached` uses no collectives: this process works alone (it must only read entries)."""
    global _SOLO
    _SOLO = True
    try:
        yield
    finally:
        _SOLO = False


def cached(cache: ArtifactCache, tag: str, key: Any, create):
    """``cache.get_or_create_together`` (data-parallel processes create an entry together, rank 0 writes it), or
    plain ``get_or_create`` while this process works alone (:func:`solo`)."""
    return cache.get_or_create(tag, key, create) if _SOLO else cache.get_or_create_together(tag, key, create)


def dense_dims(cfg: NViTConfig) -> ViTDims:
    m = cfg.model
    return ViTDims.uniform(depth=m.depth, emb=m.emb, heads=m.heads, qk=m.qk, v=m.v, mlp=m.mlp,
                           image_size=m.image_size, patch_size=m.patch_size, in_chans=m.in_chans,
                           num_classes=m.num_classes, distillation_token=m.distillation_token)  # fmt: skip


def load_pretrained(cfg: NViTConfig) -> FlexViT:
    """The dense model from ``model.pretrained_path``: a timm model name + its state dict (fused qkv ok)."""
    path = Path(cfg.model.pretrained_path).expanduser()
    if not cfg.model.pretrained_path or not path.is_file():
        raise PathNotFoundError(
            f"model.pretrained_path={cfg.model.pretrained_path!r} is not a file. Put the dense weights to prune there "
            f"(paper: deit_base_distilled_patch16_224, a timm/DeiT state dict) and pass "
            "--set model.pretrained_path=/path/to/weights.pth"
        )
    import timm

    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("model", blob.get("state_dict", blob)) if isinstance(blob, dict) else blob
    if cfg.model.name == "tiny_vit":
        model = FlexViT(dense_dims(cfg))
        model.load_state_dict(state)
        return model
    tm = timm.create_model(cfg.model.name, pretrained=False, num_classes=cfg.model.num_classes,
                           img_size=cfg.model.image_size)  # fmt: skip
    tm.load_state_dict(state)
    return from_timm(tm)


def load_cnn_teacher(cfg: NViTConfig, device: torch.device):
    if not cfg.kd.cnn_teacher or not cfg.model.distillation_token:
        return None
    path = Path(cfg.kd.cnn_teacher_path).expanduser()
    if not cfg.kd.cnn_teacher_path or not path.is_file():
        raise PathNotFoundError(
            f"kd.cnn_teacher_path={cfg.kd.cnn_teacher_path!r} is not a file. Put the CNN teacher's weights there "
            f"(paper: RegNetY-16GF, timm {cfg.kd.cnn_teacher!r}) or set --set kd.cnn_teacher=''"
        )
    import timm

    teacher = timm.create_model(cfg.kd.cnn_teacher, pretrained=False, num_classes=cfg.model.num_classes)
    blob = torch.load(path, map_location="cpu", weights_only=False)
    teacher.load_state_dict(blob.get("model", blob) if isinstance(blob, dict) else blob)
    return teacher.to(device).eval()


def check_inputs(cfg: NViTConfig) -> None:
    """Fail early, with what to put where, when a preset needs local files that are missing."""
    if cfg.data.dataset == "imagenet":
        root = Path(cfg.data.root).expanduser() if cfg.data.root else None
        if root is None or not (root / "train").is_dir() or not (root / "val").is_dir():
            raise DatasetNotFoundError(
                f"ImageNet not found at data.root={cfg.data.root!r}. Put ImageNet-1K as an ImageFolder (train/<wnid>/"
                "*.JPEG and val/<wnid>/*.JPEG) in a directory and pass --set data.root=/path/to/imagenet"
            )
    targets = cfg.prune.latency_targets
    for name, chosen in (("prune.baseline_targets", cfg.prune.baseline_targets),
                         ("finetune.scratch_targets", cfg.finetune.scratch_targets)):  # fmt: skip
        missing = [c for c in chosen if not any(abs(c - t) < 1e-9 for t in targets)]
        if missing:
            raise ConfigError(f"{name}={chosen} must be a subset of prune.latency_targets={targets} (not: {missing})")
    if cfg.dense.epochs == 0:
        path = Path(cfg.model.pretrained_path).expanduser()
        if not cfg.model.pretrained_path or not path.is_file():
            raise PathNotFoundError(
                f"dense.epochs == 0 needs model.pretrained_path (got {cfg.model.pretrained_path!r}). Put the dense "
                "weights there (paper: deit_base_distilled_patch16_224) or train here with --set dense.epochs=N"
            )


def build_lut(cfg: NViTConfig, ctx: RunContext, tokens: int) -> LatencyTable:
    lat = cfg.latency
    if lat.lut_path:
        return LatencyTable.load(lat.lut_path)
    grid = (lat.grid_emb, lat.grid_heads, lat.grid_qk, lat.grid_v, lat.grid_mlp)
    if lat.lut == "analytic":
        return analytic_table(grid, tokens=tokens, head_cost=lat.head_cost, block_cost=lat.block_cost)
    key = {"grid": grid, "tokens": tokens, "batch": lat.timing_batch_size, "repeats": lat.timing_repeats,
           "device": str(ctx.device), "threads": ctx.threads, "format": FORMAT}  # fmt: skip

    def measure() -> dict:
        return measured_table(
            grid, tokens=tokens, batch_size=lat.timing_batch_size, device=ctx.device, repeats=lat.timing_repeats
        ).to_json()

    if distributed.world_size() > 1:  # timed by rank 0 alone, so every process ranks with the same table
        data = ctx.cache.get_or_create("lut", key, measure) if distributed.is_main() else None
        return LatencyTable.from_json(distributed.broadcast_object(data))
    return LatencyTable.from_json(ctx.cache.get_or_create("lut", key, measure))


def settings_for(cfg: NViTConfig, label: str, targets: tuple[float, ...]) -> PruneSettings:
    p, lat = cfg.prune, cfg.latency
    lr = p.lr * (p.batch_size / 512 if p.scale_lr_by_batch else 1.0)
    base = PruneSettings(
        criterion=p.criterion, allocation="global", structure_divisors=p.structure_divisors,
        score_momentum=p.score_momentum, group_sizes=p.group_sizes, groups_per_step=p.groups_per_step,
        interval=p.interval, max_steps=p.max_steps, targets=targets, lr=lr, weight_decay=p.weight_decay,
        eta=lat.eta, eta_mode=lat.eta_mode, bonus_floor=lat.bonus_floor, uniform_step=p.uniform_step,
        kl_coeff=cfg.kd.prune_kl_coeff, tau=cfg.kd.prune_tau, target_metric=p.target_metric,
        score_weights=p.score_weights, accumulation=cfg.accumulation,
    )  # fmt: skip
    if label == NVIT:
        return base
    if label == "uniform":
        return dataclasses.replace(base, allocation="uniform", criterion=p.criterion, eta=0.0)
    if label.startswith("η="):
        return dataclasses.replace(base, eta=float(label[2:]))
    # a global-criterion baseline: compared with NViT's score at eta = 0, so no latency term either
    return dataclasses.replace(base, criterion=label, eta=0.0)


def _subset(targets: tuple[float, ...], chosen: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(t for t in targets if not chosen or any(abs(t - c) < 1e-9 for c in chosen))


def method_labels(cfg: NViTConfig) -> list[tuple[str, tuple[float, ...]]]:
    """(label, targets) of every pruning run of one seed."""
    targets = tuple(cfg.prune.latency_targets)
    base_t = _subset(targets, cfg.prune.baseline_targets)
    runs = [(NVIT, targets)] + [(b, targets if b == "uniform" else base_t) for b in cfg.prune.baselines]
    for e in cfg.latency.eta_ablation:
        if e != cfg.latency.eta:
            tg = targets[:1] if e else tuple(sorted(set(targets[:1]) | set(base_t), reverse=True))
            runs.append((f"η={e:g}", tg))
    return runs


# ---------------------------------------------------------------------------------------------------------
# One seed's pieces (each runs in a worker process, or here with one worker)


@dataclasses.dataclass
class JobContext:
    """What an :class:`Experiment` needs besides its config, in a worker process: device, cache, threads, and a
    timer whose phases (dense training, pruning, fine-tuning, evaluation, ...) the job reports back."""

    device: torch.device
    cache: ArtifactCache
    threads: int
    timer: PhaseTimer = dataclasses.field(default_factory=PhaseTimer)

    def phase(self, name: str):
        return self.timer.phase(name)


class Experiment:
    def __init__(self, cfg: NViTConfig, ctx: JobContext | RunContext, lut: LatencyTable | None = None):
        self.cfg, self.ctx, self.device = cfg, ctx, ctx.device
        check_inputs(cfg)
        self.data: Data = load_data(cfg.data, cfg.model)
        self.cnn_teacher = load_cnn_teacher(cfg, self.device)
        cfg_key = to_dict(cfg)
        cfg_key.pop("seeds")
        self.key = {"cfg": cfg_key, "format": FORMAT}
        x0 = self.data.test[0][0]
        self.example = x0.unsqueeze(0)
        self.bpe = batches_per_epoch(self.data, cfg.finetune.batch_size)
        self.lut = lut
        self.train_extras = {"mixup": make_mixup(cfg.data, cfg.model.num_classes), "amp": cfg.amp,
                             "accumulation": cfg.accumulation}  # fmt: skip
        self.stream_extras = {"num_workers": cfg.data.num_workers,
                              "repeated_augmentation": cfg.data.repeated_augmentation}  # fmt: skip
        self._dense: dict[int, FlexViT] = {}

    def timing_inputs(self) -> torch.Tensor:
        x0 = self.data.test[0][0]
        return torch.randn(self.cfg.latency.timing_batch_size, *x0.shape, generator=generator(0)).to(self.device)

    # ---------------------------------------------------------------- the dense model of a seed
    def dense_seed(self, seed: int) -> int:
        """The seed whose dense model ``seed`` prunes: itself with ``dense.per_seed``, else 0 (one shared model)."""
        return seed if self.cfg.dense.per_seed else 0

    def dense_key(self, seed: int) -> dict:
        cfg = self.cfg
        data = {k: v for k, v in to_dict(cfg.data).items() if k != "num_workers"}  # loading speed, not results
        key = {"model": to_dict(cfg.model), "data": data, "dense": to_dict(cfg.dense),
               "seed": self.dense_seed(seed), "format": FORMAT}  # fmt: skip
        if cfg.accumulation != 1:
            key["accumulation"] = cfg.accumulation
        return key

    def dense(self, seed: int) -> FlexViT:
        """The dense model that ``seed`` prunes (trained once, cached; memoised in this process)."""
        s = self.dense_seed(seed)
        if s in self._dense:
            return self._dense[s]
        cfg = self.cfg
        if cfg.dense.epochs == 0:
            model = load_pretrained(cfg).to(self.device).eval()
        else:

            def create() -> dict:
                seed_everything(s)
                m = FlexViT(dense_dims(cfg)).to(self.device)
                train_dense(m, self.data, cfg.dense, seed=s, device=self.device, **self.stream_extras,
                            **self.train_extras)  # fmt: skip
                return {k: v.cpu() for k, v in m.state_dict().items()}

            model = FlexViT(dense_dims(cfg))
            model.load_state_dict(cached(self.ctx.cache, "dense", self.dense_key(seed), create))
            model = model.to(self.device).eval()
        self._dense[s] = model
        return model

    def kd_train_set(self, seed: int):
        """The training set every KD loop of ``seed`` draws from: the images and labels with the dense model's
        logits of each image as a third tensor, computed once (no teacher forward pass per KD step). Only where
        the teacher sees exactly the student's input (in-memory data, no mixup/cutmix, no autocast); otherwise
        the plain training set, and the loops run the teacher on each batch."""
        train = self.data.train
        autocast = self.cfg.amp and self.device.type == "cuda"
        cacheable = (isinstance(train, TensorDataset) and len(train.tensors) == 2
                     and self.train_extras["mixup"] is None and not autocast)  # fmt: skip
        if not cacheable:
            return train
        dense = self.dense(seed)
        logits = cached(
            self.ctx.cache, "teacher-logits", {**self.dense_key(seed), "n": len(train)},
            lambda: logits_of(dense, train, self.device),
        )  # fmt: skip
        return with_teacher_logits(train, logits)

    def dense_job(self, seed: int) -> dict:
        """Stage A for one seed: its dense model, top-1, teacher logits, the gate identity and the score check."""
        with self.ctx.phase("dense training"):
            dense = self.dense(seed)
            self.kd_train_set(seed)  # the teacher logits, cached for stages B and C
        with self.ctx.phase("evaluation"):
            ev = cached(self.ctx.cache, "dense-eval", self.dense_key(seed),
                        lambda: evaluate(dense, self.data.test, self.device))  # fmt: skip
        out = {"seed": seed, "dense_seed": self.dense_seed(seed), "top1": ev["top1"], "loss": ev["loss"]}
        with self.ctx.phase("scoring"):
            out["gate_identity"] = self.gate_identity(dense)
            if self.cfg.score_check.groups:
                out["score_check"] = cached(
                    self.ctx.cache, "score", {**self.key, "seed": seed}, lambda: self.score_check(dense, seed)
                )
        return out

    # ---------------------------------------------------------------- C1
    def gate_identity(self, dense: FlexViT) -> dict:
        """Max relative error between (∂L/∂g_S)² of a weight gate and (Σ w ∂L/∂w)² for one unit per structure,
        in float64, and the smallest |Σ w ∂L/∂w| probed (a relative error of zeros would say nothing)."""
        model = copy.deepcopy(dense).double().cpu().train()
        x, y = next(iter(torch.utils.data.DataLoader(self.data.train, batch_size=16)))[:2]
        x = x.double()
        loss = F.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        from .method import weight_times_grad

        wg = weight_times_grad(model)
        errs, sizes = [], []
        for layer in [("EMB", None), ("H", 0), ("QK", 0), ("V", 0), ("MLP", 0)]:
            unit = 0
            probe = copy.deepcopy(model)
            layer_mask(probe, layer)[unit] = 0.0
            indicator = {n: 1.0 - m.double() for n, m in probe.param_masks().items()}
            gate = torch.ones((), dtype=torch.float64, requires_grad=True)
            params = {n: p.detach() * (1 + (gate - 1) * indicator[n]) for n, p in model.named_parameters()}
            buffers = dict(model.named_buffers())
            out = torch.func.functional_call(model, {**params, **buffers}, (x,))
            (g,) = torch.autograd.grad(F.cross_entropy(out, y), gate)
            ours = float(wg[layer][unit]) ** 2
            errs.append(abs(float(g) ** 2 - ours) / max(abs(ours), 1e-300))
            sizes.append(abs(float(wg[layer][unit])))
        return {"max_rel_err": max(errs), "min_abs_wg": min(sizes)}

    # ---------------------------------------------------------------- C2
    def score_check(self, dense: FlexViT, seed: int) -> dict:
        sc, cfg = self.cfg.score_check, self.cfg
        g = generator(seed + 101)
        idx = torch.randperm(self.data.n_train, generator=g)[: sc.images]
        x_all, y_all = self.data.train[idx][:2] if isinstance(self.data.train, TensorDataset) else (None, None)
        if x_all is None:
            subset = torch.utils.data.Subset(self.data.train, idx.tolist())
            x_all, y_all = next(iter(torch.utils.data.DataLoader(subset, batch_size=len(subset))))[:2]
        x_all, y_all = x_all.to(self.device), y_all.to(self.device)
        model = copy.deepcopy(dense).train()
        # the configured score, and beside it one variant: the official factors on our dependency sets where the
        # configured score is the raw one on them (mini), else the raw Eq. 6 score on the dependency sets
        official = (12.0, 12.0, 2.0, 2.0, 1.0)
        weights, divisors = cfg.prune.score_weights, cfg.prune.structure_divisors
        variant = (HESSIAN_OFFICIAL, official) if tuple(divisors) != official else (HESSIAN_RAW, (1.0,) * 5)
        accs = {
            "hessian": SaliencyAccumulator("hessian", divisors=divisors, weights=weights),
            variant[0]: SaliencyAccumulator("hessian", divisors=variant[1]),
            "first_order": SaliencyAccumulator("first_order", divisors=divisors, weights=weights),
            "taylor_elementwise": SaliencyAccumulator("taylor_elementwise"),
            "magnitude": SaliencyAccumulator("magnitude"),
            "random": SaliencyAccumulator("random", generator=generator(seed + 202)),
        }
        for i in range(0, len(x_all), sc.batch_size):
            model.zero_grad()
            F.cross_entropy(model(x_all[i : i + sc.batch_size]), y_all[i : i + sc.batch_size]).backward()
            for acc in accs.values():
                acc.add_batch(model)
        scores = {
            name: acc.step_scores(model)
            for name, acc in accs.items()
            if name in sc.criteria or name.startswith("hessian")
        }
        model.eval()

        @torch.inference_mode()
        def mean_loss(m) -> float:
            return float(F.cross_entropy(m(x_all), y_all, reduction="sum")) / len(y_all)

        base = mean_loss(model)
        rand_gen = generator(seed + 303)
        size = dict(zip(STRUCTURES, cfg.prune.group_sizes, strict=True))
        rows = []
        for _ in progress(range(sc.groups), desc="score check", leave=False):
            s = STRUCTURES[int(torch.randint(5, (1,), generator=g))]
            layer = ("EMB", None) if s == "EMB" else (s, int(torch.randint(model.dims.depth, (1,), generator=g)))
            n = len(layer_mask(model, layer))
            units = torch.randperm(n, generator=g)[: min(size[s], n - 1) or 1].tolist()
            mask = layer_mask(model, layer)
            mask[torch.tensor(units)] = 0.0  # the forward pass applies the masks: no need to zero the weights
            row = {"structure": s, "delta_loss": mean_loss(model) - base}
            mask.fill_(1.0)
            for name, sc_ in scores.items():  # a group scores the sum of its units' (NViT's grouping) ...
                row[name] = float(sum(float(sc_[layer][u]) for u in units))
            if "random" in row:  # ... except random: one draw per group, whatever its size
                row["random"] = float(torch.rand((), generator=rand_gen, dtype=torch.float64))
            rows.append(row)
        true = [r["delta_loss"] for r in rows]
        rho = {name: float(spearmanr([r[name] for r in rows], true).statistic) for name in scores}
        by_structure = {s: float(np.mean([r["delta_loss"] for r in rows if r["structure"] == s] or [np.nan]))
                        for s in STRUCTURES}  # fmt: skip
        return {"rho": rho, "mean_delta_loss": by_structure, "groups": len(rows),
                "median_abs_delta_loss": float(np.median(np.abs(true))) if true else float("nan")}  # fmt: skip

    # ---------------------------------------------------------------- pruning runs
    def prune_key(self, seed: int, label: str, targets) -> dict:
        return {**self.key, "seed": seed, "label": label, "targets": list(targets)}

    def prune_method(self, label: str, targets, seed: int) -> dict:
        """The pruning run of one method (cached): its snapshots (masked states) and history."""
        key = self.prune_key(seed, label, targets)
        return cached(self.ctx.cache, "prune", key, lambda: self._prune_method(label, targets, seed))

    def prune_job(self, seed: int, label: str, targets) -> dict:
        """Stage B: one pruning run; returns what the parent needs (no weights)."""
        with self.ctx.phase("pruning"):
            run = self.prune_method(label, targets, seed)
        return {"label": label, "reached_all": run["reached_all"],
                "snapshots": [{"target": s.target, "batches": s.batches, "dims": s.dims.to_json()}
                              for s in run["snapshots"]]}  # fmt: skip

    def _prune_method(self, label: str, targets, seed: int) -> dict:
        cfg = self.cfg
        dense = self.dense(seed)
        train = self.kd_train_set(seed)
        settings = settings_for(cfg, label, targets)
        per_target_runs = [targets] if cfg.prune.snapshot_targets else [(t,) for t in targets]
        snapshots, runs = [], []
        for tgs in per_target_runs:
            seed_everything(seed)
            student = copy.deepcopy(dense).train()
            stream = BatchStream(train, cfg.prune.batch_size, seed, **self.stream_extras)  # accumulation: settings
            run = prune(student, dense, stream, dataclasses.replace(settings, targets=tuple(tgs)), self.lut,
                        device=self.device, kd=cfg.kd, seed=seed, cnn_teacher=self.cnn_teacher,
                        where=f"nvit KD pruning ({label}), seed {seed}", mixup=self.train_extras["mixup"],
                        amp=self.train_extras["amp"])  # fmt: skip
            snapshots += run.snapshots
            runs.append(run)
        return {"label": label, "eta": runs[0].eta, "history": runs[0].history,
                "negative_fraction": runs[0].negative_fraction, "reached_all": all(r.reached_all for r in runs),
                "snapshots": snapshots}  # fmt: skip

    # ---------------------------------------------------------------- conversion, KD top-up, fine-tune
    def finish_job(self, seed: int, label: str, targets, budget: int) -> dict:
        """Stage C: dense conversion, KD top-up to ``budget`` batches, fine-tune and evaluation of every snapshot
        of one pruning run (cached). The entry keeps each converted model's weights for the timing (stage D)."""
        key = {**self.prune_key(seed, label, targets), "budget": budget}

        def create() -> dict:
            with self.ctx.phase("pruning"):  # a cache hit unless stage B ran elsewhere
                pruned = self.prune_method(label, targets, seed)
            out = {k: v for k, v in pruned.items() if k != "snapshots"} | {"snapshots": []}
            for snap in pruned["snapshots"]:
                out["snapshots"].append(self.finish_snapshot(snap, label, seed, budget))
            return out

        return cached(self.ctx.cache, "finish", key, create)

    def finish_snapshot(self, snap, label: str, seed: int, budget: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        dense = self.dense(seed)
        with ctx.phase("conversion and checks"):
            masked = snap.model(dense.dims).to(self.device).eval()
            small = to_dense(masked).eval()
            equiv = self.conversion_error(masked)
        with ctx.phase("evaluation"):  # top-1 after pruning (the converted model computes what the masked one does)
            after_prune = evaluate(small, self.data.test, self.device)
        top_up = max(0, budget - snap.batches)
        ft_steps = top_up + cfg.finetune.epochs * self.bpe
        lr = cfg.finetune.lr * (cfg.finetune.batch_size / 512 if cfg.finetune.scale_lr_by_batch else 1.0)
        seed_everything(seed + 1000)
        ema = None
        if ft_steps:
            with ctx.phase("fine-tuning"):
                set_drop_path(small, cfg.finetune.drop_path)
                if cfg.finetune.model_ema_decay:
                    from timm.utils import ModelEmaV2

                    ema = ModelEmaV2(small, decay=cfg.finetune.model_ema_decay)
                stream = BatchStream(self.kd_train_set(seed), cfg.finetune.batch_size, seed + 1000,
                                     **self.stream_extras)  # fmt: skip
                train_steps(small, stream, ft_steps, lr=lr, weight_decay=cfg.finetune.weight_decay,
                            device=self.device, teacher=dense, kl_coeff=cfg.kd.finetune_kl_coeff,
                            tau=cfg.kd.finetune_tau, kd=cfg.kd, desc=f"fine-tune {label}", cnn_teacher=self.cnn_teacher,
                            where=f"nvit KD fine-tune ({label} at target {snap.target:g}), seed {seed}", ema=ema,
                            **self.finetune_recipe(), **self.train_extras)  # fmt: skip
                set_drop_path(small, 0.0)
        with ctx.phase("evaluation"):
            after_ft = evaluate(small, self.data.test, self.device)
            cost = model_cost(copy.deepcopy(small).cpu(), self.example)
            extra = {"top1_ft_ema": evaluate(ema.module, self.data.test, self.device)["top1"]} if ema else {}
        pruned_fraction = 1.0 - min(snap.kept.values())
        return extra | {
            "target": snap.target, "step": snap.step, "prune_batches": snap.batches, "top_up_batches": top_up,
            "kd_batches": snap.batches + ft_steps, "latency_ratio_lut": snap.latency_ratio,
            "macs_ratio": snap.macs_ratio, "kept": snap.kept, "dims": snap.dims.to_json(),
            "top1_pruned": after_prune["top1"], "top1_ft": after_ft["top1"], "loss_ft": after_ft["loss"],
            "equivalence_max_abs_diff": equiv, "most_pruned_fraction": pruned_fraction,
            "params": cost.params, "flops": cost.flops,
            "small_state": {k: v.detach().cpu().clone() for k, v in small.state_dict().items()},
        }  # fmt: skip

    def finetune_recipe(self) -> dict:
        """The fine-tune recipe's options of :func:`nvit.train.train_steps` beyond lr and KD weights."""
        return {"min_lr": self.cfg.finetune.min_lr, "kl_per_head": self.cfg.kd.finetune_kl_per_head}

    def conversion_error(self, masked: FlexViT) -> float:
        """Max |logit difference| between the masked model and its dense conversion, both in float64, on 64 test
        images (float64 so that the check tests the conversion, not float32 summation order)."""
        m64 = copy.deepcopy(masked).double().cpu().eval()
        x = self.data.test[:64][0] if isinstance(self.data.test, TensorDataset) else (
            next(iter(torch.utils.data.DataLoader(self.data.test, batch_size=64)))[0])  # fmt: skip
        with torch.inference_mode():
            return float((m64(x.double()) - to_dense(m64).eval()(x.double())).abs().max())

    # ---------------------------------------------------------------- the from-scratch control
    def scratch_job(self, seed: int, target: float, dims_json: dict, kd_steps: int) -> dict:
        """NViT's pruned architecture at ``target`` from random init, with the same compute as the pruned model's
        whole path: the dense recipe for ``dense.epochs`` (as the dense model was trained), then ``kd_steps`` KD
        batches with the fine-tune recipe (as many as the pruned model got in pruning, top-up and fine-tune).
        The attention scale is QK**-0.5 of its own (pruned) width."""
        cfg = self.cfg
        dims = dataclasses.replace(ViTDims.from_json(dims_json), scale=())
        key = {**self.key, "seed": seed, "scratch": dims.to_json(), "kd_steps": kd_steps}

        def create() -> dict:
            dense = self.dense(seed)
            train = self.kd_train_set(seed)
            with self.ctx.phase("controls"):
                seed_everything(seed + 5000)
                model = FlexViT(dims).to(self.device)
                if cfg.dense.epochs:
                    train_dense(model, self.data, cfg.dense, seed=seed + 5000, device=self.device,
                                where=f"nvit scratch baseline, dense recipe, seed {seed}", **self.stream_extras,
                                **self.train_extras)  # fmt: skip
                lr = cfg.finetune.lr * (cfg.finetune.batch_size / 512 if cfg.finetune.scale_lr_by_batch else 1.0)
                set_drop_path(model, cfg.finetune.drop_path)
                stream = BatchStream(train, cfg.finetune.batch_size, seed + 6000, **self.stream_extras)
                train_steps(model, stream, kd_steps, lr=lr,
                            weight_decay=cfg.finetune.weight_decay, device=self.device, teacher=dense,
                            kl_coeff=cfg.kd.finetune_kl_coeff, tau=cfg.kd.finetune_tau, kd=cfg.kd, desc="scratch",
                            cnn_teacher=self.cnn_teacher, where=f"nvit scratch baseline, KD recipe, seed {seed}",
                            **self.finetune_recipe(), **self.train_extras)  # fmt: skip
                set_drop_path(model, 0.0)
            with self.ctx.phase("evaluation"):
                top1 = evaluate(model, self.data.test, self.device)["top1"]
            dense_batches = cfg.dense.epochs * batches_per_epoch(self.data, cfg.dense.batch_size)
            return {"top1_scratch": top1, "scratch_steps": dense_batches + kd_steps,
                    "scratch_dense_steps": dense_batches}  # fmt: skip

        return {"seed": seed, "target": target, **cached(self.ctx.cache, "scratch", key, create)}

    # ---------------------------------------------------------------- ReViT
    def revit_dims(self) -> ViTDims:
        base = dense_dims(self.cfg)
        return scale_revit_to(count_dims_params(base), base.depth, head_dim=self.cfg.model.v, base=base,
                              rule=self.cfg.revit_rule)  # fmt: skip

    def revit_job(self, seed: int, uniform_too: bool) -> dict:
        """A ReViT-rule model of about the dense model's size, from scratch with the dense recipe for
        ``revit_epochs`` (seed ``seed``); with ``uniform_too`` also the uniform (dense) architecture at those epochs
        (when they differ from the dense model's, whose runs are the uniform arm otherwise)."""
        cfg = self.cfg
        dims = self.revit_dims()
        dense_cfg = dataclasses.replace(cfg.dense, epochs=cfg.revit_epochs)

        def train(d: ViTDims) -> dict:
            with self.ctx.phase("controls"):
                seed_everything(seed)
                model = FlexViT(d).to(self.device)
                train_dense(model, self.data, dense_cfg, seed=seed, device=self.device,
                            where=f"nvit ReViT comparison training, seed {seed}", **self.stream_extras,
                            **self.train_extras)  # fmt: skip
            with self.ctx.phase("evaluation"):
                return {"top1": evaluate(model, self.data.test, self.device)["top1"], "params": count_params(model),
                        "macs": model_cost(model.cpu(), self.example).macs}  # fmt: skip

        out = {"revit": cached(self.ctx.cache, "revit", {**self.key, "revit": dims.to_json(), "seed": seed},
                               lambda: train(dims))}  # fmt: skip
        if uniform_too:
            out["uniform"] = cached(
                self.ctx.cache,
                "revit-uniform",
                {**self.key, "uniform": True, "seed": seed},
                lambda: train(dense_dims(cfg)),
            )
        return out


_EXPERIMENTS: dict[tuple, Experiment] = {}
"""One :class:`Experiment` per config in each process (workers keep the data and dense models between jobs)."""


def _run_job(kind: str, cfg: NViTConfig, cache_root: str, device: str, lut: dict, *args) -> tuple[Any, dict]:
    """One job of stage A, B or C (a module-level function, so that worker processes can run it): its result and
    the seconds it spent per phase."""
    key = (config_hash(cfg), cache_root, device)
    exp = _EXPERIMENTS.get(key)
    if exp is None:
        ctx = JobContext(torch.device(device), ArtifactCache("nvit", root=Path(cache_root)), torch.get_num_threads())
        exp = _EXPERIMENTS[key] = Experiment(cfg, ctx, LatencyTable.from_json(lut))
    exp.ctx.timer = PhaseTimer()
    result = getattr(exp, f"{kind}_job")(*args)
    return result, dict(exp.ctx.timer.seconds)


def n_workers(ctx: RunContext) -> int:
    """Worker processes for stages A-C: ``common.parallel.default_workers()`` on the CPU (one torch thread each),
    1 on a GPU (one device, one process), and 1 under a data-parallel launcher (every process runs every job on
    its share of each batch)."""
    if distributed.world_size() > 1:
        return 1
    return default_workers() if ctx.device.type == "cpu" else 1


# ---------------------------------------------------------------------------------------------------------
# run


def equal_kd_budget(configured: int, pruning_batches: list[int]) -> tuple[int, int]:
    """(most pruning batches of any snapshot, the KD budget every run gets): the configured budget, raised to
    that maximum if some run needed more, so that no method gets more distillation than another."""
    most = max(pruning_batches, default=0)
    return most, max(configured, most)


def _jobs(ctx: RunContext, name: str, fn_args: list[tuple], workers: int, job_seconds: dict) -> list:
    """Run ``fn_args`` (each ``(kind, *args)``) through :func:`_run_job` in ``workers`` processes, inside the
    phase ``name``; add each job's seconds per phase to ``job_seconds``."""
    with ctx.phase(name):
        out = map_jobs(_run_job, fn_args, workers=workers, desc=name)
    for _, seconds in out:
        for phase, sec in seconds.items():
            job_seconds[phase] = job_seconds.get(phase, 0.0) + sec
    return [result for result, _ in out]


def run(cfg: NViTConfig, ctx: RunContext) -> RunRecord:
    # Phases of the record's time breakdown (provenance["phases_s"]) are the wall time of each stage; the seconds
    # the jobs spent per phase inside the workers are summed in extra["job_seconds"]. Cached stages cost ~0 s.
    _EXPERIMENTS.clear()
    workers = n_workers(ctx)
    with ctx.phase("data"):
        exp = Experiment(cfg, ctx)
    with ctx.phase("timing measurements"):  # the latency table (timed when latency.lut == "measured")
        exp.lut = build_lut(cfg, ctx, dense_dims(cfg).tokens)
        if cfg.latency.lut == "measured" and not cfg.latency.lut_path and distributed.is_main():
            exp.lut.save(ctx.out_dir / "latency_table.json")  # reusable with --set latency.lut_path=...
    common_args = (cfg, str(ctx.cache.dir.parent), str(ctx.device), exp.lut.to_json())
    job_seconds: dict[str, float] = {}
    started = time.perf_counter()

    # stage A: the dense model of every seed, its logits on the training set, the gate identity, the score check
    dense_out = _jobs(ctx, "dense training", [("dense", *common_args, s) for s in cfg.seeds], workers, job_seconds)
    per_seed = [{"seed": d["seed"], "dense": {k: d[k] for k in ("dense_seed", "top1", "loss")},
                 "gate_identity": d["gate_identity"], **{k: d[k] for k in ("score_check",) if k in d}}
                for d in dense_out]  # fmt: skip
    for e in per_seed:
        log.info("seed %d: dense top-1 %.2f%%", e["seed"], e["dense"]["top1"])

    # stage B: every pruning run; then the same KD budget for all, at least the most pruning batches any used
    labels = method_labels(cfg)
    pruned_meta = _jobs(ctx, "pruning", [("prune", *common_args, s, lb, tg) for s in cfg.seeds for lb, tg in labels],
                        workers, job_seconds)  # fmt: skip
    pruned = {(s, lb): m for (s, (lb, _)), m in zip([(s, x) for s in cfg.seeds for x in labels], pruned_meta,
                                                     strict=True)}  # fmt: skip
    most, budget = equal_kd_budget(cfg.prune.kd_budget_batches,
                                   [sn["batches"] for p in pruned.values() for sn in p["snapshots"]])  # fmt: skip
    if budget > cfg.prune.kd_budget_batches:
        log.warning("KD budget raised from %d to %d batches: a run needed that many pruning batches",
                    cfg.prune.kd_budget_batches, budget)  # fmt: skip

    # stage C: fine-tunes, the from-scratch controls and the ReViT check; the longest jobs first
    jobs_c: list[tuple] = []
    revit_seed = cfg.seeds[0] if cfg.seeds else 0
    same_epochs = cfg.revit_epochs == cfg.dense.epochs and cfg.dense.epochs > 0
    if cfg.revit_epochs > 0:
        jobs_c.append(("revit", *common_args, revit_seed, not same_epochs))
    scratch_at = []
    if cfg.finetune.scratch_baseline:
        for s in cfg.seeds:
            for sn in pruned[s, NVIT]["snapshots"]:
                if _subset((sn["target"],), cfg.finetune.scratch_targets):
                    kd_steps = max(budget, sn["batches"]) + cfg.finetune.epochs * exp.bpe
                    jobs_c.append(("scratch", *common_args, s, sn["target"], sn["dims"], kd_steps))
                    scratch_at.append((s, sn["target"]))
    n_special = len(jobs_c)
    jobs_c += [("finish", *common_args, s, lb, tg, budget) for s in cfg.seeds for lb, tg in labels]
    out_c = _jobs(ctx, "fine-tuning and controls", jobs_c, workers, job_seconds)
    revit = None
    if cfg.revit_epochs > 0:
        revit = out_c[0]
    scratch = {(r["seed"], r["target"]): r for r in out_c[int(cfg.revit_epochs > 0) : n_special]}
    finished = dict(zip([(s, lb) for s in cfg.seeds for lb, _ in labels], out_c[n_special:], strict=True))
    workers_s = time.perf_counter() - started
    if not distributed.is_main():  # data parallel: rank 0 times the models alone and writes the record (common.cli)
        _EXPERIMENTS.clear()
        return ctx.new_record()

    # stage D: measured speedups, here, with no worker running
    dense_cost = model_cost(dense_dims_model(cfg).cpu(), exp.example)
    with ctx.phase("timing measurements"), solo():
        timing_inputs = exp.timing_inputs()
        for e in per_seed:
            s = e["seed"]
            dense = exp.dense(s)  # a cache hit: stage A trained it
            e["methods"] = {}
            snaps = {label: [dict(snap) for snap in finished[s, label]["snapshots"]] for label, _ in labels}
            entries = [(label, snap, snap.pop("small_state")) for label, _ in labels for snap in snaps[label]]
            for (_, snap, _), timed in zip(entries, timed_speedups(exp, ctx, dense, entries, timing_inputs, s, budget),
                                           strict=True):  # fmt: skip
                snap |= timed
            for label, _ in labels:
                run_ = {k: v for k, v in finished[s, label].items() if k != "snapshots"}
                run_["snapshots"] = []
                for snap in snaps[label]:
                    snap["params_x"] = dense_cost.params / snap["params"]
                    snap["flops_x"] = dense_cost.flops / snap["flops"]
                    if label == NVIT and (s, snap["target"]) in scratch:
                        r = scratch[s, snap["target"]]
                        snap |= {k: r[k] for k in ("top1_scratch", "scratch_steps", "scratch_dense_steps")}
                    run_["snapshots"].append(snap)
                e["methods"][label] = run_
    _EXPERIMENTS.clear()

    if revit is not None:
        d0 = dense_dims_model(cfg)
        # the uniform arm: the distinct dense models (one per seed, or the one shared model), or its own run
        distinct = {e["dense"]["dense_seed"]: e["dense"]["top1"] for e in per_seed}
        uniform_runs = (
            [{"seed": s, "top1": v} for s, v in distinct.items()]
            if same_epochs else [{"seed": revit_seed, "top1": revit["uniform"]["top1"]}]
        )  # fmt: skip
        revit = {
            "revit": revit["revit"], "revit_seed": revit_seed, "revit_dims": exp.revit_dims().to_json(),
            "uniform": {"params": count_params(d0), "macs": model_cost(d0, exp.example).macs,
                        "top1": float(np.mean([u["top1"] for u in uniform_runs]))},
            "uniform_runs": uniform_runs, "uniform_is_dense": same_epochs,
            "epochs": cfg.revit_epochs, "n_test": exp.data.n_test,
        }  # fmt: skip
    record = ctx.new_record()
    record.extra = {
        "dense": {"top1": float(np.mean([e["dense"]["top1"] for e in per_seed])), "params": dense_cost.params,
                  "flops": dense_cost.flops, "dims": dense_dims(cfg).to_json(),
                  "lut_latency": exp.lut.model_latency(dense_dims(cfg)), "per_seed": cfg.dense.per_seed},
        "lut": {"unit": exp.lut.unit, "description": exp.lut.description},
        "per_seed": per_seed, "revit": revit,
        "gate_identity_max_rel_err": max(e["gate_identity"]["max_rel_err"] for e in per_seed),
        "n_train": exp.data.n_train, "n_test": exp.data.n_test, "timing_batch": cfg.latency.timing_batch_size,
        "threads": ctx.threads, "device": str(ctx.device), "targets": list(cfg.prune.latency_targets),
        "methods": [label for label, _ in labels],
        "kd_budget": {"configured": cfg.prune.kd_budget_batches, "used": budget, "most_pruning_batches": most},
        "target_metric": cfg.prune.target_metric,
        "workers": workers, "workers_wall_s": round(workers_s, 2),
        "job_seconds": {k: round(v, 2) for k, v in job_seconds.items()},
        "timing_protocol": f"timed in the parent process after every worker had finished, {ctx.threads} torch "
                           f"thread(s), {INTERLEAVING.format(rounds=cfg.latency.timing_repeats)}",
        "scratch_at": [list(x) for x in scratch_at],
        "record_format": FORMAT,
    }  # fmt: skip
    if distributed.world_size() > 1:
        world = distributed.world_size()
        record.extra["data_parallel"] = {"processes": world, "accumulation": cfg.accumulation}
        record.extra["timing_protocol"] = (
            f"timed by rank 0 alone after the other {world - 1} process(es) had finished, {ctx.threads} torch "
            f"thread(s), {INTERLEAVING.format(rounds=cfg.latency.timing_repeats)}"
        )
    fill_record(record)
    return record


INTERLEAVING = "each seed's dense model and its pruned models interleaved in the same {rounds} rounds (order rotating)"


def dense_dims_model(cfg: NViTConfig) -> FlexViT:
    """A dense-architecture model (random weights) for counting params and FLOPs, which do not depend on them."""
    return FlexViT(dense_dims(cfg)).eval()


def timed_speedups(exp: Experiment, ctx: RunContext, dense: FlexViT, entries: list[tuple[str, dict, dict]],
                   inputs: torch.Tensor, seed: int, budget: int) -> list[dict]:  # fmt: skip
    """The measured speedups of one seed's converted models, ``entries`` = (label, snapshot, weights), against their
    dense model, all timed in the same interleaved rounds (:func:`common.latency.compare_latency_many`: the dense
    model once per round for all of them); cached per machine kind."""
    cfg = exp.cfg
    key = {"models": [{**exp.prune_key(seed, label, [snap["target"]]), "target": snap["target"]}
                      for label, snap, _ in entries],
           "budget": budget, "batch": cfg.latency.timing_batch_size, "rounds": cfg.latency.timing_repeats,
           "threads": ctx.threads, "device": str(ctx.device), "device_name": device_name(ctx.device),
           "protocol": "shared rounds"}  # fmt: skip

    def measure() -> list[dict]:
        smalls = []
        for _, snap, state in entries:
            small = FlexViT(ViTDims.from_json(snap["dims"]))
            small.load_state_dict(state)
            smalls.append(small.to(ctx.device).eval())
        cmps = compare_latency_many(dense, smalls, inputs, rounds=cfg.latency.timing_repeats,
                                    warmup=max(1, cfg.latency.timing_repeats // 4))  # fmt: skip
        return [{"speedup": c.speedup, "speedup_q1": c.speedup_q1, "speedup_q3": c.speedup_q3,
                 "dense_ms": 1000 * c.a.median_s, "pruned_ms": 1000 * c.b.median_s} for c in cmps]  # fmt: skip

    return ctx.cache.get_or_create("timing", key, measure)


# ---------------------------------------------------------------------------------------------------------
# Record: tables (the claims are judged by nvit.claims)


def fill_record(record: RunRecord) -> None:
    """The tables and claims of a record, from its ``extra`` (per-seed results) and ``config``."""
    cfg = record.config
    ex = record.extra
    per_seed, targets = ex["per_seed"], ex["targets"]
    metric = ex.get("target_metric", "latency")
    thr, batch = ex["threads"], ex["timing_batch"]
    speed_metric = f"measured speedup vs dense ({ex['device']}, batch {batch}, {thr} thread{'s' * (thr > 1)})"
    seeds = [e["seed"] for e in per_seed]
    shared = not ex["dense"].get("per_seed", False)
    record.add(T1, "Dense", "params", ex["dense"]["params"] / 1e6, unit="M", digits=3)
    record.add(T1, "Dense", "FLOPs", ex["dense"]["flops"] / 1e6, unit="M", digits=2)
    if per_seed and "dense" in per_seed[0]:
        record.add(T1, "Dense", "top-1", [e["dense"]["top1"] for e in per_seed], seeds=seeds, unit="%",
                   note="one model shared by all seeds" if shared else "one model per seed")  # fmt: skip
    else:
        record.add(T1, "Dense", "top-1", ex["dense"]["top1"], unit="%", note="shared by all seeds")
    for t in targets:
        setting = f"NViT @ {target_label(t, metric)}"
        paper_row = "NViT-H" if abs(t - 0.5) < 1e-9 else None

        def add(metric, key, unit="", digits=2, paper_metric=None, scale=1.0, t=t, paper_row=paper_row,
                setting=setting, **kw):  # fmt: skip
            vals, ss = values_of(per_seed, NVIT, t, key)
            if not vals:
                return
            vals = [scale * v for v in vals]
            extra = {}
            if paper_row and paper_metric:
                pn = paper_numbers.lookup(paper_row, paper_metric)
                extra = {"paper": pn.value, "paper_source": f"{pn.source}, {paper_row} (DeiT-B, V100)"}
            record.add(T1, setting, metric, vals, seeds=ss, unit=unit, digits=digits, **extra, **kw)

        add("params reduction", "params_x", "x", paper_metric=None)
        add("FLOPs reduction", "flops_x", "x", paper_metric="FLOPs reduction vs DeiT-B")
        add("LUT latency", "latency_ratio_lut", "% of dense", digits=1, scale=100.0)
        add(speed_metric, "speedup", "x", paper_metric="speedup vs DeiT-B, V100, batch 256")
        add("top-1 after pruning, before fine-tune (KD batches differ by method)", "top1_pruned", "%")
        add("top-1 after KD fine-tune", "top1_ft", "%")
        add("top-1 of the fine-tune's weight EMA", "top1_ft_ema", "%")

    for label in ex["methods"]:
        for t in targets:
            vals, _ = values_of(per_seed, label, t, "top1_ft")
            if not vals:
                continue
            setting = f"{method_name(label)} @ {target_label(t, metric)}"
            for metric, key, unit, scale, digits in (
                ("pruning steps", "step", "", 1, 1), ("KD batches", "kd_batches", "", 1, 0),
                ("LUT latency", "latency_ratio_lut", "% of dense", 100, 1),
                ("MACs", "macs_ratio", "% of dense", 100, 1),
                ("measured speedup", "speedup", "x", 1, 2),
                ("top-1 after pruning (unequal KD batches)", "top1_pruned", "%", 1, 2),
                ("top-1 after KD fine-tune", "top1_ft", "%", 1, 2),
            ):  # fmt: skip
                v, ss = values_of(per_seed, label, t, key)
                record.add(T_BASE, setting, metric, [scale * x for x in v], seeds=ss, unit=unit, digits=digits)
            have = [e for e in per_seed if snapshot_of(e, label, t)]
            for s_name in STRUCTURES:
                kept = [100 * snapshot_of(e, label, t)["kept"][s_name] for e in have]
                record.add(T_KEPT, setting, s_name, kept, seeds=[e["seed"] for e in have], digits=1)

    if per_seed and "score_check" in per_seed[0]:
        for name in per_seed[0]["score_check"]["rho"]:
            record.add(T_SCORE, name, "Spearman ρ with the true loss increase",
                       [e["score_check"]["rho"][name] for e in per_seed], seeds=seeds, digits=3)  # fmt: skip
        for s_name in STRUCTURES:
            vals = [e["score_check"]["mean_delta_loss"][s_name] for e in per_seed]
            if all(np.isfinite(vals)):
                record.add(T_SCORE, f"one {s_name} group", "mean true loss increase", vals, seeds=seeds, digits=4)

    eta_labels = [NVIT] + [lb for lb in ex["methods"] if lb.startswith("η=")]
    if len(eta_labels) > 1:
        t = targets[0]
        for label in eta_labels:
            name = (
                f"η = {cfg['latency']['eta']:g} ({cfg['latency']['eta_mode']}, NViT)"
                if label == NVIT
                else label.replace("=", " = ")
            )
            for m_name, key, scale, digits in (("pruning steps to the target", "step", 1, 1),
                                               ("MACs (% of dense)", "macs_ratio", 100, 1),
                                               ("measured speedup", "speedup", 1, 2),
                                               ("top-1 after KD fine-tune (%)", "top1_ft", 1, 2)):  # fmt: skip
                v, ss = values_of(per_seed, label, t, key)
                record.add(T_ETA, name, m_name, [scale * x for x in v], seeds=ss, digits=digits)
            neg = [e["methods"][label].get("negative_fraction") for e in per_seed]
            if label == NVIT and all(x is not None for x in neg):
                record.add(T_ETA, name, "groups with negative Eq. 7 score at step 1 (%)", [100 * x for x in neg],
                           seeds=seeds, digits=1)  # fmt: skip

    for t in targets:
        v, ss = values_of(per_seed, NVIT, t, "top1_scratch")
        if v:
            record.add(
                T_SCRATCH,
                f"{target_label(t, metric)}: pruned + KD fine-tune",
                "top-1",
                values_of(per_seed, NVIT, t, "top1_ft")[0],
                seeds=ss,
                unit="%",
            )
            record.add(
                T_SCRATCH,
                f"{target_label(t, metric)}: same dims from scratch (dense epochs + the same KD batches)",
                "top-1",
                v,
                seeds=ss,
                unit="%",
            )

    if ex.get("revit"):
        rv = ex["revit"]
        runs = rv.get("uniform_runs")
        seed_note = f"seed {rv.get('revit_seed', 0)}"
        record.add(T_REVIT, "ReViT rule", "top-1", rv["revit"]["top1"], unit="%",
                   note=f"{rv['epochs']} epochs, one run ({seed_note})")  # fmt: skip
        uni = "uniform (DeiT rule) = the dense model" + ("s" if runs and len(runs) > 1 else "")
        if runs:
            record.add(T_REVIT, uni, "top-1", [u["top1"] for u in runs], seeds=[u["seed"] for u in runs], unit="%",
                       note=f"{rv['epochs']} epochs")  # fmt: skip
        else:
            record.add(T_REVIT, uni, "top-1", rv["uniform"]["top1"], unit="%", note=f"{rv['epochs']} epochs, seed 0")
        for name, key in (("ReViT rule", "revit"), (uni, "uniform")):
            record.add(T_REVIT, name, "params", rv[key]["params"] / 1e6, unit="M", digits=3)
            record.add(T_REVIT, name, "MACs", rv[key]["macs"] / 1e6, unit="M", digits=2)

    equiv = [s["equivalence_max_abs_diff"] for e in per_seed for r in e["methods"].values() for s in r["snapshots"]]
    worst = max(equiv) if equiv else float("nan")
    if "record_format" in ex:  # float64 since record format 2: errors of ~1e-15, shown in that unit
        record.add(T_CHECK, "masked model vs converted dense model, float64", "max |logit difference| over all "
                   "snapshots", 1e15 * worst, unit="1e-15", digits=2)  # fmt: skip
    else:
        record.add(T_CHECK, "masked model vs converted dense model, float32", "max |logit difference| over all "
                   "snapshots", worst, digits=8)  # fmt: skip
    record.add(T_CHECK, "(∂L/∂g_S)² vs (Σ w ∂L/∂w)², float64, one unit per structure type", "max relative error",
               1e15 * ex["gate_identity_max_rel_err"], unit="1e-15", digits=2)  # fmt: skip
    judge_claims(record)


# ---------------------------------------------------------------------------------------------------------
# Report


def wide_table(measurements: list) -> str:
    rows: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for m in measurements:
        column = f"{m.metric} [{m.unit}]" if m.unit else m.metric
        if column not in columns:
            columns.append(column)
        cell = m.ours()
        if m.paper is not None:
            cell += f" (paper: {m.paper:g})"
        rows.setdefault(m.setting, {})[column] = cell
    body = [(setting, *(cells.get(c, "–") for c in columns)) for setting, cells in rows.items()]
    return markdown_table(["Setting", *columns], body)


def paper_table1() -> str:
    rows: dict[str, dict[str, str]] = {}
    for pn in paper_numbers.TABLE_1:
        rows.setdefault(pn.setting, {})[pn.metric] = f"{pn.value:g}{pn.unit if pn.unit in ('M', 'G', '%') else ''}"
    cols = ["params", "FLOPs", "FLOPs reduction vs DeiT-B", "speedup vs DeiT-B, V100, batch 256",
            "speedup vs DeiT-B, RTX 3080, batch 256", "ImageNet-1K top-1"]  # fmt: skip
    return markdown_table(
        ["Model (paper, Table 1)", *cols], [(s, *(r.get(c, "–") for c in cols)) for s, r in rows.items()]
    )


def plot_dims(record: RunRecord, path: Path) -> Path:
    """Fig. 4 analogue: per-block H, QK, V, MLP of the pruned models (first seed)."""
    ex = record.extra
    entry = ex["per_seed"][0]
    dense = ex["dense"]["dims"]
    with style():
        fig, axes = plt.subplots(1, 4, figsize=(12, 3.0))
        for ax, (key, title) in zip(axes, (("heads", "H (heads)"), ("qk", "QK per head"), ("v", "V per head"),
                                           ("mlp", "MLP")), strict=True):  # fmt: skip
            blocks = range(1, len(dense[key]) + 1)
            ax.plot(blocks, dense[key], color=method_color("dense"), linestyle="--", label="dense")
            for label in ex["methods"]:
                for s in entry["methods"][label]["snapshots"]:
                    name = f"{label} @ {100 * s['target']:g}% (EMB {s['dims']['emb']})"
                    ax.plot(blocks, s["dims"][key], marker=method_marker(name),
                            color=method_color("ours") if label == NVIT else method_color(label),
                            alpha=1.0 if s["target"] == ex["targets"][-1] else 0.5, label=name)  # fmt: skip
            ax.set(title=title, xlabel="block", ylim=(0, None))
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        return savefig(fig, path)


def plot_accuracy_vs_latency(record: RunRecord, path: Path) -> Path:
    ex = record.extra
    per_seed = ex["per_seed"]
    with style():
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        for label in ex["methods"]:
            pts = []
            for t in ex["targets"]:
                sp, _ = values_of(per_seed, label, t, "speedup")
                acc, _ = values_of(per_seed, label, t, "top1_ft")
                if sp and acc:
                    pts.append((100 / np.mean(sp), np.mean(acc), np.std(acc, ddof=1) if len(acc) > 1 else 0.0))
            if pts:
                color = method_color("ours") if label == NVIT else method_color(label)
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=color,
                            marker=method_marker(label), capsize=2, label=method_name(label))  # fmt: skip
        ax.scatter([100], [ex["dense"]["top1"]], color=method_color("dense"), marker="*", s=60, label="dense", zorder=3)
        ax.set(xlabel="measured latency (% of dense, 1/speedup)", ylabel="top-1 after KD fine-tune (%)")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        return savefig(fig, path)


def judge_claims(record: RunRecord) -> None:
    """The claims of a record, re-judged by ``nvit.claims`` from its per-seed results, so a rule change needs no
    re-run; a record written before the rules moved there (no ``record_format``) keeps the claims it was saved
    with, because it lacks what the rules read (per-seed dense models, float64 conversion errors)."""
    if "record_format" in record.extra:
        nvit_claims.judge(record)


def report(record: RunRecord, out_dir: Path) -> str:
    judge_claims(record)
    figures = out_dir / "figures"
    plot_dims(record, figures / "per_block_dims.png")
    plot_accuracy_vs_latency(record, figures / "accuracy_vs_latency.png")
    ex = record.extra
    head = default_report(record, out_dir).split("\n\n", 1)[0]
    n = len(record.seeds)
    cfg = record.config
    budget = ex.get("kd_budget") or {"configured": cfg["prune"]["kd_budget_batches"],
                                     "used": cfg["prune"]["kd_budget_batches"], "most_pruning_batches": 0}  # fmt: skip
    if ex["dense"].get("per_seed"):
        dense_text = (f"Every seed trains its own dense model (seed s, {cfg['dense']['epochs']} epochs) and prunes it, "
                      f"so every cell is mean ± std over n = {n} independent runs of the whole pipeline")  # fmt: skip
    else:
        dense_text = (f"One dense model (trained with seed 0) is shared by all seeds; the seeds ({n}) vary the "
                      f"pruning, fine-tuning and scratch runs, so every cell is mean ± std over n = {n}")  # fmt: skip
    timing = ex.get("timing_protocol", "the dense and the converted pruned model timed interleaved in one run")
    work = ex.get("job_seconds")
    dp = ex.get("data_parallel")
    how = (f"data-parallel in {dp['processes']} processes (every job on each process's share of every global batch, "
           f"gradients averaged over the processes)" if dp else
           f"as independent jobs in {ex['workers']} worker process(es) of one torch thread each")  # fmt: skip
    work_text = (
        f" Stages A-C ran {how} ({ex['workers_wall_s'] / 60:.1f} min wall); the jobs' time by phase, summed over "
        "jobs: "
        + ", ".join(f"{k} {v / 60:.1f} min" if v >= 60 else f"{k} {v:.0f} s"
                    for k, v in sorted(work.items(), key=lambda kv: -kv[1])) + "."
        if work else ""
    )  # fmt: skip
    parts = [
        head,
        f"{ex['n_train']} training / {ex['n_test']} test images ({cfg['data']['dataset']}). {dense_text}. Speedups are "
        f"measured ({timing}; {ex['device']}, batch {ex['timing_batch']}, {ex['threads']} thread(s)).{work_text} "
        f"Latency targets use the LUT ({ex['lut']['description']}). Every pruned model gets "
        f"{budget['used']} KD batches (pruning phase + top-up) plus {cfg['finetune']['epochs']} fine-tune "
        f"epoch(s), whatever its number of pruning steps"
        + (
            f" (raised from the configured {budget['configured']} because a run needed "
            f"{budget['most_pruning_batches']} pruning batches)"
            if budget["used"] > budget["configured"]
            else f" (the most any run used in pruning: {budget['most_pruning_batches']})"
        )
        + ". The global-criterion baselines (magnitude, first-order, random) run with η = 0 and are compared with "
        "NViT's score at η = 0; NViT itself (Table 1) uses the latency term.",
        "![per-block widths of the pruned models (Fig. 4 analogue)](figures/per_block_dims.png)\n\n"
        "![top-1 vs measured latency](figures/accuracy_vs_latency.png)",
    ]
    tables = record.tables()
    for table, ms in tables.items():
        parts.append(f"#### {table}\n\n{wide_table(ms)}")
        if table == T1:
            parts.append(f"The paper's Table 1 (DeiT-B on ImageNet-1K, `nvit/paper.py`):\n\n{paper_table1()}")
    if record.claims:
        rules = f"\n\n{RULES_MARKDOWN}" if any(c.effect for c in record.claims) else ""
        parts.append(f"#### Claims\n\n{claims_table(record.claims)}{rules}")
    variants = variants_section(record, out_dir)
    if variants:
        parts.append(variants)
    return "\n\n".join(parts) + "\n"


VARIANTS_DIR = "variants"
"""Records of the same preset run with other options, in ``results/nvit/<preset>/variants/<name>/record.json``
(e.g. ``official-weights``: the official criterion sets and factors); the preset's section compares them."""


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (lists as tuples, so they compare and print as the --set syntax)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def variants_section(record: RunRecord, out_dir: Path) -> str:
    """NViT's pruning results of the preset's record beside those of its variant records (same preset, other
    options): per target, top-1 after the KD fine-tune, MACs and kept fraction per structure, mean over seeds."""
    folder = out_dir / VARIANTS_DIR
    paths = sorted(folder.glob("*/record.json")) if folder.is_dir() else []
    if not paths:
        return ""
    runs = [("this record", record)] + [(path.parent.name, load_record(path)) for path in paths]
    mine = _flat(record.config)
    rows = []
    for name, rec in runs:
        pr = rec.config["prune"]
        what = (f"{pr.get('score_weights', 'dependency')} weight sets, divisors "
                f"{', '.join(f'{d:g}' for d in pr['structure_divisors'])}")  # fmt: skip
        shown = {"prune.score_weights", "prune.structure_divisors"}
        other = {k: v for k, v in _flat(rec.config).items() if mine.get(k) != v and k not in shown}
        if other:  # a variant run with an earlier version of the preset: say how else it differs
            what += "; also " + ", ".join(f"{k}={v}" for k, v in sorted(other.items()))
        per_seed = rec.extra["per_seed"]
        for t in rec.extra["targets"]:
            for label in (NVIT, "η=0"):
                top1, _ = values_of(per_seed, label, t, "top1_ft")
                if not top1:
                    continue
                macs, _ = values_of(per_seed, label, t, "macs_ratio")
                have = [snapshot_of(e, label, t) for e in per_seed if snapshot_of(e, label, t)]
                kept = " / ".join(f"{100 * np.mean([h['kept'][s] for h in have]):.0f}" for s in STRUCTURES)
                rows.append((name, what, method_name(label), target_label(t, rec.extra.get("target_metric", "latency")),
                             f"{np.mean(top1):.2f} ± {np.std(top1, ddof=1) if len(top1) > 1 else 0:.2f}",
                             f"{100 * np.mean(macs):.1f}", kept, len(top1)))  # fmt: skip
    body = markdown_table(["Run", "score", "method", "target", "top-1 after KD fine-tune [%]", "MACs [% of dense]",
                           "kept EMB / H / QK / V / MLP [%]", "n"], rows)  # fmt: skip
    return (f"#### Score variants: the same preset with other options\n\nRecords under "
            f"`{VARIANTS_DIR}/` of this preset's results folder, each a full run of the preset with the options "
            f"named (its own record holds every table and claim).\n\n{body}")  # fmt: skip
