"""The DAREx experiments: each preset runs one and returns a results record (see common.cli).

``text`` (the real regime; paper): an encoder fine-tuned on a text task, then every DPP method at every rate:
DARE, DAREx-q with q chosen on labelled validation data / by the last layer's output change / per layer from
the analytical bound / per layer by optimisation, magnitude and WANDA on deltas; the Fig. 1 analogue (accuracy
against the rescaling factor); a large-delta fine-tune; DAREx-L2 (AdamR-L2 fine-tunes, then DARE).
``synthetic`` (the collapse regime): the notes' MLP (``synthetic.py``). ``text+synthetic`` (smoke, mini): both,
in one record. ``decoder``: a causal LM pair on GSM8K (``decoder.py``).

The work is split into independent jobs (:class:`darex.regimes.Job`): first the fine-tunes (and the MLP's
pre-training), then the pruning of each fine-tuned model at each rate. They run in single-thread worker
processes (``common.parallel.map_jobs``; ``PRUNE_REPRO_WORKERS`` sets how many, default 2 on a CPU), each job
seeds itself and runs on one thread wherever it runs, so the record is the same with 1 or 2 workers. The
claims are judged from the record by :mod:`darex.claims`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import distributed as dist
from common.cli import RunContext
from common.config import ConfigError, to_dict
from common.parallel import default_workers, map_jobs
from common.plotting import method_color, method_marker, plt, savefig, style
from common.results import RULES_MARKDOWN, RunRecord, claims_table, mean_std, render_record
from common.results import markdown_table as md_table
from common.runtime import ArtifactCache, PhaseTimer, generator

from . import claims, synthetic
from .checks import check_inputs, run_checks, text_input_checks
from .config import DarexConfig, TextConfig
from .data import (
    Encoded,
    Example,
    batches,
    encode,
    group_split,
    packed_windows,
    random_windows,
    read_labelled_file,
    rotten_tomatoes,
)
from .method import (
    Deltas,
    analytical_layer_q,
    collect_input_statistics,
    dare,
    delta_parameters,
    delta_statistics,
    global_q_search,
    head_inputs,
    kept_fraction,
    last_hidden_states,
    linear_search,
    magnitude_prune,
    optimise_layer_q,
    output_change,
    q_grid,
    trimmed_mean,
    wanda_prune,
)
from .models import load_classifier, load_tokenizer
from .regimes import (
    ANALYTICAL_ETA,
    ANALYTICAL_LABELLED,
    DROPPED,
    LARGE,
    MAIN_TABLE,
    METHODS,
    Q_TABLE,
    RANDOM_METHODS,
    REFERENCE_TABLE,
    SEARCH_MASK,
    STANDARD,
    STORAGE_TABLE,
    SYNTHETIC,
    SYNTHETIC_PREFIX,
    TEXT,
    Job,
    inv_q_metric,
    l2_model,
    mask_id,
    mask_ids,
    model_table,
    rate_metric,
    rate_plan,
    search_mask_ids,
    search_options,
    text_methods,
    text_regime_name,
    unpruned_setting,
    validation_metric,
)
from .storage import directory_bytes, save_sparse_delta
from .train import FinetuneSpec, finetune, score

log = logging.getLogger(__name__)

FINETUNE_FORMAT = 1
"""Bump when the fine-tuning code changes what it produces, so cached fine-tuned models are not reused."""

# The method's variants in shades of the house colour for "ours"; DARE and the importance baselines
# in theirs (common.plotting), so the same method looks the same in every figure.
COLORS = {
    "dare": method_color("random"),
    "darex_q_labelled": method_color("ours"),
    "darex_q_unlabelled": "#ff9896",
    "darex_q_analytical": "#8c1a1b",
    ANALYTICAL_LABELLED: "#5c0f10",
    "darex_q_optimised": "#e7969c",
    "magnitude": method_color("magnitude"),
    "wanda": "#17becf",
}


# ----------------------------------------------------------------------------------------------------
# Task data


@dataclass
class TextTask:
    tokenizer: object
    pad_id: int
    train: Encoded
    val: Encoded
    test: Encoded
    unlabelled: dict[str, torch.Tensor]
    calibration: torch.Tensor
    train_texts: list[str]
    objective_windows: torch.Tensor | None = None  # text.unlabelled_objective="last_hidden": its token windows

    def split(self, name: str) -> Encoded:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def _limit(examples: list[Example], n: int, seed: int) -> list[Example]:
    if n <= 0 or n >= len(examples):
        return examples
    import random

    chosen = list(examples)
    random.Random(seed).shuffle(chosen)
    return chosen[:n]


def load_task(text: TextConfig) -> TextTask:
    tokenizer = load_tokenizer(text.model_path)
    if text.task == "rotten_tomatoes":
        splits = group_split(
            rotten_tomatoes(), {"test": text.n_test, "val": text.n_val, "train": text.n_train}, seed=text.split_seed
        )
    else:
        run_checks(text_input_checks(text))  # the three files exist (run() checked them already)
        splits = {
            "train": _limit(read_labelled_file(text.train_file), text.n_train, text.split_seed),
            "val": _limit(read_labelled_file(text.val_file), text.n_val, text.split_seed),
            "test": _limit(read_labelled_file(text.test_file), text.n_test, text.split_seed),
        }
    encoded = {name: encode(tokenizer, examples, text.max_length) for name, examples in splits.items()}
    unlabelled = encode(tokenizer, splits["train"][: text.n_unlabelled], text.max_length)
    unlabelled_batch = next(batches(unlabelled, len(unlabelled), tokenizer.pad_token_id))
    unlabelled_batch.pop("labels")
    texts = [e.text for e in splits["train"]]
    windows = None
    if text.unlabelled_objective == "last_hidden":
        windows = random_windows(tokenizer, texts, text.unlabelled_window, text.unlabelled_windows, seed=0)
    return TextTask(
        tokenizer=tokenizer, pad_id=tokenizer.pad_token_id, train=encoded["train"], val=encoded["val"],
        test=encoded["test"], unlabelled=unlabelled_batch,
        calibration=packed_windows(tokenizer, texts, text.window, text.calibration_windows), train_texts=texts,
        objective_windows=windows,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Fine-tuning (cached)


def finetune_spec(cfg: DarexConfig, seed: int, optimizer: str = "adamw", lr: float | None = None,
                  weight_decay: float | None = None, n_train: int = 0) -> FinetuneSpec:  # fmt: skip
    f = cfg.finetune
    steps = f.steps or math.ceil(10 * n_train / f.batch_size)  # steps=0: ten epochs (MergeLM recipe)
    return FinetuneSpec(
        optimizer=optimizer, lr=f.lr if lr is None else lr, steps=steps, batch_size=f.batch_size,
        weight_decay=f.weight_decay if weight_decay is None else weight_decay, warmup_ratio=f.warmup_ratio,
        freeze=f.freeze, seed=seed,
    )  # fmt: skip


def finetuned_model(cfg: DarexConfig, cache: ArtifactCache, device: torch.device, task: TextTask, spec: FinetuneSpec,
                    tag: str) -> nn.Module:  # fmt: skip
    """The model fine-tuned with ``spec``, from the cache when this exact run was done before."""
    vocab = task.tokenizer.vocab_size
    key = {"text": to_dict(cfg.text), "spec": dataclasses.asdict(spec), "format": FINETUNE_FORMAT}

    def create() -> dict[str, torch.Tensor]:
        model = load_classifier(cfg.text.model_path, cfg.text.num_labels, vocab, seed=spec.seed).to(device)
        finetune(model, task.train, spec, task.pad_id, desc=f"fine-tune {tag}")
        return {k: v.cpu() for k, v in model.state_dict().items()}

    state = cache.get_or_create(f"finetuned-{tag.replace(' λ=', '-')}", key, create)
    model = load_classifier(cfg.text.model_path, cfg.text.num_labels, vocab, seed=spec.seed)
    model.load_state_dict(state)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------
# Evaluating pruned deltas of one fine-tuned model


class Bench:
    """θ_P + Δ̂ loaded into a copy of the fine-tuned model (its task head kept), scored on the task.

    The unpruned model's last-layer representation is kept as the reference of the label-free objective (the
    change of the last layer's output, DAREx §4): the task head's input on the unlabelled sentences
    (``text.unlabelled_objective="head_input"``) or the encoder's last hidden state at every token of the
    task's random windows (``"last_hidden"``, the official objective).
    """

    def __init__(self, pretrained: nn.Module, finetuned: nn.Module, task: TextTask, cfg: DarexConfig, name: str):
        self.name = name
        self.task, self.metric, self.batch_size = task, cfg.text.metric, cfg.text.eval_batch_size
        self.pre_state = pretrained.state_dict()
        self.deltas = delta_parameters(pretrained, finetuned, exclude=cfg.exclude)
        self.probe = copy.deepcopy(finetuned).eval()
        self.head = self.probe.get_submodule("classifier")
        self.reference = self._representation()
        self.stats = collect_input_statistics(self.probe, self._calibrate, names=self.deltas)

    def _calibrate(self, model: nn.Module) -> None:
        device = next(model.parameters()).device
        for window in self.task.calibration.split(8):
            model(input_ids=window.to(device))

    def _representation(self) -> torch.Tensor:
        if self.task.objective_windows is not None:
            return last_hidden_states(self.probe, self.task.objective_windows)
        device = next(self.probe.parameters()).device
        batch = {k: v.to(device) for k, v in self.task.unlabelled.items()}
        return head_inputs(self.probe, self.head, lambda m: m(**batch))

    def load(self, pruned: Deltas) -> None:
        """Load θ_P + Δ̂; ``pruned`` must cover every delta tensor (pass ``self.deltas`` for the unpruned model)."""
        if pruned.keys() != self.deltas.keys():
            raise KeyError("a pruned delta must hold every delta tensor of the model")
        self.probe.load_state_dict({n: self.pre_state[n] + d.to(self.pre_state[n]) for n, d in pruned.items()},
                                   strict=False)  # fmt: skip

    def score(self, pruned: Deltas, split: str = "test") -> float:
        self.load(pruned)
        return score(self.probe, self.task.split(split), self.task.pad_id, self.metric, self.batch_size)

    def change(self, pruned: Deltas) -> float:
        self.load(pruned)
        return output_change(self.reference, self._representation())

    def optimised_q(self, p: float, mask_seed: int, steps: int, batch_size: int) -> dict[str, float]:
        """Per-layer q learned so the head's input matches the unpruned model's on unlabelled sentences
        (the last quarter of them decides early stopping)."""
        from torch.func import functional_call

        masked = dare(self.deltas, p, 1.0, generator(mask_seed))  # DARE's mask, not rescaled
        device = next(self.probe.parameters()).device
        inputs = {k: v.to(device) for k, v in self.task.unlabelled.items()}
        n = len(next(iter(inputs.values())))
        n_val = max(1, n // 4)
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(lambda m, args, out: captured.append(args[0]))

        def head_input(model, params, rows) -> torch.Tensor:
            captured.clear()
            functional_call(model, params, args=(), kwargs={k: v[rows] for k, v in inputs.items()})
            return captured[0].reshape(len(rows), -1).float()

        def loss(model, params, step) -> torch.Tensor:
            start = (step * batch_size) % (n - n_val)
            rows = torch.arange(start, min(start + batch_size, n - n_val))
            return torch.mean((head_input(model, params, rows) - reference[rows]) ** 2)

        def val_loss(model, params) -> float:
            rows = torch.arange(n - n_val, n)
            return torch.mean((head_input(model, params, rows) - reference[rows]) ** 2)

        try:
            self.load(self.deltas)
            with torch.no_grad():  # the unpruned model's head input, one row per sentence
                reference = head_input(self.probe, {}, torch.arange(n))
            return optimise_layer_q(self.probe, self.pre_state, masked, p, loss, steps=steps, val_loss=val_loss)
        finally:
            handle.remove()


@dataclass
class RateResult:
    scores: dict[str, list[float]]  # method -> test metric per mask (one value for deterministic methods)
    inv_q: dict[str, float]  # method -> chosen 1/q (analytical: mean over layers)
    eta: dict[str, float] = dataclasses.field(default_factory=dict)  # analytical method -> chosen η


def _untimed(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def prune_at_rate(
    bench: Bench, p: float, cfg: DarexConfig, mask_seeds: list[int], methods: tuple[str, ...],
    search_seeds: int | list[int], phase: Callable[[str], contextlib.AbstractContextManager] = _untimed,
) -> RateResult:  # fmt: skip
    """Every DPP method in ``methods`` at rate ``p``: each q is chosen once, with the masks of ``search_seeds``
    (never scored ones), then every mask in ``mask_seeds`` is scored on the test split with it.

    Labelled objectives (validation metric) use the first search mask, as the official code does; the label-free
    one (the output change) averages ``prune.objective_masks`` of them (:func:`darex.method.trimmed_mean`).
    Global q: :func:`darex.method.global_q_search` (``prune.q_search``). The analytical q's η: for each entry of
    ``prune.analytical_eta`` (output change, labelled), the best of ``prune.etas`` or the official linear sweep
    over their range (``prune.eta_search``).

    A global q equal to one already scored (often DARE's own 1 - p) gives the same pruned deltas, mask by mask,
    so its scores are reused rather than recomputed. ``phase`` is the job's phase timer (default: none):
    choosing q is timed as "q search", the test scores as "evaluation", drawing the pruned deltas inside either
    as "deltas and pruning"."""
    pc, d = cfg.prune, bench.deltas
    search_seeds = [search_seeds] if isinstance(search_seeds, int) else list(search_seeds)
    objective_seeds = search_seeds[: pc.objective_masks]

    def dare_with(q, mask_seed=search_seeds[0]) -> Deltas:
        with phase("deltas and pruning"):
            return dare(d, p, q, generator(mask_seed))

    def labelled(q) -> float:
        return bench.score(dare_with(q), "val")

    def label_free(q) -> float:
        """Minus the output change (maximised), averaged over the objective's masks less the outlier."""
        return -trimmed_mean([bench.change(dare_with(q, s)) for s in objective_seeds])

    q_for: dict[str, float | dict[str, float] | None] = {"dare": None}
    inv_q: dict[str, float] = {"dare": 1.0 / (1.0 - p)}
    eta: dict[str, float] = {}
    with phase("q search"):
        if "darex_q_labelled" in methods:
            q_for["darex_q_labelled"], _ = global_q_search(labelled, p, **search_options(pc))
        if "darex_q_unlabelled" in methods:
            q_for["darex_q_unlabelled"], _ = global_q_search(label_free, p, **search_options(pc))
        analytical = {how: m for how, m in ANALYTICAL_ETA.items() if m in methods}
        if analytical and p > 0:
            means = {name: s.mean for name, s in bench.stats.items()}
            candidates: dict[float, dict[str, float]] = {}

            def layer_q(e: float) -> dict[str, float]:
                e = round(e, 10)
                if e not in candidates:
                    candidates[e] = analytical_layer_q(d, means, p, e)
                return candidates[e]

            for how, method in analytical.items():
                objective = labelled if how == "labelled" else label_free
                if pc.eta_search == "linear":
                    eta[method], _ = linear_search(lambda e, f=objective: f(layer_q(e)), min(pc.etas), max(pc.etas),
                                                   pc.eta_step, decay=pc.fine_decay, patience=pc.patience)  # fmt: skip
                else:  # the first of the best (the grid's order breaks ties)
                    eta[method] = max(pc.etas, key=lambda e, f=objective: f(layer_q(e)))
                q_for[method] = layer_q(eta[method])
        if "darex_q_optimised" in methods and p in pc.optimise_rates:
            q_for["darex_q_optimised"] = bench.optimised_q(p, search_seeds[0], pc.optimise_steps, pc.optimise_batch)
    for method, q in q_for.items():
        if isinstance(q, dict):
            inv_q[method] = sum(1.0 / v for v in q.values()) / len(q)
        elif q is not None:
            inv_q[method] = 1.0 / q
    with phase("evaluation"):
        scores: dict[str, list[float]] = {}
        by_q: dict[float, list[float]] = {}  # global q -> scores of the masks (the same deltas give the same score)
        for m in RANDOM_METHODS:
            if m not in q_for:
                continue
            q = q_for[m]
            key = 1.0 - p if q is None else q
            if isinstance(key, float) and key in by_q:
                scores[m] = list(by_q[key])
                continue
            scores[m] = [bench.score(dare_with(q, s)) for s in mask_seeds]
            if isinstance(key, float):
                by_q[key] = scores[m]
        if "magnitude" in methods:
            with phase("deltas and pruning"):
                pruned = magnitude_prune(d, p)
            scores["magnitude"] = [bench.score(pruned)]
        if "wanda" in methods:
            norms = {name: s.norm for name, s in bench.stats.items()}
            with phase("deltas and pruning"):
                pruned = wanda_prune(d, p, norms)
            scores["wanda"] = [bench.score(pruned)]
    result = RateResult(scores=scores, inv_q=inv_q, eta=eta)
    log.info("%s p=%g: %s", bench.name, p, ", ".join(f"{m} {sum(v) / len(v):.1f}" for m, v in scores.items()))
    return result


def rescaling_curve(bench: Bench, p: float, n: int, mask_seed: int) -> dict[str, list[float]]:
    """The Fig. 1 analogue: test metric and output change over a log grid of 1/q, one mask."""
    grid = q_grid(p, n)
    metric, change = [], []
    for q in grid:
        pruned = dare(bench.deltas, p, q, generator(mask_seed))
        metric.append(bench.score(pruned))
        change.append(bench.change(pruned))
    return {"inv_q": [1.0 / q for q in grid], "metric": metric, "output_change": change}


# ----------------------------------------------------------------------------------------------------
# The real regime's jobs: the fine-tunes, then each fine-tuned model's references and rates


def text_models(cfg: DarexConfig) -> list[str]:
    """The fine-tunes of the real regime: standard (AdamW), large-delta (larger lr), one per AdamR-L2 λ."""
    return [STANDARD, LARGE, *(l2_model(lam) for lam in cfg.finetune.adamr_lambdas)]


def text_plan(cfg: DarexConfig, model: str) -> list[tuple[float, tuple[str, ...]]]:
    """The rates a fine-tune is pruned at, with its methods (:func:`regimes.rate_plan`; this regime's standard
    fine-tune gets :func:`regimes.text_methods`; the extreme rate is ``prune.figure_rate``)."""
    r = cfg.prune
    return rate_plan(tuple(text_methods(r)), r.rates, r.large_delta_rates, r.figure_rate, model)


def _spec(cfg: DarexConfig, seed: int, model: str, n_train: int) -> FinetuneSpec:
    if model == STANDARD:
        return finetune_spec(cfg, seed, n_train=n_train)
    if model == LARGE:
        return finetune_spec(cfg, seed, lr=cfg.finetune.large_delta_lr, n_train=n_train)
    lam = float(model.split("=")[-1])
    return finetune_spec(cfg, seed, optimizer="adamr-l2", weight_decay=lam, n_train=n_train)


def text_jobs(cfg: DarexConfig) -> tuple[list[Job], list[Job]]:
    """(fine-tunes, pruning jobs) of the real regime; ``cost`` is a rough relative duration (ordering only)."""
    train = [Job(TEXT, "train", s, model, cost=1.4) for s in cfg.seeds for model in text_models(cfg)]
    prune = []
    for s in cfg.seeds:
        for model in text_models(cfg):
            prune.append(Job(TEXT, "prune", s, model, "references", cost=0.8 if model == STANDARD else 0.1))
            for p, methods in text_plan(cfg, model):
                cost = 0.6 * len(methods) + (1.0 if "darex_q_labelled" in methods else 0.0)
                cost += 0.8 if "darex_q_optimised" in methods and p in cfg.prune.optimise_rates else 0.0
                prune.append(Job(TEXT, "prune", s, model, "rate", p, cost=cost))
    return train, prune


@functools.lru_cache(maxsize=2)
def _task(text: TextConfig) -> TextTask:
    """The task's data, loaded once per process (a worker runs several jobs)."""
    return load_task(text)


def text_job(job: Job, cfg: DarexConfig, cache: ArtifactCache, device: torch.device,
             phase: Callable[[str], contextlib.AbstractContextManager]) -> dict[str, Any] | None:  # fmt: skip
    """One job of the real regime (see :func:`text_jobs`); returns plain data for the record."""
    seed, model = job.seed, job.model
    with phase("data"):
        task = _task(cfg.text)
    spec = _spec(cfg, seed, model, len(task.train))
    with phase("fine-tuning"):  # the cached fine-tune (trained by the job of stage "train")
        finetuned = finetuned_model(cfg, cache, device, task, spec, model)
        if job.stage == "train":
            return None
        pretrained = load_classifier(cfg.text.model_path, cfg.text.num_labels, task.tokenizer.vocab_size, seed)
        pretrained = pretrained.to(device)
    with phase("deltas and pruning"):  # deltas, the label-free reference, calibration statistics
        bench = Bench(pretrained, finetuned, task, cfg, f"{model} (seed {seed})")
    if job.part == "references":
        out: dict[str, Any] = {
            "refs": {},
            "stats": delta_statistics(bench.deltas),
            "sizes": {"train": len(task.train), "val": len(task.val), "test": len(task.test)},
        }
        with phase("evaluation"):
            out["refs"][unpruned_setting(model)] = bench.score(bench.deltas)
            if model == STANDARD:
                out["refs"][DROPPED] = bench.score({n: torch.zeros_like(v) for n, v in bench.deltas.items()})
        if model == STANDARD:
            with phase("Fig. 1 curve"):
                first = mask_id(seed, cfg.prune.mask_seeds[0])
                out["curve"] = rescaling_curve(bench, cfg.prune.figure_rate, cfg.prune.figure_points, first)
        return out
    p = job.rate
    methods = dict(text_plan(cfg, model))[p]
    masks = [mask_id(seed, m) for m in cfg.prune.mask_seeds]
    search = search_mask_ids(seed, cfg.prune.objective_masks)
    result = prune_at_rate(bench, p, cfg, masks, methods, search, phase=phase)
    out = {"scores": result.scores, "inv_q": result.inv_q, "eta": result.eta}
    if model not in (STANDARD, LARGE) and len(cfg.finetune.adamr_lambdas) > 1:
        with phase("q search"):  # choosing among several λ needs DARE's validation score
            out["val_dare"] = [bench.score(dare(bench.deltas, p, None, generator(m)), "val") for m in masks]
    if model == STANDARD and p == cfg.prune.figure_rate and "darex_q_labelled" in result.inv_q:
        with phase("storage"):
            sparse = dare(bench.deltas, p, 1.0 / result.inv_q["darex_q_labelled"], generator(masks[0]))
            out["storage"] = _storage_sizes(bench, sparse)
    return out


# ----------------------------------------------------------------------------------------------------
# Running the jobs (both regimes)


def run_job(job: Job, cfg: DarexConfig, cache: ArtifactCache, device: str) -> tuple[Any, dict[str, float]]:
    """One job, on one torch thread (on a CPU) whether in a worker or here, seeded; its result and the
    seconds it spent per phase."""
    timer = PhaseTimer()
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        if job.regime == SYNTHETIC:
            result = synthetic.run_job(job, cfg, cache, timer.phase)
        else:
            result = text_job(job, cfg, cache, dev, timer.phase)
    finally:
        torch.set_num_threads(threads)
    return result, timer.breakdown()


def _run_jobs(jobs: list[Job], cfg: DarexConfig, ctx: RunContext, workers: int, desc: str,
              phases: dict[str, float]) -> dict[Job, Any]:  # fmt: skip
    """Run ``jobs`` (longest first) in ``workers`` processes; their results by job, their phase times added up.

    Under a launcher (``make reproduce-darex NPROC=N``) each of the N ranks runs every N-th job
    (:func:`common.distributed.shard`) and every rank receives all results (:func:`~common.distributed.gather_objects`,
    which also makes the ranks wait for each other: a fine-tune cached by one rank is there for the pruning jobs
    of all). A job seeds itself and runs on one thread wherever it runs, so the results do not depend on N."""
    ordered = sorted(jobs, key=lambda j: -j.cost)  # stable: ties keep the config order
    mine = dist.shard(range(len(ordered)))
    out = map_jobs(run_job, [(ordered[i], cfg, ctx.cache, str(ctx.device)) for i in mine], workers=workers, desc=desc)
    by_index = dict(pair for part in dist.gather_objects(list(zip(mine, out, strict=True))) for pair in part)
    results = {}
    for i, job in enumerate(ordered):
        result, seconds = by_index[i]
        results[job] = result
        for name, value in seconds.items():
            phases[name] = round(phases.get(name, 0.0) + value, 2)
    return results


def run(cfg: DarexConfig, ctx: RunContext) -> RunRecord:
    check_inputs(cfg)  # every model directory and data file the config names, before any work
    if cfg.experiment == "decoder":
        from . import decoder

        return decoder.run(cfg, ctx)
    regimes = [r for r in (TEXT, SYNTHETIC) if r in cfg.experiment.split("+")]
    if any(not 0 <= m < SEARCH_MASK for m in cfg.prune.mask_seeds):
        raise ConfigError(f"prune.mask_seeds must lie in [0, {SEARCH_MASK}); got {cfg.prune.mask_seeds}")
    for name, seeds in (("seeds", cfg.seeds), ("synthetic.seeds", cfg.synthetic.seeds)):
        if len(set(seeds)) != len(seeds) or any(not 0 <= s < 1_000 for s in seeds):  # mask ids are 1000·seed + m
            raise ConfigError(f"{name} must be distinct and lie in [0, 1000); got {seeds}")
    # One worker per rank under a launcher (each rank is a process already), else 2 on a CPU (default_workers).
    workers = default_workers() if ctx.device.type == "cpu" and dist.world_size() == 1 else 1
    train_jobs, prune_jobs = [], []
    for regime in regimes:
        train, prune = text_jobs(cfg) if regime == TEXT else synthetic.jobs(cfg)
        train_jobs += train
        prune_jobs += prune
    inside: dict[str, float] = {}
    with ctx.phase("fine-tuning and pre-training"):
        _run_jobs(train_jobs, cfg, ctx, workers, "fine-tunes", inside)
    with ctx.phase("pruning and evaluation"):
        results = _run_jobs(prune_jobs, cfg, ctx, workers, "pruning jobs", inside)
    with ctx.phase("record and claims"):
        used = [*(cfg.seeds if TEXT in regimes else ()), *(synthetic.seeds_of(cfg) if SYNTHETIC in regimes else ())]
        record = ctx.new_record(seeds=sorted(set(used)))  # every regime's; each regime's own are in its config
        record.extra.update(regimes=regimes, workers=workers, job_phases_s=inside)
        if TEXT in regimes:
            add_text_to_record(record, cfg, {(j.seed, j.model, j.part, j.rate): r for j, r in results.items()
                                             if j.regime == TEXT})  # fmt: skip
        if SYNTHETIC in regimes:
            synthetic.add_to_record(record, cfg, {(j.seed, j.model): r for j, r in results.items()
                                                  if j.regime == SYNTHETIC})  # fmt: skip
        claims.add_claims(record)
    return record


def add_text_to_record(record: RunRecord, cfg: DarexConfig, results: dict[tuple, dict]) -> None:
    """Measurements of the real regime from ``results[(seed, model, part, rate)]`` (what :func:`text_job` returned)."""
    metric, seeds = cfg.text.metric, list(cfg.seeds)
    unit = "%" if metric == "accuracy" else ""
    masks = mask_ids(seeds, cfg.prune.mask_seeds)
    refs = {(s, model): results[(s, model, "references", None)] for s in seeds for model in text_models(cfg)}
    methods = text_methods(cfg.prune)
    record.extra.update(mask_seeds=list(cfg.prune.mask_seeds), metric=metric, methods=methods,
                        sizes=refs[(seeds[0], STANDARD)]["sizes"])  # fmt: skip
    for model in text_models(cfg):
        for setting in (unpruned_setting(model), *([DROPPED] if model == STANDARD else [])):
            record.add(REFERENCE_TABLE, setting, metric, [refs[(s, model)]["refs"][setting] for s in seeds],
                       seeds=seeds, unit=unit)  # fmt: skip
    for model in text_models(cfg):
        at = {p: [results[(s, model, "rate", p)] for s in seeds] for p, _ in text_plan(cfg, model)}
        for method in methods:
            for p, runs in at.items():
                if method not in runs[0]["scores"]:
                    continue
                random = method in RANDOM_METHODS
                record.add(model_table(TEXT, model), methods[method], rate_metric(metric, p),
                           [v for r in runs for v in r["scores"][method]], seeds=masks if random else seeds,
                           unit=unit)  # fmt: skip
        for p, runs in at.items():
            if "val_dare" in runs[0]:
                record.add(model_table(TEXT, model), METHODS["dare"], validation_metric(metric, p),
                           [v for r in runs for v in r["val_dare"]], seeds=masks, unit=unit)  # fmt: skip
    for model in text_models(cfg):
        at = {p: [results[(s, model, "rate", p)] for s in seeds] for p, _ in text_plan(cfg, model)}
        suffix = "" if model == STANDARD else f" ({model})"
        for method in methods:
            for p, runs in at.items():
                if method != "dare" and method in runs[0]["inv_q"]:
                    record.add(Q_TABLE, methods[method] + suffix, inv_q_metric(p),
                               [r["inv_q"][method] for r in runs], seeds=seeds)  # fmt: skip
        for method in methods:
            for p, runs in at.items():
                if method in runs[0]["eta"]:
                    record.add(Q_TABLE, methods[method] + suffix, f"η at p={p}", [r["eta"][method] for r in runs],
                               seeds=seeds)  # fmt: skip
    p_max = cfg.prune.figure_rate
    storage = results.get((seeds[0], STANDARD, "rate", p_max), {}).get("storage", {})
    for name, value in storage.items():
        record.add(STORAGE_TABLE, name, "MB", value / 1e6, digits=3)
    record.extra["delta_statistics"] = {m: [refs[(s, m)]["stats"] for s in seeds] for m in text_models(cfg)}
    record.extra["rescaling_curves"] = [refs[(s, STANDARD)]["curve"] for s in seeds]
    record.extra["figure_rate"] = p_max


def _storage_sizes(bench: Bench, pruned: Deltas) -> dict[str, float]:
    """Bytes of the full fine-tuned checkpoint vs the sparse delta (fp32 and fp16 values)."""
    with tempfile.TemporaryDirectory() as tmp:
        bench.probe.save_pretrained(Path(tmp) / "full")
        full = directory_bytes(Path(tmp) / "full")
        sparse32 = save_sparse_delta(pruned, Path(tmp) / "delta32.safetensors")
        sparse16 = save_sparse_delta(pruned, Path(tmp) / "delta16.safetensors", dtype=torch.float16)
    return {
        "full fine-tuned model (save_pretrained)": full,
        f"sparse delta, fp32 values ({kept_fraction(pruned) * 100:.2f}% kept)": sparse32,
        "sparse delta, fp16 values": sparse16,
    }


# ----------------------------------------------------------------------------------------------------
# Report


def _m(record: RunRecord, table: str, setting: str, metric: str):
    try:
        return record.get(table, setting, metric)
    except KeyError:
        return None


def _wide_table(record: RunRecord, rates: list[float]) -> str:
    metric = record.extra["metric"]
    rows = []
    for label in record.extra["methods"].values():
        cells = []
        for p in rates:
            m = _m(record, MAIN_TABLE, label, f"{metric}, p={p}")
            cells.append(m.ours() if m else "–")
        rows.append((label, *cells))
    return md_table(["Method", *(f"p = {p}" for p in rates)], rows)


def plot_methods_vs_rate(record: RunRecord, rates: list[float], path: Path) -> Path:
    metric = record.extra["metric"]
    ft = _m(record, REFERENCE_TABLE, "fine-tuned (unpruned)", metric)
    pre = next((m for m in record.tables()[REFERENCE_TABLE] if m.setting.startswith("pre-trained")), None)
    with style():
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        for method, label in record.extra["methods"].items():
            points = [(p, _m(record, MAIN_TABLE, label, f"{metric}, p={p}")) for p in rates]
            points = [(p, m) for p, m in points if m]
            xs = [-math.log10(1 - p) for p, _ in points]
            ax.errorbar(xs, [m.mean for _, m in points], yerr=[m.std for _, m in points], label=label,
                        color=COLORS.get(method, method_color(method)), marker=method_marker(method),
                        capsize=2)  # fmt: skip
        for ref, style_ in ((ft, "--"), (pre, "-.")):
            if ref:
                ax.axhline(ref.mean, color=method_color("dense"), linestyle=style_, linewidth=1, label=ref.setting)
        ax.set_xticks([-math.log10(1 - p) for p in rates], [str(p) for p in rates])
        ax.set(xlabel="pruning rate p (log scale in 1/(1-p))", ylabel=metric)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        return savefig(fig, path)


def plot_rescaling(record: RunRecord, path: Path) -> Path:
    """Fig. 1 analogue: test metric (left axis) and output change (right axis) against 1/q at one rate."""
    curve = record.extra["rescaling_curves"][0]
    p = record.extra["figure_rate"]
    metric = record.extra["metric"]
    labelled = _m(record, Q_TABLE, METHODS["darex_q_labelled"], f"1/q at p={p} (DARE: {1 / (1 - p):.4g})")
    free = _m(record, Q_TABLE, METHODS["darex_q_unlabelled"], f"1/q at p={p} (DARE: {1 / (1 - p):.4g})")
    with style():
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        ax.plot(curve["inv_q"], curve["metric"], marker="o", color=COLORS["darex_q_labelled"],
                label=f"test {metric} (left)")  # fmt: skip
        ax.axvline(1 / (1 - p), color=COLORS["dare"], linestyle=":", linewidth=2, label="DARE: 1/(1-p)")
        if labelled:
            ax.axvline(labelled.values[0], color=COLORS["darex_q_labelled"], linestyle="--", label="labelled choice")
        if free:
            ax.axvline(free.values[0], color=COLORS["darex_q_unlabelled"], linestyle=(0, (1, 3)), linewidth=2.5,
                       label="label-free choice")  # fmt: skip
        ax.set(xscale="log", xlabel="rescaling factor 1/q", ylabel=f"test {metric}", title=f"p = {p}, one mask")
        twin = ax.twinx()
        twin.plot(curve["inv_q"], curve["output_change"], color="#7f7f7f", alpha=0.8, marker=".",
                  label="last-layer output change (right)")  # fmt: skip
        twin.set_ylabel("last-layer output change (label-free objective)")
        twin.grid(False)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3)
        return savefig(fig, path)


