"""The method: one-shot magnitude pruning, the two loss-landscape metrics, the regimes and the case studies.

Functions only (no training loop, no I/O): they take models, state dicts, tensors or grids of numbers.

* Pruning (the official ``unif`` / ``glob`` modes): keep the ``density`` fraction of largest-|w| weights
  of every prunable layer (uniform) or of all prunable layers together (global). Prunable = every Linear
  and Conv2d weight except the final classifier (official: every Conv2d, the first included).
* Linear mode connectivity (Yang et al. 2021, eq. for ``mc``; the three-regime paper uses the straight
  line): ``mc = (E(θ1) + E(θ2)) / 2 - E(γ(t*))`` with ``γ(t) = (1 - t) θ1 + t θ2`` and
  ``t* = argmax_t |(E(θ1) + E(θ2)) / 2 - E(γ(t))|`` over equally spaced t; E is the training error.
  mc < 0: an error barrier (poorly connected); mc ≈ 0: well connected.
* Linear CKA (Kornblith et al. 2019, eq. 4 with a linear kernel): ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``
  with ``K = X Xᵀ``, ``L = Y Yᵀ`` and the biased (or, optionally, the unbiased) HSIC estimator.
* Regimes (paper Fig. 1): I = poorly connected; among connected cells, II-A = relatively dissimilar
  outputs (low CKA), II-B = relatively similar (high CKA). The thresholds are ours (RegimeConfig).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import RegimeConfig

Masks = dict[str, torch.Tensor]

REGIME_I, REGIME_IIA, REGIME_IIB = "I", "II-A", "II-B"
REGIMES = (REGIME_I, REGIME_IIA, REGIME_IIB)

# ----------------------------------------------------------------------------------------------------
# Pruning


def classifier_name(model: nn.Module) -> str:
    """The name of the last Linear module (the classifier)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("model has no Linear layer")
    return names[-1]


def prunable_weights(model: nn.Module, prune_classifier: bool = False) -> dict[str, nn.Parameter]:
    """``{param name: weight}`` of every Linear/Conv weight, the classifier only if ``prune_classifier``."""
    skip = None if prune_classifier else classifier_name(model)
    return {
        f"{name}.weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and name != skip
    }


def _keep_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.flatten(), k, sorted=False).indices] = True
    return mask.view_as(scores)


