"""Delta-parameter pruning: DARE and DAREx-q.

Paper: "DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models", Deng, Zhao,
Vakilian, Chen, Li, Thrampoulidis, ICLR 2025 (arXiv:2410.09344). DARE: Yu et al., "Language Models
are Super Mario", ICML 2024 (arXiv:2311.03099).
Reference code: vengdeng/DAREx and yule-BUAA/MergeLM, read for facts only; nothing copied.

Notation (paper §3): pre-trained weights θ_P, fine-tuned θ_F, delta parameters Δθ = θ_F − θ_P,
pruning rate p (the fraction of deltas dropped). DARE keeps each delta with probability 1 − p and
rescales the survivors by 1/(1 − p); DAREx-q rescales them by 1/q with 1 − p ≤ q ≤ 1 instead, trading
a bias for a ((1 − p)/q)² smaller variance of the change in each layer's output (paper §4).

Implemented here: deltas with an exclusion rule for the task head, DARE / DAREx-q with a seeded mask,
the global-q search on a labelled objective. Still to come (issue #6): the label-free and per-layer
(analytical, optimised) choices of q, magnitude and WANDA pruning of deltas, AdamR, LoRA deltas.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

StateDict = Mapping[str, torch.Tensor]

DEFAULT_EXCLUDE = r"(^|\.)(classifier|head|lm_head|score)(\.|$)"
"""Tensors whose names match are not delta parameters (the task head is trained from scratch)."""


def _state(model_or_state: torch.nn.Module | StateDict) -> StateDict:
    return model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state


def delta_parameters(
    pretrained: torch.nn.Module | StateDict,
    finetuned: torch.nn.Module | StateDict,
    exclude: str | None = DEFAULT_EXCLUDE,
) -> dict[str, torch.Tensor]:
    """Δθ = θ_F − θ_P for every floating-point tensor present in both with the same shape.

    Tensors whose name matches the ``exclude`` regex (default: the task head) are left out, as are
    integer buffers (e.g. BatchNorm's ``num_batches_tracked``). A shared name with different shapes
    is an error: the two models are not of the same architecture.
    """
    pre, ft = _state(pretrained), _state(finetuned)
    pattern = re.compile(exclude) if exclude else None
    deltas = {}
    for name, w_ft in ft.items():
        if name not in pre or not w_ft.is_floating_point() or (pattern and pattern.search(name)):
            continue
        w_pre = pre[name]
        if w_pre.shape != w_ft.shape:
            raise ValueError(f"{name}: pre-trained shape {tuple(w_pre.shape)} != fine-tuned {tuple(w_ft.shape)}")
        deltas[name] = (w_ft - w_pre).detach().clone()
    if not deltas:
        raise ValueError("no delta parameters: the models share no floating-point tensors outside the exclusion rule")
    return deltas


def dare(
    deltas: Mapping[str, torch.Tensor],
    p: float,
    q: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Drop each delta with probability ``p`` and divide the kept ones by ``q`` (DARE: q = 1 − p).

    DARE (Yu et al., Eq. 1 of DAREx): Δ̂ = m ⊙ Δ / (1 − p), m ~ Bernoulli(1 − p) entry-wise, which
    keeps E[Δ̂] = Δ. DAREx-q (DAREx §4): the same mask, rescaled by 1/q with 1 − p ≤ q ≤ 1. With the
    same ``generator`` state the two differ exactly by the factor (1 − p)/q.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning rate p must be in [0, 1), got {p}")
    q = 1.0 - p if q is None else q
    if not (1.0 - p) - 1e-12 <= q <= 1.0:
        raise ValueError(f"q must lie in [1 - p, 1] = [{1 - p:.6g}, 1], got {q}")
    pruned = {}
    for name, delta in deltas.items():
        keep = torch.rand(delta.shape, generator=generator, device=delta.device) >= p
        pruned[name] = torch.where(keep, delta / q, torch.zeros_like(delta))
    return pruned


def apply_delta(pretrained: torch.nn.Module | StateDict, deltas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_P + Δ̂ for the tensors in ``deltas``; every other tensor is taken from ``pretrained`` unchanged.

    To evaluate, load the result into a model that already holds the fine-tuned task head
    (``model.load_state_dict(apply_delta(pre, pruned), strict=False)`` on a copy of the fine-tuned model).
    """
    state = {name: t.detach().clone() for name, t in _state(pretrained).items()}
    missing = set(deltas) - set(state)
    if missing:
        raise KeyError(f"deltas for tensors the pre-trained model lacks: {sorted(missing)[:5]}")
    for name, delta in deltas.items():
        state[name] = state[name] + delta.to(state[name].dtype)
    return state


def q_grid(p: float, n: int = 25) -> list[float]:
    """``n`` values of q from 1 − p to 1, evenly spaced in log(1/q): the rescaling factor 1/q runs from
    1/(1 − p) (DARE) down to 1 (no rescaling), dense where the optimum of extreme rates lies."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning rate p must be in [0, 1), got {p}")
    if p == 0.0 or n == 1:
        return [1.0 - p]
    return [float(q) for q in np.geomspace(1.0 - p, 1.0, n)]


def search_global_q(objective: Callable[[float], float], grid: Iterable[float]) -> tuple[float, dict[float, float]]:
    """The q in ``grid`` that maximises ``objective`` (e.g. validation accuracy), and every score.

    Ties go to the first q in grid order, i.e. to the rescaling closest to DARE's.
    """
    scores = {float(q): float(objective(q)) for q in grid}
    if not scores:
        raise ValueError("empty q grid")
    best = max(scores, key=lambda q: (scores[q], -list(scores).index(q)))
    return best, scores
