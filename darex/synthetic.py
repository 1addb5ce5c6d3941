"""The synthetic DAREx experiment of the research notes (§4.2): an MLP "pre-trained" on one teacher-labelled
task and fine-tuned on a related one. Seconds on a CPU, with full control over the size of the deltas;
run with ``python -m darex reproduce --preset smoke --set experiment=synthetic``.
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

import torch
from torch import nn

from common.cli import RunContext
from common.config import to_dict
from common.counting import count_params
from common.errors import check_finite
from common.plotting import method_color, plt, savefig, style
from common.results import RunRecord
from common.runtime import generator, progress, seed_everything

from .config import DarexConfig, SyntheticConfig
from .method import apply_delta, dare, delta_parameters, q_grid, search_global_q
from .models import MLP, SyntheticTasks

log = logging.getLogger(__name__)

PAIR_FORMAT = 1
"""Bump when what ``_fine_tuned_pair`` returns changes, so cached artifacts of the old form are not reused."""

TABLE = "DARE vs DAREx-q on the synthetic task (accuracy on held-out fine-tuning data)"


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float, batch_size: int, seed: int,
          desc: str) -> nn.Module:  # fmt: skip
    """Plain Adam on cross-entropy with seeded minibatches; a NaN or infinite loss raises ``TrainingDivergedError``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
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