def magnitude_masks(model: nn.Module, density: float, scope: str = "uniform", prune_classifier: bool = False) -> Masks:
    """One-shot unstructured L1-magnitude masks keeping ``density`` (a fraction in (0, 1]) of the weights.

    ``uniform`` keeps ``round(density * n_l)`` weights in every prunable layer l; ``global`` keeps
    ``round(density * sum n_l)`` weights overall, by one magnitude ranking. Ties are broken by ``topk``,
    so the kept counts are exact.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    weights = prunable_weights(model, prune_classifier)
    if scope == "uniform":
        return {n: _keep_largest(w.detach().abs(), round(density * w.numel())) for n, w in weights.items()}
    if scope == "global":
        flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
        keep = _keep_largest(flat, round(density * flat.numel()))
        masks, offset = {}, 0
        for n, w in weights.items():
            masks[n] = keep[offset : offset + w.numel()].view_as(w)
            offset += w.numel()
        return masks
    raise ValueError(f"scope must be 'uniform' or 'global', got {scope!r}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place (called after every optimiser step during retraining)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def achieved_density(model: nn.Module, masks: Masks) -> float:
    """Fraction of the masked weights that are non-zero in ``model`` (equals the kept fraction after pruning)."""
    params = dict(model.named_parameters())
    nonzero = sum(int((params[n] != 0).sum()) for n in masks)
    return nonzero / sum(m.numel() for m in masks.values())


def mask_density(masks: Masks) -> float:
    return sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


# ----------------------------------------------------------------------------------------------------
# Linear mode connectivity


def interpolate_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """``(1 - t) a + t b`` for floating tensors (weights and BN buffers); integer buffers are taken from ``a``."""
    return {k: torch.lerp(v, b[k], t) if v.is_floating_point() else v.clone() for k, v in a.items()}


def mode_connectivity(errors: Sequence[float]) -> float:
    """``mc`` from the errors at equally spaced points of the path, endpoints first and last."""
    e = np.asarray(errors, dtype=float)
    gap = (e[0] + e[-1]) / 2 - e
    return float(gap[int(np.argmax(np.abs(gap)))])


@dataclass
class LMCResult:
    ts: list[float]
    errors: list[float]
    mc: float


def linear_mode_connectivity(
    model: nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    error_at: Callable[[nn.Module], float],
    points: int = 11,
) -> LMCResult:
    """Error along the straight line between two models and its ``mc``.

    ``error_at(model)`` loads nothing: it gets ``model`` holding the interpolated weights and returns the
    error; the caller decides whether it re-estimates BatchNorm statistics first (the official protocol).
    """
    ts = np.linspace(0.0, 1.0, points).tolist()
    errors = []
    for t in ts:
        model.load_state_dict(interpolate_state(state_a, state_b, t))
        errors.append(float(error_at(model)))
    return LMCResult(ts=ts, errors=errors, mc=mode_connectivity(errors))


# ----------------------------------------------------------------------------------------------------
# CKA


def _centered_gram(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1).double()
    k = x @ x.T
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
    return h @ k @ h


def _unbiased_hsic_gram(k: torch.Tensor) -> torch.Tensor:
    """The Gram matrix transformed so that its Frobenius inner products give the unbiased HSIC (Song et al. 2012)."""
    n = k.shape[0]
    k = k.clone()
    k.fill_diagonal_(0)
    means = k.sum(0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k = k - means[:, None] - means[None, :]
    k.fill_diagonal_(0)
    return k


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same n examples (rows), in [0, 1]."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    if debiased:
        k = _unbiased_hsic_gram(x.flatten(1).double() @ x.flatten(1).double().T)
        lg = _unbiased_hsic_gram(y.flatten(1).double() @ y.flatten(1).double().T)
    else:
        k, lg = _centered_gram(x), _centered_gram(y)
    hsic = (k * lg).sum()
    return float(hsic / torch.sqrt((k * k).sum() * (lg * lg).sum()))


# ----------------------------------------------------------------------------------------------------
# Regimes


def classify_regimes(mc: np.ndarray, cka: np.ndarray, cfg: RegimeConfig) -> np.ndarray:
    """Regime of every cell of a (temperature x density) grid of mean mc and mean CKA.

    Regime I iff ``mc < -cfg.mc_barrier``. A connected cell is II-A iff its CKA is more than ``cfg.cka_margin``
    below a reference: the median CKA of the connected cells of its density column (``column_median``), their
    maximum (``column_max``: II-A = clearly less similar than the column's most similar connected cell) or
    ``cfg.cka_threshold`` (``threshold``); else II-B. With a margin, a column whose connected cells agree to
    within it is all II-B, instead of being split in two by differences in the 4th decimal.
    """
    mc, cka = np.asarray(mc, dtype=float), np.asarray(cka, dtype=float)
    out = np.empty(mc.shape, dtype=object)
    barrier = mc < -cfg.mc_barrier
    if cfg.cka_margin < 0:
        raise ValueError(f"cka_margin must be >= 0, got {cfg.cka_margin}")
    for j in range(mc.shape[1]):
        connected = ~barrier[:, j]
        if cfg.cka_split == "column_median":
            reference = float(np.median(cka[connected, j])) if connected.any() else np.inf
        elif cfg.cka_split == "column_max":
            reference = float(np.max(cka[connected, j])) if connected.any() else np.inf
        elif cfg.cka_split == "threshold":
            reference = cfg.cka_threshold
        else:
            raise ValueError(f"unknown cka_split {cfg.cka_split!r}")
        split = reference - cfg.cka_margin
        for i in range(mc.shape[0]):
            out[i, j] = REGIME_I if barrier[i, j] else (REGIME_IIB if cka[i, j] >= split else REGIME_IIA)
    return out


def regime_move(regime: str) -> int:
    """The paper's rule for a fixed density: +1 = hotter (from I), -1 = colder (from II-A), 0 = stay (II-B)."""
    return {REGIME_I: +1, REGIME_IIA: -1, REGIME_IIB: 0}[regime]


# ----------------------------------------------------------------------------------------------------
# Case studies. Grids are indexed [temperature, density] with temperatures ordered from hottest (row 0)
# to coldest; every function returns the option each rule picks and the test error it actually reaches.


@dataclass
class Choice:
    """What a rule picked (a row index of the temperature axis, per density column) and what it reached."""

    rows: list[int]
    test_error: list[float]

    @property
    def mean_error(self) -> float:
        return float(np.mean(self.test_error))


def hyperparameter_direction(test_error: np.ndarray, regimes: np.ndarray, dense_error: np.ndarray) -> dict[str, Choice]:
    """Case study 1: from every starting temperature, move one step hotter, colder or stay.

    Regime rule: I -> hotter, II-A -> colder, II-B -> stay (clipped at the ends of the axis). Baseline:
    move to whichever of {hotter, stay, colder} has the best dense test accuracy. Each choice is scored by
    the retrained test error of the cell it lands on; ``oracle`` takes the best of the three.
    ``rows`` and ``test_error`` are flattened over (start row, density).
    """
    n_t, n_d = test_error.shape
    picks: dict[str, Choice] = {k: Choice([], []) for k in ("regime rule", "baseline (dense accuracy)", "oracle")}
    for j in range(n_d):
        for i in range(n_t):
            options = sorted({max(i - 1, 0), i, min(i + 1, n_t - 1)})
            rule = min(max(i - regime_move(regimes[i, j]), 0), n_t - 1)  # row 0 is hottest: hotter = i - 1
            base = min(options, key=lambda r: (dense_error[r], abs(r - i)))
            best = min(options, key=lambda r: test_error[r, j])
            for key, row in (("regime rule", rule), ("baseline (dense accuracy)", base), ("oracle", best)):
                picks[key].rows.append(row)
                picks[key].test_error.append(float(test_error[row, j]))
    return picks


def select_model(
    test_error: np.ndarray, regimes: np.ndarray, mc: np.ndarray, cka: np.ndarray, dense_error: np.ndarray
) -> dict[str, Choice]:
    """Case study 2 (and 3 on a SAM-rho axis): which dense model of a family to prune, per target density.

    Regime rule: among the II-B cells of the density column the one with the highest CKA; if none, the
    connected (II-A) cell with the highest CKA; if every cell is Regime I, the one with the least barrier
    (largest mc). Baseline: the dense model with the best test accuracy. Oracle: the best retrained cell.
    """
    n_t, n_d = test_error.shape
    picks: dict[str, Choice] = {k: Choice([], []) for k in ("regime rule", "baseline (dense accuracy)", "oracle")}
    base = int(np.argmin(dense_error))
    for j in range(n_d):
        rows = range(n_t)
        iib = [i for i in rows if regimes[i, j] == REGIME_IIB]
        connected = [i for i in rows if regimes[i, j] != REGIME_I]
        candidates = iib or connected
        rule = max(candidates, key=lambda i: cka[i, j]) if candidates else max(rows, key=lambda i: mc[i, j])
        best = int(np.argmin(test_error[:, j]))
        for key, row in (("regime rule", rule), ("baseline (dense accuracy)", base), ("oracle", best)):
            picks[key].rows.append(row)
            picks[key].test_error.append(float(test_error[row, j]))
    return picks


def tune_by_regime_walk(
    test_error: np.ndarray, regimes: np.ndarray, dense_error: np.ndarray, start_row: int, max_steps: int | None = None
) -> dict[str, Choice]:
    """Case study 3 (SAM rho): start from a default temperature and follow the regime rule step by step.

    From ``start_row``, move hotter while the cell is Regime I and colder while it is II-A, until a II-B cell,
    the end of the axis, or a cell already visited. Baseline: the value with the best dense test accuracy.
    """
    n_t, n_d = test_error.shape
    max_steps = n_t if max_steps is None else max_steps
    picks: dict[str, Choice] = {k: Choice([], []) for k in ("regime rule", "baseline (dense accuracy)", "oracle")}
    base = int(np.argmin(dense_error))
    for j in range(n_d):
        row, seen = start_row, {start_row}
        for _ in range(max_steps):
            nxt = min(max(row - regime_move(regimes[row, j]), 0), n_t - 1)
            if nxt in seen:
                break
            row = nxt
            seen.add(row)
        best = int(np.argmin(test_error[:, j]))
        for key, r in (("regime rule", row), ("baseline (dense accuracy)", base), ("oracle", best)):
            picks[key].rows.append(r)
            picks[key].test_error.append(float(test_error[r, j]))
    return picks
