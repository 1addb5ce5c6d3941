"""Configs and the three presets of the DAREx reproduction.

Every field carries help text (``python -m darex presets smoke`` lists them). New fields must default
to the value that reproduces the results already recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import param


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic pre-train / fine-tune pair of notes §4.2 (an MLP on teacher-labelled Gaussians)."""

    in_dim: int = param(32, "input dimension")
    hidden: int = param(256, "width of the student MLP's hidden layers")
    depth: int = param(3, "number of hidden layers (their weights and biases are the delta parameters)")
    n_classes: int = param(4, "classes of both tasks")
    task_shift: float = param(0.8, "scale of the second teacher added for the fine-tuning task (task distance)")
    n_pretrain: int = param(20_000, "pre-training samples")
    n_finetune: int = param(10_000, "fine-tuning samples")
    n_val: int = param(1_000, "labelled validation samples for choosing q")
    n_test: int = param(5_000, "test samples")
    pretrain_steps: int = param(2_000, "Adam steps of pre-training")
    finetune_steps: int = param(1_000, "Adam steps of fine-tuning")
    pretrain_lr: float = param(1e-3, "pre-training learning rate")
    finetune_lr: float = param(1e-4, "fine-tuning learning rate (larger gives larger deltas)")
    batch_size: int = param(256, "batch size of both trainings")


@dataclass(frozen=True)
class DarexConfig:
    experiment: str = param("synthetic", "which experiment: 'synthetic' (implemented) or 'minilm' (issue #6)")
    synthetic: SyntheticConfig = param(SyntheticConfig(), "the synthetic task and its training")
    rates: tuple[float, ...] = param((0.5, 0.9, 0.99), "pruning rates p (fraction of deltas dropped)")
    q_grid_points: int = param(25, "grid size for the labelled global-q search (log-spaced in 1/q)")
    seeds: tuple[int, ...] = param((0, 1, 2), "seeds of the tasks and trainings (one fine-tuned model per seed)")
    mask_seeds: tuple[int, ...] = param((0, 1, 2), "seeds of the random DARE masks, per fine-tuned model")
    exclude: str = param(r"(^|\.)(classifier|head|lm_head|score)(\.|$)", "regex of tensors that are not deltas")


def smoke() -> DarexConfig:
    """DARE vs DAREx-q (labelled global q) on a small synthetic task: a slice of the method, in seconds.

    Command: ``make reproduce-darex PRESET=smoke``. Hardware: any CPU. Time: ~10 s on 2 cores.
    Targets the shape of the paper's Table 1 / Fig. 1 (DARE vs DAREx-q at extreme rates), not its numbers.
    """
    return DarexConfig(
        synthetic=SyntheticConfig(
            hidden=128,
            n_pretrain=8_000,
            n_finetune=4_000,
            n_val=500,
            n_test=2_000,
            pretrain_steps=600,
            finetune_steps=300,
        ),
        rates=(0.9, 0.99),
        q_grid_points=9,
        seeds=(0,),
        mask_seeds=(0, 1),
    )


def mini() -> DarexConfig:
    """MiniLM-L6 fine-tuned on Rotten Tomatoes, pruned by every DPP method (issue #6; not implemented yet).

    Command: ``make reproduce-darex``. Hardware: 2-core CPU. Time: <= 20 min (fine-tuning cached).
    """
    return DarexConfig(experiment="minilm")


def paper() -> DarexConfig:
    """BERT-base / RoBERTa-base on GLUE from local directories, on a GPU (issue #6; not implemented yet).

    Command: ``make reproduce-darex PRESET=paper``. Hardware: one GPU. Targets Tables 1-2.
    """
    return DarexConfig(experiment="glue")


PRESETS = {"smoke": smoke, "mini": mini, "paper": paper}
