"""The collapse regime: the synthetic DAREx experiment of the research notes (§4.2).

An MLP is "pre-trained" on one teacher-labelled task and fine-tuned on a related one, so the deltas are real
fine-tuning deltas whose size we control. At the notes' pilot scale (``mini``) DARE collapses at p = 0.99,
which the real regime (MiniLM on Rotten Tomatoes) never reaches; so this is where the paper's claims about
recovering from the collapse are tested. Fine-tunes: ``standard`` (Adam), ``large-delta`` (Adam with a larger
learning rate) and ``adamr-l2 λ=...`` (AdamR-L2, DAREx-L2), all from the same pre-trained model with the same
minibatches. Every mask is pruned and its q chosen on its own (labelled validation accuracy, or the change of
the last hidden layer's output on unlabelled inputs), so each mask replicates the whole procedure.

Run alone with ``python -m darex reproduce --preset smoke --set experiment=synthetic``; ``mini`` runs it next to
the real regime (``experiment=text+synthetic``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.config import to_dict
from common.counting import count_params
from common.errors import check_finite
from common.plotting import method_color, plt, savefig, style
from common.results import RunRecord
from common.runtime import ArtifactCache, generator, progress, seed_everything

from .adamr import AdamR
from .config import DarexConfig, SyntheticConfig
from .method import (
    Deltas,
    collect_input_statistics,
    dare,
    delta_parameters,
    delta_statistics,
    head_inputs,
    magnitude_prune,
    output_change,
    q_grid,
    search_global_q,
    wanda_prune,
)
from .models import MLP, SyntheticTasks
from .regimes import (
    LARGE,
    STANDARD,
    SYNTHETIC,
    SYNTHETIC_DROPPED,
    SYNTHETIC_METHODS,
    Job,
    inv_q_metric,
    l2_model,
    mask_id,
    mask_ids,
    model_table,
    q_table,
    rate_metric,
    rate_plan,
    reference_table,
    unpruned_setting,
    validation_metric,
)

log = logging.getLogger(__name__)

PAIR_FORMAT = 2
"""Bump when what the pre-training or fine-tuning returns changes, so cached models of the old form are not reused."""

METRIC = "accuracy"


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float, batch_size: int, seed: int,
          desc: str, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:  # fmt: skip
    """Adam (or ``optimizer``) on cross-entropy with seeded minibatches; a NaN or infinite loss raises
    ``TrainingDivergedError``."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    g = generator(seed)
    model.train()
    for step in progress(range(steps), desc=desc):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        check_finite(loss, step=step, where=f"darex synthetic experiment, {desc}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(dim=1) == y).float().mean().item() * 100


def _tasks(cfg: SyntheticConfig, seed: int) -> SyntheticTasks:
    return SyntheticTasks(in_dim=cfg.in_dim, n_classes=cfg.n_classes, shift=cfg.task_shift, seed=seed)


def _new_mlp(cfg: SyntheticConfig) -> MLP:
    return MLP(cfg.in_dim, cfg.hidden, cfg.depth, cfg.n_classes)


# ----------------------------------------------------------------------------------------------------
# The models (cached)


def models(cfg: DarexConfig) -> list[str]:
    """The fine-tunes of the collapse regime: standard, large-delta and one per AdamR-L2 strength."""
    return [STANDARD, LARGE, *(l2_model(lam) for lam in cfg.synthetic.adamr_lambdas)]


def _pretrain_key(syn: SyntheticConfig, seed: int) -> dict[str, Any]:
    fields = ("in_dim", "hidden", "depth", "n_classes", "task_shift", "n_pretrain", "pretrain_steps", "pretrain_lr",
              "batch_size")  # fmt: skip
    return {"synthetic": {k: getattr(syn, k) for k in fields}, "seed": seed, "format": PAIR_FORMAT}


def pretrained_state(syn: SyntheticConfig, seed: int, cache: ArtifactCache) -> dict[str, torch.Tensor]:
    """The MLP trained on the pre-training task (cached)."""

    def create() -> dict[str, torch.Tensor]:
        seed_everything(seed)
        model = _new_mlp(syn)
        x, y = _tasks(syn, seed).sample("pretrain", syn.n_pretrain, seed=10 * seed + 1)
        train(model, x, y, steps=syn.pretrain_steps, lr=syn.pretrain_lr, batch_size=syn.batch_size, seed=seed,
              desc=f"pre-train (seed {seed})")  # fmt: skip
        return model.state_dict()

    return cache.get_or_create("pretrained", _pretrain_key(syn, seed), create)


def _finetune_recipe(syn: SyntheticConfig, model: str) -> dict[str, Any]:
    if model == STANDARD:
        return {"optimizer": "adam", "lr": syn.finetune_lr, "lambda": 0.0}
    if model == LARGE:
        return {"optimizer": "adam", "lr": syn.large_delta_lr, "lambda": 0.0}
    return {"optimizer": "adamr-l2", "lr": syn.finetune_lr, "lambda": float(model.split("=")[-1])}


def _fine_tuned_pair(cfg: DarexConfig, seed: int, model: str, cache: ArtifactCache) -> dict[str, dict]:
    """The pre-trained model's state and that of its ``model`` fine-tune (cached), as ``{pretrained, finetuned}``.

    Every fine-tune of one seed starts from the same pre-trained model and sees the same minibatches; only the
    optimiser (Adam or AdamR-L2 towards the pre-trained weights) and the learning rate differ."""
    syn = cfg.synthetic
    pre = pretrained_state(syn, seed, cache)
    recipe = _finetune_recipe(syn, model)
    key = {**_pretrain_key(syn, seed), "n_finetune": syn.n_finetune, "finetune_steps": syn.finetune_steps,
           **recipe}  # fmt: skip

    def create() -> dict[str, torch.Tensor]:
        net = _new_mlp(syn)
        net.load_state_dict(pre)
        if recipe["optimizer"] == "adam":
            optimizer = torch.optim.Adam(net.parameters(), lr=recipe["lr"])
        else:
            params = list(net.parameters())
            optimizer = AdamR(params, reference=[p.detach().clone() for p in params], lr=recipe["lr"],
                              weight_decay=recipe["lambda"], mode="l2")  # fmt: skip
        x, y = _tasks(syn, seed).sample("finetune", syn.n_finetune, seed=10 * seed + 2)
        train(net, x, y, steps=syn.finetune_steps, lr=recipe["lr"], batch_size=syn.batch_size, seed=seed + 1,
              desc=f"fine-tune {model} (seed {seed})", optimizer=optimizer)  # fmt: skip
        return net.state_dict()

    return {"pretrained": pre, "finetuned": cache.get_or_create(f"finetuned-{model.replace(' λ=', '-')}", key, create)}


def _load_pair(states: dict[str, dict[str, torch.Tensor]], cfg: SyntheticConfig) -> tuple[MLP, MLP]:
    out = []
    for name in ("pretrained", "finetuned"):
        model = _new_mlp(cfg)
        model.load_state_dict(states[name])
        out.append(model.eval())
    return out[0], out[1]


class Probe:
    """θ_P + Δ̂ loaded into a copy of the fine-tuned model: only the delta tensors are replaced, so the
    fine-tuned task head (not a delta) is kept, as in the real regime."""

    def __init__(self, pretrained: nn.Module, finetuned: nn.Module):
        self.pre_state = pretrained.state_dict()
        self.model = copy.deepcopy(finetuned).eval()

    def load(self, pruned: Deltas) -> None:
        self.model.load_state_dict({n: self.pre_state[n] + d for n, d in pruned.items()}, strict=False)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return accuracy(self.model, x, y)

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the task head (the last hidden layer's output): the label-free objective's target."""
        return head_inputs(self.model, self.model.head, lambda m: m(x))


# ----------------------------------------------------------------------------------------------------
# The jobs


def seeds_of(cfg: DarexConfig) -> list[int]:
    """This experiment's seeds: ``synthetic.seeds``, or the run's ``seeds`` when that is empty."""
    return list(cfg.synthetic.seeds or cfg.seeds)


def jobs(cfg: DarexConfig) -> tuple[list[Job], list[Job]]:
    """(training jobs, pruning jobs): one pre-training per seed, then one job per fine-tune (which it trains,
    from the cached pre-trained model, and prunes at every rate and mask)."""
    train_jobs = [Job(SYNTHETIC, "train", seed, "pretrained", cost=1.0) for seed in seeds_of(cfg)]
    prune_jobs = [
        Job(SYNTHETIC, "prune", seed, model, cost=1.5 if model in (STANDARD, LARGE) else 0.8)
        for seed in seeds_of(cfg)
        for model in models(cfg)
    ]
    return train_jobs, prune_jobs


def plan(cfg: DarexConfig, model: str) -> list[tuple[float, tuple[str, ...]]]:
    """The rates a fine-tune is pruned at, with its methods (:func:`regimes.rate_plan`; this regime's standard
    fine-tune gets ``SYNTHETIC_METHODS``; the extreme rate is ``prune.figure_rate``)."""
    r = cfg.prune
    return rate_plan(tuple(SYNTHETIC_METHODS), r.rates, r.large_delta_rates, r.figure_rate, model)


def run_job(job: Job, cfg: DarexConfig, cache: ArtifactCache, phase: Callable[[str], Any]) -> dict | None:
    if job.stage == "train":
        with phase("pre-training"):
            pretrained_state(cfg.synthetic, job.seed, cache)
        return None
    return evaluate_model(cfg, job.seed, job.model, cache, phase)


def evaluate_model(cfg: DarexConfig, seed: int, model: str, cache: ArtifactCache,
                   phase: Callable[[str], Any]) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``model`` (cached) and prune it at its rates with every one of its methods and masks.

    DARE, DAREx-q (labelled) and DAREx-q (label-free) of one mask share the mask: it is drawn once with
    q = 1 and rescaled by 1/q, which equals ``dare(deltas, p, q, generator(mask))`` exactly.
    """
    syn = cfg.synthetic
    with phase("fine-tuning"):
        pretrained, finetuned = _load_pair(_fine_tuned_pair(cfg, seed, model, cache), syn)
    with phase("data"):
        tasks = _tasks(syn, seed)
        x_val, y_val = tasks.sample("finetune", syn.n_val, seed=10 * seed + 3)
        x_test, y_test = tasks.sample("finetune", syn.n_test, seed=10 * seed + 4)
        x_free, _ = tasks.sample("finetune", syn.n_unlabelled, seed=10 * seed + 5)  # labels never used
    out: dict[str, Any] = {"refs": {}, "scores": {}, "inv_q": {}, "val_curves": {}, "val_dare": {}}
    with phase("evaluation"):
        out["refs"][unpruned_setting(model)] = accuracy(finetuned, x_test, y_test)
        if model == STANDARD:
            out["refs"][SYNTHETIC_DROPPED] = accuracy(pretrained, x_test, y_test)
    with phase("deltas and pruning"):
        deltas = delta_parameters(pretrained, finetuned, exclude=cfg.exclude)
        out["stats"] = delta_statistics(deltas)
        out["n_delta_parameters"] = sum(d.numel() for d in deltas.values())
        out["n_model_parameters"] = count_params(pretrained)
        probe = Probe(pretrained, finetuned)
        reference = probe.representation(x_free)
        norms = {n: s.norm for n, s in collect_input_statistics(finetuned, lambda m: m(x_free), names=deltas).items()}
    several_l2 = len(syn.adamr_lambdas) > 1 and model not in (STANDARD, LARGE)
    masks = [mask_id(seed, m) for m in cfg.prune.mask_seeds]
    for p, methods in plan(cfg, model):
        grid = q_grid(p, cfg.prune.q_grid_points)
        search = {"darex_q_labelled", "darex_q_unlabelled"} & set(methods)
        for mask in masks:
            with phase("deltas and pruning"):
                kept = dare(deltas, p, 1.0, generator(mask))  # the mask, not rescaled

            def rescaled(q: float, kept=kept) -> Deltas:
                return {n: t / q for n, t in kept.items()}

            chosen = {"dare": 1.0 - p}
            if search:
                val_acc, change = {}, {}
                with phase("q search"):
                    for q in grid:
                        probe.load(rescaled(q))
                        val_acc[q] = probe.accuracy(x_val, y_val)
                        change[q] = output_change(reference, probe.representation(x_free))
                if "darex_q_labelled" in search:
                    chosen["darex_q_labelled"], _ = search_global_q(val_acc.__getitem__, grid)
                    if model == STANDARD:
                        out["val_curves"].setdefault(p, []).append([val_acc[q] for q in grid])
                if "darex_q_unlabelled" in search:
                    chosen["darex_q_unlabelled"], _ = search_global_q(lambda q, change=change: -change[q], grid)
            with phase("evaluation"):
                for method, q in chosen.items():
                    probe.load(rescaled(q))
                    out["scores"].setdefault((method, p), []).append(probe.accuracy(x_test, y_test))
                    if method != "dare":
                        out["inv_q"].setdefault((method, p), []).append(1.0 / q)
                if several_l2:  # choosing among several λ needs DARE's validation accuracy
                    probe.load(rescaled(1.0 - p))
                    out["val_dare"].setdefault(p, []).append(probe.accuracy(x_val, y_val))
        with phase("deltas and pruning"):
            importance = {}
            if "magnitude" in methods:
                importance["magnitude"] = magnitude_prune(deltas, p)
            if "wanda" in methods:
                importance["wanda"] = wanda_prune(deltas, p, norms)
        with phase("evaluation"):
            for method, pruned in importance.items():
                probe.load(pruned)
                out["scores"][(method, p)] = [probe.accuracy(x_test, y_test)]
        log.info("synthetic %s (seed %d) p=%g: %s", model, seed, p,
                 {m: round(sum(v) / len(v), 2) for (m, r), v in out["scores"].items() if r == p})  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------
# The record


def add_to_record(record: RunRecord, cfg: DarexConfig, results: dict[tuple[int, str], dict]) -> None:
    """Measurements of the collapse regime from ``results[(seed, model)]`` (what :func:`evaluate_model` returned)."""
    seeds = seeds_of(cfg)
    refs_table = reference_table(SYNTHETIC)
    for model in models(cfg):
        for setting in (unpruned_setting(model), *([SYNTHETIC_DROPPED] if model == STANDARD else [])):
            values = [results[(s, model)]["refs"][setting] for s in seeds]
            record.add(refs_table, setting, METRIC, values, seeds=seeds, unit="%")
    for model in models(cfg):
        rates = [p for p, _ in plan(cfg, model)]
        for method in SYNTHETIC_METHODS:
            for p in rates:
                key = (method, p)
                if key not in results[(seeds[0], model)]["scores"]:
                    continue
                random = method not in ("magnitude", "wanda")
                values = [v for s in seeds for v in results[(s, model)]["scores"][key]]
                record.add(model_table(SYNTHETIC, model), SYNTHETIC_METHODS[method], rate_metric(METRIC, p), values,
                           seeds=mask_ids(seeds, cfg.prune.mask_seeds) if random else seeds, unit="%")  # fmt: skip
        for p in rates:
            if p in results[(seeds[0], model)]["val_dare"]:
                values = [v for s in seeds for v in results[(s, model)]["val_dare"][p]]
                record.add(model_table(SYNTHETIC, model), SYNTHETIC_METHODS["dare"], validation_metric(METRIC, p),
                           values, seeds=mask_ids(seeds, cfg.prune.mask_seeds), unit="%")  # fmt: skip
    for model in models(cfg):
        for method in SYNTHETIC_METHODS:
            for p, _ in plan(cfg, model):
                key = (method, p)
                if key in results[(seeds[0], model)]["inv_q"]:
                    values = [v for s in seeds for v in results[(s, model)]["inv_q"][key]]
                    setting = SYNTHETIC_METHODS[method] + ("" if model == STANDARD else f" ({model})")
                    record.add(
                        q_table(SYNTHETIC),
                        setting,
                        inv_q_metric(p),
                        values,
                        seeds=mask_ids(seeds, cfg.prune.mask_seeds),
                    )
    first = results[(seeds[0], STANDARD)]
    curves = {
        str(p): {
            "q": q_grid(p, cfg.prune.q_grid_points),
            "accuracy": [c for s in seeds for c in results[(s, STANDARD)]["val_curves"][p]],
        }
        for p in cfg.prune.rates
        if p in first["val_curves"]
    }
    record.extra["synthetic"] = {
        "seeds": seeds,
        "delta_statistics": {m: [results[(s, m)]["stats"] for s in seeds] for m in models(cfg)},
        "validation_accuracy_vs_q": curves,
        "n_delta_parameters": first["n_delta_parameters"],
        "n_model_parameters": first["n_model_parameters"],
        "sizes": {"pretrain": cfg.synthetic.n_pretrain, "finetune": cfg.synthetic.n_finetune,
                  "val": cfg.synthetic.n_val, "test": cfg.synthetic.n_test, "unlabelled": cfg.synthetic.n_unlabelled},
        "config": to_dict(cfg.synthetic),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Report


def plot_rescaling_curves(record: RunRecord, path: Path) -> Path:
    """The Fig. 1 analogue: validation accuracy vs the rescaling factor 1/q, one panel per pruning rate.

    DARE's 1/(1 - p) is the right end of each curve (dotted line); the pre-trained and fine-tuned
    models' test accuracies are drawn as horizontal references.
    """
    curves = record.extra["synthetic"]["validation_accuracy_vs_q"]
    reference = {m.setting: m.mean for m in record.tables()[reference_table(SYNTHETIC)]}
    with style():
        fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
        for ax, (p, curve) in zip(axes[0], curves.items(), strict=True):
            inv_q = [1.0 / q for q in curve["q"]]
            acc = torch.tensor(curve["accuracy"])
            mean, std = acc.mean(0), acc.std(0) if len(acc) > 1 else torch.zeros(acc.shape[1])
            ax.plot(inv_q, mean, marker="o", color=method_color("ours"), label="DARE mask rescaled by 1/q")
            ax.fill_between(inv_q, mean - std, mean + std, color=method_color("ours"), alpha=0.2)
            ax.axvline(1.0 / (1.0 - float(p)), color=method_color("DARE"), linestyle=":", label="DARE: 1/(1-p)")
            for name, style_ in ((unpruned_setting(STANDARD), "--"), (SYNTHETIC_DROPPED, "-.")):
                ax.axhline(reference[name], color=method_color("dense"), linestyle=style_, linewidth=1, label=name)
            ax.set(xscale="log", xlabel="rescaling factor 1/q", ylabel="validation accuracy (%)", title=f"p = {p}")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 0.0))
        return savefig(fig, path)


def report_markdown(record: RunRecord, out_dir: Path) -> str:
    """The collapse regime's figure and a line on its setting (its tables are rendered with the others)."""
    info = record.extra["synthetic"]
    sizes, syn = info["sizes"], info["config"]
    text = (
        f"MLP {syn['in_dim']}→{syn['hidden']}×{syn['depth']}→{syn['n_classes']} "
        f"({info['n_model_parameters']:,} parameters, {info['n_delta_parameters']:,} of them deltas), pre-trained "
        f"on {sizes['pretrain']:,} samples for {syn['pretrain_steps']} steps, fine-tuned on {sizes['finetune']:,} "
        f"for {syn['finetune_steps']} steps; q chosen for each mask on {sizes['val']:,} labelled validation samples "
        f"(or {sizes['unlabelled']} unlabelled ones), scored on {sizes['test']:,} test samples."
    )
    seeds = info.get("seeds") or record.config["seeds"]
    masks = len(record.config["prune"]["mask_seeds"])
    if len(seeds) > 1:
        text += (
            f" {len(seeds)} seeds ({', '.join(map(str, seeds))}), each a new task (teachers), pre-trained model and "
            f"set of fine-tunes, × {masks} masks; tables: mean ± std over all {len(seeds) * masks} masks (or over "
            "the seeds, for magnitude, WANDA and the unpruned models); claims: over the seeds' means."
        )
    if info["validation_accuracy_vs_q"]:
        plot_rescaling_curves(record, out_dir / "figures" / "accuracy_vs_rescaling.png")
        text += (
            "\n\n![Validation accuracy vs rescaling factor](figures/accuracy_vs_rescaling.png)\n\n"
            "Validation accuracy of DARE's mask rescaled by 1/q (mean ± std over masks); the dotted line is "
            "DARE's 1/(1-p)."
        )
    return text
