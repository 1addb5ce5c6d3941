"""Models and tasks of the DAREx experiments.

``SyntheticTasks``: the CPU stand-in of notes §4.2 for "pre-training" and "fine-tuning". A random
teacher network labels Gaussian inputs (the pre-training task); the fine-tuning task's teacher is the
same network plus a scaled second random network, so the two tasks are related but different and the
fine-tuned weights move by a controllable amount.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.runtime import generator


class MLP(nn.Module):
    """``depth`` hidden GELU layers (``body.*``) and a linear classifier (``head``, excluded from deltas)."""

    def __init__(self, in_dim: int, hidden: int, depth: int, n_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class SyntheticTasks:
    """Two related labelling functions on N(0, I) inputs: ``pretrain`` and ``finetune``."""

    in_dim: int
    n_classes: int
    shift: float
    seed: int
    teacher_hidden: int = 64

    def __post_init__(self) -> None:
        g = generator(self.seed)

        def teacher() -> tuple[torch.Tensor, torch.Tensor]:
            w1 = torch.randn(self.in_dim, self.teacher_hidden, generator=g) / self.in_dim**0.5
            w2 = torch.randn(self.teacher_hidden, self.n_classes, generator=g) / self.teacher_hidden**0.5
            return w1, w2

        self._base, self._perturbation = teacher(), teacher()

    @staticmethod
    def _logits(x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        w1, w2 = weights
        return torch.tanh(x @ w1) @ w2

    def sample(self, task: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` inputs and labels of ``task`` in {pretrain, finetune}, reproducible from ``seed``."""
        if task not in ("pretrain", "finetune"):
            raise ValueError(f"task must be 'pretrain' or 'finetune', got {task!r}")
        x = torch.randn(n, self.in_dim, generator=generator(seed))
        logits = self._logits(x, self._base)
        if task == "finetune":
            logits = logits + self.shift * self._logits(x, self._perturbation)
        return x, logits.argmax(dim=1)