def report(record: RunRecord, out_dir: Path) -> str:
    """The card's section for one record: provenance, each regime's tables and figures, then the claims."""
    regimes = record.extra.get("regimes")
    if not regimes:  # the decoder experiment, or a record from before the regimes were split
        return render_record(record, heading_level=4)
    provenance = render_record(dataclasses.replace(record, measurements=[], claims=[])).strip()
    inside = record.extra.get("job_phases_s") or {}
    if inside:
        workers = record.extra.get("workers", 1)
        provenance += (
            f"<br>\nInside the jobs ({workers} worker process{'es' if workers > 1 else ''}, one torch thread each; "
            "summed over the jobs): " + " · ".join(f"{name} {_duration(sec)}" for name, sec in inside.items())
        )
    parts = [provenance]
    if TEXT in regimes:
        parts.append(_text_section(record, out_dir))
    if SYNTHETIC in regimes:
        parts.append(
            "#### Collapse regime: the research notes' synthetic MLP\n\n"
            + synthetic.report_markdown(record, out_dir)
            + "\n\n"
            + _tables(record, lambda t: t.startswith(SYNTHETIC_PREFIX), strip=SYNTHETIC_PREFIX)
        )
    if record.claims:
        rejudged = record.extra.get("claims_rejudged")
        note = (f"Claims judged again at commit `{str(rejudged.get('commit'))[:10]}` (`python -m darex.claims`): "
                f"{rejudged.get('why')}.\n\n" if rejudged else "")  # fmt: skip
        parts.append(f"#### Claims\n\n{note}{claims_table(record.claims)}\n\n{RULES_MARKDOWN}\n\n"
                     f"{claims.MARGINS_MARKDOWN}")  # fmt: skip
    return "\n\n".join(p.strip() for p in parts) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _tables(record: RunRecord, keep: Callable[[str], bool], strip: str = "") -> str:
    """The default rendering of the measurements whose table ``keep`` accepts, as level-5 sections."""
    chosen = [dataclasses.replace(m, table=m.table.removeprefix(strip)) for m in record.measurements if keep(m.table)]
    if not chosen:
        return ""
    body = render_record(dataclasses.replace(record, measurements=chosen, claims=[]), heading_level=5)
    return body.split("\n\n", 1)[1].strip()  # without the provenance line