def _fine_tuned_pair(cfg: SyntheticConfig, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Pre-train on the pretrain task, fine-tune a copy on the finetune task; both state dicts."""
    tasks = _tasks(cfg, seed)
    seed_everything(seed)
    pretrained = MLP(cfg.in_dim, cfg.hidden, cfg.depth, cfg.n_classes)
    x, y = tasks.sample("pretrain", cfg.n_pretrain, seed=10 * seed + 1)
    train(pretrained, x, y, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, batch_size=cfg.batch_size, seed=seed,
          desc=f"pre-train (seed {seed})")  # fmt: skip
    finetuned = copy.deepcopy(pretrained)
    x, y = tasks.sample("finetune", cfg.n_finetune, seed=10 * seed + 2)
    train(finetuned, x, y, steps=cfg.finetune_steps, lr=cfg.finetune_lr, batch_size=cfg.batch_size, seed=seed + 1,
          desc=f"fine-tune (seed {seed})")  # fmt: skip
    return {"pretrained": pretrained.state_dict(), "finetuned": finetuned.state_dict()}


def _load_pair(states: dict[str, dict[str, torch.Tensor]], cfg: SyntheticConfig) -> tuple[MLP, MLP]:
    models = []
    for name in ("pretrained", "finetuned"):
        model = MLP(cfg.in_dim, cfg.hidden, cfg.depth, cfg.n_classes)
        model.load_state_dict(states[name])
        models.append(model.eval())
    return models[0], models[1]


class PrunedAccuracy:
    """Accuracy of θ_P + Δ̂, measured in a copy of the fine-tuned model so that its task head is kept."""

    def __init__(self, pretrained: nn.Module, finetuned: nn.Module):
        self.pretrained, self.probe = pretrained, copy.deepcopy(finetuned)

    def __call__(self, pruned: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
        self.probe.load_state_dict(apply_delta(self.pretrained, pruned), strict=False)
        return accuracy(self.probe, x, y)

    def of_dare(self, deltas, p: float, q: float | None, *, mask_seed: int, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy after DARE (q = None) or DAREx-q with the mask drawn from ``mask_seed``."""
        return self(dare(deltas, p, q, generator(mask_seed)), x, y)


def run(cfg: DarexConfig, ctx: RunContext) -> RunRecord:
    syn = cfg.synthetic
    acc: dict[str, list[float]] = {}
    inv_q: dict[float, list[float]] = {p: [] for p in cfg.prune.rates}
    kept: dict[float, list[float]] = {p: [] for p in cfg.prune.rates}
    validation_curves: dict[float, list[list[float]]] = {p: [] for p in cfg.prune.rates}  # per mask, over the q grid
    for seed in cfg.seeds:
        key = {"synthetic": to_dict(syn), "seed": seed, "format": PAIR_FORMAT}
        with ctx.phase("pre-training and fine-tuning"):  # cached
            states = ctx.cache.get_or_create("finetuned-pair", key, functools.partial(_fine_tuned_pair, syn, seed))
            pretrained, finetuned = _load_pair(states, syn)
        with ctx.phase("data"):
            tasks = _tasks(syn, seed)
            x_val, y_val = tasks.sample("finetune", syn.n_val, seed=10 * seed + 3)
            x_test, y_test = tasks.sample("finetune", syn.n_test, seed=10 * seed + 4)
        with ctx.phase("evaluation"):
            acc.setdefault("pre-trained (no delta)", []).append(accuracy(pretrained, x_test, y_test))
            acc.setdefault("fine-tuned (unpruned)", []).append(accuracy(finetuned, x_test, y_test))
        with ctx.phase("deltas and pruning"):
            deltas = delta_parameters(pretrained, finetuned, exclude=cfg.exclude)
            n_delta = sum(d.numel() for d in deltas.values())
            pruned_accuracy = PrunedAccuracy(pretrained, finetuned)
        for p in cfg.prune.rates:
            for mask_index in cfg.prune.mask_seeds:
                mask_seed = 1_000 * seed + mask_index  # a distinct mask per fine-tuned model
                with ctx.phase("deltas and pruning"):
                    dare_delta = dare(deltas, p, generator=generator(mask_seed))
                with ctx.phase("evaluation"):
                    acc.setdefault(f"DARE, p={p}", []).append(pruned_accuracy(dare_delta, x_test, y_test))
                    kept[p].append(sum(int(d.count_nonzero()) for d in dare_delta.values()) / n_delta * 100)
                # DAREx-q: the same mask (same seed), rescaled by the q that is best on validation data.
                on_validation = functools.partial(
                    pruned_accuracy.of_dare, deltas, p, mask_seed=mask_seed, x=x_val, y=y_val
                )
                with ctx.phase("q search"):
                    q_best, scores = search_global_q(on_validation, q_grid(p, cfg.prune.q_grid_points))
                inv_q[p].append(1.0 / q_best)
                validation_curves[p].append(list(scores.values()))
                with ctx.phase("evaluation"):  # redraws the mask and rescales it by q_best
                    acc.setdefault(f"DAREx-q (labelled global q), p={p}", []).append(
                        pruned_accuracy.of_dare(deltas, p, q_best, mask_seed=mask_seed, x=x_test, y=y_test)
                    )

    record = ctx.new_record(seeds=list(cfg.seeds))
    record.extra["mask_seeds"] = list(cfg.prune.mask_seeds)
    for setting, values in acc.items():
        record.add(TABLE, setting, "top-1 accuracy", values, unit="%")
    for p in cfg.prune.rates:
        record.add("Chosen rescaling and sparsity", f"p={p}", "DAREx-q 1/q (DARE uses 1/(1-p))", inv_q[p])
        record.add("Chosen rescaling and sparsity", f"p={p}", "deltas kept", kept[p], unit="%")
    record.extra["validation_accuracy_vs_q"] = {
        str(p): {"q": q_grid(p, cfg.prune.q_grid_points), "accuracy": curves} for p, curves in validation_curves.items()
    }
    record.extra["n_delta_parameters"] = n_delta
    record.extra["n_model_parameters"] = count_params(pretrained)
    return record


def plot_rescaling_curves(record: RunRecord, path: Path) -> Path:
    """The Fig. 1 analogue: validation accuracy vs the rescaling factor 1/q, one panel per pruning rate.

    DARE's 1/(1 - p) is the right end of each curve (dotted line); the pre-trained and fine-tuned
    models' test accuracies are drawn as horizontal references.
    """
    curves = record.extra["validation_accuracy_vs_q"]
    reference = {m.setting: m.mean for m in record.tables()[TABLE]}
    with style():
        fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
        for ax, (p, curve) in zip(axes[0], curves.items(), strict=True):
            inv_q = [1.0 / q for q in curve["q"]]
            acc = torch.tensor(curve["accuracy"])
            mean, std = acc.mean(0), acc.std(0) if len(acc) > 1 else torch.zeros(acc.shape[1])
            ax.plot(inv_q, mean, marker="o", color=method_color("ours"), label="DARE mask rescaled by 1/q")
            ax.fill_between(inv_q, mean - std, mean + std, color=method_color("ours"), alpha=0.2)
            ax.axvline(1.0 / (1.0 - float(p)), color=method_color("DARE"), linestyle=":", label="DARE: 1/(1-p)")
            for name, style_ in (("fine-tuned (unpruned)", "--"), ("pre-trained (no delta)", "-.")):
                ax.axhline(reference[name], color=method_color("dense"), linestyle=style_, linewidth=1, label=name)
            ax.set(xscale="log", xlabel="rescaling factor 1/q", ylabel="validation accuracy (%)", title=f"p = {p}")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 0.0))
        return savefig(fig, path)


def report_markdown(record: RunRecord, out_dir: Path) -> str:
    plot_rescaling_curves(record, out_dir / "figures" / "accuracy_vs_rescaling.png")
    return (
        "\n![Validation accuracy vs rescaling factor](figures/accuracy_vs_rescaling.png)\n\n"
        "Validation accuracy of DARE's mask rescaled by 1/q (mean ± std over masks); "
        "the dotted line is DARE's 1/(1-p).\n"
    )
