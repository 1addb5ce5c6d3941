"""The DAREx experiments: each preset runs one and returns a results record (see common.cli).

``text`` (smoke, mini, paper): an encoder fine-tuned on a text task, then every DPP method at every rate:
DARE, DAREx-q with q chosen on labelled validation data / by the last layer's output change / per layer
from the analytical bound, magnitude and WANDA on deltas; the Fig. 1 analogue (accuracy against the
rescaling factor); a large-delta fine-tune; DAREx-L2 (AdamR-L2 fine-tunes, then DARE and DAREx-q).
``synthetic``: the notes' MLP toy (``synthetic.py``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.cli import RunContext, default_report
from common.config import to_dict
from common.plotting import method_color, method_marker, plt, savefig, style
from common.results import (
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
    Measurement,
    RunRecord,
    format_mean_std,
    mean_std,
)
from common.results import markdown_table as md_table
from common.runtime import generator

from . import synthetic
from .checks import check_inputs, run_checks, text_input_checks
from .config import DarexConfig, TextConfig
from .data import Encoded, Example, batches, encode, group_split, packed_windows, read_labelled_file, rotten_tomatoes
from .method import (
    Deltas,
    analytical_layer_q,
    coarse_to_fine_q,
    collect_input_statistics,
    dare,
    delta_parameters,
    delta_statistics,
    head_inputs,
    kept_fraction,
    magnitude_prune,
    optimise_layer_q,
    output_change,
    q_grid,
    wanda_prune,
)
from .models import load_classifier, load_tokenizer
from .storage import directory_bytes, save_sparse_delta
from .train import FinetuneSpec, finetune, score

log = logging.getLogger(__name__)

FINETUNE_FORMAT = 1
"""Bump when the fine-tuning code changes what it produces, so cached fine-tuned models are not reused."""

METHODS = {
    "dare": "DARE (1/(1-p))",
    "darex_q_labelled": "DAREx-q, global q on labelled validation",
    "darex_q_unlabelled": "DAREx-q, global q by output change (no labels)",
    "darex_q_analytical": "DAREx-q, per-layer analytical q (η by output change)",
    "darex_q_optimised": "DAREx-q, per-layer q by optimisation (no labels)",
    "magnitude": "Magnitude on deltas",
    "wanda": "WANDA on deltas",
}
# The method's three variants in shades of the house colour for "ours"; DARE and the importance baselines
# in theirs (common.plotting), so the same method looks the same in every figure.
COLORS = {
    "dare": method_color("random"),
    "darex_q_labelled": method_color("ours"),
    "darex_q_unlabelled": "#ff9896",
    "darex_q_analytical": "#8c1a1b",
    "darex_q_optimised": "#e7969c",
    "magnitude": method_color("magnitude"),
    "wanda": "#17becf",
}
RANDOM_METHODS = ("dare", "darex_q_labelled", "darex_q_unlabelled", "darex_q_analytical", "darex_q_optimised")
MAIN_TABLE = "Table 1 analogue: task metric after delta-parameter pruning"
REFERENCE_TABLE = "Unpruned references"
Q_TABLE = "Chosen rescaling factors"
LARGE_TABLE = "Large deltas: the same task fine-tuned with a larger learning rate"
L2_TABLE = "DAREx-L2: fine-tuning with AdamR-L2, then pruning"
STORAGE_TABLE = "Storage of the pruned delta"


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
    return TextTask(
        tokenizer=tokenizer, pad_id=tokenizer.pad_token_id, train=encoded["train"], val=encoded["val"],
        test=encoded["test"], unlabelled=unlabelled_batch,
        calibration=packed_windows(tokenizer, texts, text.window, text.calibration_windows), train_texts=texts,
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


def finetuned_model(cfg: DarexConfig, ctx: RunContext, task: TextTask, spec: FinetuneSpec, tag: str) -> nn.Module:
    """The model fine-tuned with ``spec``, from the cache when this exact run was done before."""
    vocab = task.tokenizer.vocab_size
    key = {"text": to_dict(cfg.text), "spec": dataclasses.asdict(spec), "format": FINETUNE_FORMAT}

    def create() -> dict[str, torch.Tensor]:
        model = load_classifier(cfg.text.model_path, cfg.text.num_labels, vocab, seed=spec.seed).to(ctx.device)
        finetune(model, task.train, spec, task.pad_id, desc=f"fine-tune {tag}")
        return {k: v.cpu() for k, v in model.state_dict().items()}

    state = ctx.cache.get_or_create(f"finetuned-{tag}", key, create)
    model = load_classifier(cfg.text.model_path, cfg.text.num_labels, vocab, seed=spec.seed)
    model.load_state_dict(state)
    return model.to(ctx.device).eval()


# ----------------------------------------------------------------------------------------------------
# Evaluating pruned deltas of one fine-tuned model


class Bench:
    """θ_P + Δ̂ loaded into a copy of the fine-tuned model (its task head kept), scored on the task.

    The unpruned model's last-layer representation of the unlabelled batch is kept as the reference
    of the label-free objective (the change of the last layer's output, DAREx §4).
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
    eta: float | None = None


def _untimed(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def prune_at_rate(
    bench: Bench, p: float, cfg: DarexConfig, mask_seeds: list[int], methods: tuple[str, ...],
    phase: Callable[[str], contextlib.AbstractContextManager] = _untimed,
) -> RateResult:  # fmt: skip
    """Every DPP method in ``methods`` at rate ``p``; q's are chosen with the first mask, then every mask
    is scored on the test split with the chosen q.

    ``phase`` is the run's ``RunContext.phase`` (default: no timing): choosing q is timed as "q search",
    the test scores as "evaluation", drawing the pruned deltas inside either as "deltas and pruning"."""
    pc, d = cfg.prune, bench.deltas
    probe_seed = mask_seeds[0]

    def dare_with(q, mask_seed=probe_seed) -> Deltas:
        with phase("deltas and pruning"):
            return dare(d, p, q, generator(mask_seed))

    q_for: dict[str, float | dict[str, float] | None] = {"dare": None}
    inv_q: dict[str, float] = {"dare": 1.0 / (1.0 - p)}
    eta = None
    with phase("q search"):
        if "darex_q_labelled" in methods:
            q_for["darex_q_labelled"], _ = coarse_to_fine_q(
                lambda q: bench.score(dare_with(q), "val"), p, pc.coarse, pc.fine, pc.patience
            )
        if "darex_q_unlabelled" in methods:
            q_for["darex_q_unlabelled"], _ = coarse_to_fine_q(
                lambda q: -bench.change(dare_with(q)), p, pc.coarse, pc.fine, pc.patience
            )
        if "darex_q_analytical" in methods and p > 0:
            means = {name: s.mean for name, s in bench.stats.items()}
            candidates = {e: analytical_layer_q(d, means, p, e) for e in pc.etas}
            eta = min(candidates, key=lambda e: bench.change(dare_with(candidates[e])))
            q_for["darex_q_analytical"] = candidates[eta]
        if "darex_q_optimised" in methods and p in pc.optimise_rates:
            q_for["darex_q_optimised"] = bench.optimised_q(p, probe_seed, pc.optimise_steps, pc.optimise_batch)
    for method, q in q_for.items():
        if isinstance(q, dict):
            inv_q[method] = sum(1.0 / v for v in q.values()) / len(q)
        elif q is not None:
            inv_q[method] = 1.0 / q
    with phase("evaluation"):
        scores = {m: [bench.score(dare_with(q_for[m], s)) for s in mask_seeds] for m in RANDOM_METHODS if m in q_for}
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
# The text experiment


def _mask_seeds(cfg: DarexConfig, seed: int) -> list[int]:
    return [1_000 * seed + m for m in cfg.prune.mask_seeds]  # distinct masks per fine-tuned model


def run_text(cfg: DarexConfig, ctx: RunContext) -> RunRecord:
    with ctx.phase("data"):
        task = load_task(cfg.text)
    n_train = len(task.train)
    metric_name = cfg.text.metric
    record = ctx.new_record(seeds=list(cfg.seeds))
    record.extra.update(mask_seeds=list(cfg.prune.mask_seeds), metric=metric_name, methods=METHODS,
                        sizes={"train": n_train, "val": len(task.val), "test": len(task.test)})  # fmt: skip
    main: dict[tuple[str, float], list[float]] = {}
    inv_q: dict[tuple[str, float], list[float]] = {}
    etas: dict[float, list[float]] = {}
    refs: dict[str, list[float]] = {}
    large: dict[str, list[float]] = {}
    l2: dict[str, list[float]] = {}
    curves, stats, storage = [], {}, {}

    for seed in cfg.seeds:
        masks = _mask_seeds(cfg, seed)
        with ctx.phase("fine-tuning"):  # loading the pre-trained model, then the (cached) fine-tune
            pretrained = load_classifier(cfg.text.model_path, cfg.text.num_labels, task.tokenizer.vocab_size, seed)
            pretrained = pretrained.to(ctx.device)
            finetuned = finetuned_model(cfg, ctx, task, finetune_spec(cfg, seed, n_train=n_train), "standard")
        with ctx.phase("deltas and pruning"):  # deltas, the label-free reference, calibration statistics
            bench = Bench(pretrained, finetuned, task, cfg, f"standard (seed {seed})")
        with ctx.phase("evaluation"):
            refs.setdefault("fine-tuned (unpruned)", []).append(bench.score(bench.deltas))
            refs.setdefault("pre-trained encoder + fine-tuned head (all deltas dropped)", []).append(
                bench.score({n: torch.zeros_like(v) for n, v in bench.deltas.items()})
            )
        with ctx.phase("deltas and pruning"):
            stats.setdefault("standard", []).append(delta_statistics(bench.deltas))
        for p in cfg.prune.rates:
            result = prune_at_rate(bench, p, cfg, masks, tuple(METHODS), phase=ctx.phase)
            for method, values in result.scores.items():
                main.setdefault((method, p), []).extend(values)
            for method, value in result.inv_q.items():
                inv_q.setdefault((method, p), []).append(value)
            if result.eta is not None:
                etas.setdefault(p, []).append(result.eta)
            if p == cfg.prune.figure_rate:
                with ctx.phase("storage"):
                    labelled_q = 1.0 / result.inv_q["darex_q_labelled"]
                    sparse = dare(bench.deltas, p, labelled_q, generator(masks[0]))
                    storage = _storage_sizes(bench, sparse)
        with ctx.phase("Fig. 1 curve"):
            curves.append(rescaling_curve(bench, cfg.prune.figure_rate, cfg.prune.figure_points, masks[0]))
        del bench

        # Large deltas: the same fine-tune with a larger learning rate (paper §5's failure case for DARE).
        spec = finetune_spec(cfg, seed, lr=cfg.finetune.large_delta_lr, n_train=n_train)
        with ctx.phase("fine-tuning"):
            finetuned = finetuned_model(cfg, ctx, task, spec, "large-delta")
        with ctx.phase("deltas and pruning"):
            bench = Bench(pretrained, finetuned, task, cfg, "large-delta")
        with ctx.phase("evaluation"):
            large.setdefault("fine-tuned (unpruned)", []).append(bench.score(bench.deltas))
        with ctx.phase("deltas and pruning"):
            stats.setdefault("large-delta", []).append(delta_statistics(bench.deltas))
        for p in cfg.prune.large_delta_rates:
            result = prune_at_rate(bench, p, cfg, masks, ("dare", "darex_q_labelled", "magnitude", "wanda"),
                                   phase=ctx.phase)  # fmt: skip
            for method, values in result.scores.items():
                large.setdefault(f"{METHODS[method]}, p={p}", []).extend(values)
        del bench

        # DAREx-L2: AdamR-L2 fine-tunes, then DARE and DAREx-q (labelled q) at the extreme rate.
        p = cfg.prune.figure_rate
        for lam in cfg.finetune.adamr_lambdas:
            spec = finetune_spec(cfg, seed, optimizer="adamr-l2", weight_decay=lam, n_train=n_train)
            tag = f"adamr-l2-{lam}"
            with ctx.phase("fine-tuning"):
                finetuned = finetuned_model(cfg, ctx, task, spec, tag)
            with ctx.phase("deltas and pruning"):
                bench = Bench(pretrained, finetuned, task, cfg, tag)
            with ctx.phase("evaluation"):
                l2.setdefault(f"λ={lam}: fine-tuned (unpruned)", []).append(bench.score(bench.deltas))
            with ctx.phase("deltas and pruning"):
                stats.setdefault(f"adamr-l2 λ={lam}", []).append(delta_statistics(bench.deltas))
            result = prune_at_rate(bench, p, cfg, masks, ("dare", "darex_q_labelled"), phase=ctx.phase)
            l2.setdefault(f"λ={lam}: DARE, p={p}", []).extend(result.scores["dare"])
            l2.setdefault(f"λ={lam}: DAREx-q (labelled q), p={p}", []).extend(result.scores["darex_q_labelled"])
            del bench

    unit = "%" if metric_name == "accuracy" else ""
    for name, values in refs.items():
        record.add(REFERENCE_TABLE, name, metric_name, values, unit=unit)
    for (method, p), values in main.items():
        record.add(MAIN_TABLE, METHODS[method], f"{metric_name}, p={p}", values, unit=unit)
    for (method, p), values in inv_q.items():
        if method != "dare":
            record.add(Q_TABLE, METHODS[method], f"1/q at p={p} (DARE: {1 / (1 - p):.4g})", values)
    for p, values in etas.items():
        record.add(Q_TABLE, METHODS["darex_q_analytical"], f"η at p={p}", values)
    for name, values in large.items():
        record.add(LARGE_TABLE, name, metric_name, values, unit=unit)
    for name, values in l2.items():
        record.add(L2_TABLE, name, metric_name, values, unit=unit)
    for name, value in storage.items():
        record.add(STORAGE_TABLE, name, "MB", value / 1e6, digits=3)
    record.extra["delta_statistics"] = stats
    record.extra["rescaling_curves"] = curves
    record.extra["figure_rate"] = cfg.prune.figure_rate
    _claims(record, cfg)
    return record


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
# Claims: verdicts computed from the record, with the rule stated next to each


def _m(record: RunRecord, table: str, setting: str, metric: str):
    try:
        return record.get(table, setting, metric)
    except KeyError:
        return None


DELTAS_MATTER = 2.0
"""Points by which the unpruned model must beat the all-deltas-dropped one for the claims to be testable."""


def collapse_and_recovery(ft: Measurement, dare_m: Measurement, darex_m: Measurement) -> tuple[str, str]:
    """Evidence and verdict of "DARE collapses and DAREx-q recovers", with the rule stated in the evidence."""
    drop, gain = ft.mean - dare_m.mean, darex_m.mean - dare_m.mean
    noise = max(2 * dare_m.std, 2 * darex_m.std, 1.0)
    collapsed, recovered = drop > 10.0, gain > noise
    verdict = REPRODUCED if collapsed and recovered else PARTLY if (collapsed or recovered) else NOT_REPRODUCED
    evidence = (
        f"unpruned {format_mean_std(ft.values)}; DARE {format_mean_std(dare_m.values)} (drop {drop:.1f}); "
        f"DAREx-q labelled {format_mean_std(darex_m.values)} (gain {gain:+.1f}). Rule: collapse = drop > 10 "
        "points, recovery = gain > max(2 std, 1)"
    )
    return evidence, verdict


def _claims(record: RunRecord, cfg: DarexConfig) -> None:
    metric = cfg.text.metric
    p = cfg.prune.figure_rate
    ft = _m(record, REFERENCE_TABLE, "fine-tuned (unpruned)", metric)
    at = {k: _m(record, MAIN_TABLE, METHODS[k], f"{metric}, p={p}") for k in METHODS}
    fmt = lambda m: format_mean_std(m.values) if m else "n/a"  # noqa: E731
    # The claims are about what pruning the deltas does. When the deltas carry nothing (the fine-tuned model
    # scores no better than the pre-trained body with the fine-tuned head, e.g. the smoke preset's untrained
    # tiny model), there is nothing to test.
    dropped = _m(record, REFERENCE_TABLE, "pre-trained encoder + fine-tuned head (all deltas dropped)", metric)
    deltas_matter = ft is not None and dropped is not None and ft.mean - dropped.mean > DELTAS_MATTER
    inert = "" if deltas_matter else "; the deltas carry nothing here (unpruned ≈ all deltas dropped): not testable"

    def verdict_if_testable(verdict: str) -> str:
        return verdict if deltas_matter else NOT_TESTABLE

    # C1: DARE collapses at extreme rates and DAREx-q recovers.
    if ft and at["dare"] and at["darex_q_labelled"]:
        evidence, verdict = collapse_and_recovery(ft, at["dare"], at["darex_q_labelled"])
        record.claim(
            f"DARE collapses at p = {p} and DAREx-q recovers",
            paper_evidence="Abstract; Table 1 (DAREx-q > 30% over DARE on CoLA/SST-2 at high p; numbers not read)",
            our_evidence=evidence + inert,
            verdict=verdict_if_testable(verdict),
        )
    # C2: the label-free choice of q is close to the labelled one.
    if at["darex_q_labelled"] and at["darex_q_unlabelled"]:
        gap = at["darex_q_labelled"].mean - at["darex_q_unlabelled"].mean
        inv_l = _m(record, Q_TABLE, METHODS["darex_q_labelled"], f"1/q at p={p} (DARE: {1 / (1 - p):.4g})")
        inv_u = _m(record, Q_TABLE, METHODS["darex_q_unlabelled"], f"1/q at p={p} (DARE: {1 / (1 - p):.4g})")
        close = abs(gap) <= max(2.0, 2 * at["darex_q_labelled"].std)
        record.claim(
            "The label-free choice of q (last-layer output change) is close to the labelled one",
            paper_evidence="Fig. 1 (left): the output-change minimiser is 'an excellent proxy' for the best 1/q",
            our_evidence=(f"labelled {fmt(at['darex_q_labelled'])} at 1/q {inv_l.mean:.1f}; label-free "
                          f"{fmt(at['darex_q_unlabelled'])} at 1/q {inv_u.mean:.1f}; "
                          f"rule: |gap| <= max(2, 2 std){inert}"),
            verdict=verdict_if_testable(REPRODUCED if close else NOT_REPRODUCED),
        )  # fmt: skip
    # C3: large delta mean/variance breaks DARE (at moderate rates, where importance-based DPP does better;
    # and more at the extreme rate than on the standard fine-tune).
    stats = record.extra["delta_statistics"]
    large_ft = _m(record, LARGE_TABLE, "fine-tuned (unpruned)", metric)
    if "large-delta" in stats and large_ft and ft:
        std_ratio = (
            mean_std([s["std"] for s in stats["large-delta"]])[0] / mean_std([s["std"] for s in stats["standard"]])[0]
        )

        def drops(rate: float):
            dare_l = _m(record, LARGE_TABLE, f"{METHODS['dare']}, p={rate}", metric)
            dare_s = _m(record, MAIN_TABLE, METHODS["dare"], f"{metric}, p={rate}")
            if not (dare_l and dare_s):
                return None
            return dare_l, large_ft.mean - dare_l.mean, ft.mean - dare_s.mean

        moderate = [r for r in cfg.prune.large_delta_rates if r < p]
        if moderate and drops(max(moderate)):
            q_rate = max(moderate)
            dare_l, drop_large, drop_std = drops(q_rate)
            importance = [_m(record, LARGE_TABLE, f"{METHODS[k]}, p={q_rate}", metric) for k in ("magnitude", "wanda")]
            best_imp = max((m for m in importance if m), key=lambda m: m.mean, default=None)
            breaks = drop_large > drop_std + max(2 * dare_l.std, 2.0)
            better = best_imp is not None and best_imp.mean > dare_l.mean + max(2 * dare_l.std, 1.0)
            record.claim(
                "Large delta mean/variance breaks DARE at moderate rates, where importance-based DPP does better",
                paper_evidence="§3 (Theorem 3.1), §5 / Table 6 (numbers not read)",
                our_evidence=(f"delta std ×{std_ratio:.1f}; at p={q_rate} DARE drops {drop_large:.1f} points on the "
                              f"large-delta model vs {drop_std:.1f} on the standard one; best importance-based "
                              f"{best_imp.mean if best_imp else math.nan:.1f} vs DARE {dare_l.mean:.1f}. Rule: breaks "
                              f"= extra drop > max(2 std, 2), better = margin > max(2 std, 1){inert}"),
                verdict=verdict_if_testable(
                    REPRODUCED if breaks and better else PARTLY if (breaks or better) else NOT_REPRODUCED
                ),
            )  # fmt: skip
        if p in cfg.prune.large_delta_rates and drops(p):
            dare_l, drop_large, drop_std = drops(p)
            worse = drop_large > drop_std + max(2 * dare_l.std, 2.0)
            record.claim(
                f"Larger deltas make DARE lose more at p = {p}",
                paper_evidence="§3, Theorem 3.1: the bound on the output change grows with the deltas' mean and "
                "variance",
                our_evidence=(f"delta std ×{std_ratio:.1f}; DARE drops {drop_large:.1f} points from its unpruned "
                              f"model on the large-delta fine-tune vs {drop_std:.1f} on the standard one. Rule: "
                              f"extra drop > max(2 std, 2){inert}"),
                verdict=verdict_if_testable(REPRODUCED if worse else NOT_REPRODUCED),
            )  # fmt: skip
    # C4: AdamR-L2 makes DARE robust at the extreme rate.
    if cfg.finetune.adamr_lambdas and at["dare"] and ft:
        best = max(
            ((lam, _m(record, L2_TABLE, f"λ={lam}: DARE, p={p}", metric)) for lam in cfg.finetune.adamr_lambdas),
            key=lambda t: t[1].mean if t[1] else -math.inf,
        )
        lam, dare_l2 = best
        ft_l2 = _m(record, L2_TABLE, f"λ={lam}: fine-tuned (unpruned)", metric)
        if dare_l2 and ft_l2:
            gain = dare_l2.mean - at["dare"].mean
            kept = ft_l2.mean - dare_l2.mean
            robust = gain > max(2 * at["dare"].std, 2.0) or (kept < 2.0 and ft.mean - at["dare"].mean > 5.0)
            room = ft.mean - at["dare"].mean > 2.0
            record.claim(
                f"AdamR-L2 fine-tuning makes DARE robust at p = {p}",
                paper_evidence="Table 1 (DAREx-L2 > 35% over DARE on CoLA/SST-2; numbers not read)",
                our_evidence=(f"best λ={lam}: DARE {fmt(dare_l2)} (its unpruned {fmt(ft_l2)}) vs DARE after AdamW "
                              f"{fmt(at['dare'])} (unpruned {fmt(ft)}){inert}"),
                verdict=verdict_if_testable((REPRODUCED if robust else NOT_REPRODUCED) if room else NOT_TESTABLE),
            )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Entry points


def run(cfg: DarexConfig, ctx: RunContext) -> RunRecord:
    check_inputs(cfg)  # every model directory and data file the config names, before any work
    if cfg.experiment == "synthetic":
        return synthetic.run(cfg, ctx)
    if cfg.experiment == "decoder":
        from . import decoder

        return decoder.run(cfg, ctx)
    return run_text(cfg, ctx)


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
    if record.config.get("experiment") == "synthetic":
        return default_report(record, out_dir) + synthetic.report_markdown(record, out_dir)
    if record.config.get("experiment") == "decoder":
        return default_report(record, out_dir)
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
    parts = [
        default_report(record, out_dir).split("\n\n")[0],  # the provenance line
        f"#### {MAIN_TABLE}\n\n{record.extra['metric']} on {sizes['test']} test examples, mean ± std over "
        f"{len(record.extra['mask_seeds'])} masks × {len(record.seeds)} fine-tuning seed(s); q chosen with the first "
        f"mask. The paper's table could not be read (paper.py), so there is no Paper column.\n\n"
        + _wide_table(record, rates),
        "![metric vs pruning rate](figures/metric_vs_rate.png)\n\n"
        "![Fig. 1 analogue: metric vs rescaling factor](figures/rescaling_factor.png)",
        "#### Delta statistics\n\n" + md_table(["fine-tune", "mean", "mean |Δ|", "std", "max |Δ|"], stat_rows),
    ]
    rest = dataclasses.replace(record, measurements=[m for m in record.measurements if m.table != MAIN_TABLE])
    parts.append(default_report(rest, out_dir).split("\n\n", 1)[1])
    return "\n\n".join(parts) + "\n"