def _text_section(record: RunRecord, out_dir: Path) -> str:
    rates = record.config["prune"]["rates"]
    figures = out_dir / "figures"
    plot_methods_vs_rate(record, rates, figures / "metric_vs_rate.png")
    plot_rescaling(record, figures / "rescaling_factor.png")
    stats = record.extra["delta_statistics"]
    stat_rows = [
        (name, *(f"{mean_std([s[k] for s in runs])[0]:.2e}" for k in ("mean", "mean_abs", "std", "max_abs")))
        for name, runs in stats.items()
    ]
    sizes = record.extra["sizes"]
    text_seeds = record.config["seeds"]
    n_masks = len(record.extra["mask_seeds"]) * len(text_seeds)
    return "\n\n".join([
        f"#### Real regime: {text_regime_name(record.config)} (train {sizes['train']:,}, validation "
        f"{sizes['val']:,}, test {sizes['test']:,} examples)",
        f"##### {MAIN_TABLE}\n\n{record.extra['metric']} on {sizes['test']} test examples, mean ± std over "
        f"{n_masks} masks ({len(record.extra['mask_seeds'])} per fine-tuning seed, {len(text_seeds)} seed(s)); "
        f"each q is chosen once per model and rate on the {sizes['val']:,} validation examples, with a search "
        "mask that is not among the scored ones. The paper's table could not be read (paper.py), so there is no "
        "Paper column.\n\n" + _wide_table(record, rates),
        "![metric vs pruning rate](figures/metric_vs_rate.png)\n\n"
        "![Fig. 1 analogue: metric vs rescaling factor](figures/rescaling_factor.png)",
        "##### Delta statistics\n\n" + md_table(["fine-tune", "mean", "mean |Δ|", "std", "max |Δ|"], stat_rows),
        _tables(record, lambda t: not t.startswith(SYNTHETIC_PREFIX) and t != MAIN_TABLE),
    ])  # fmt: skip
