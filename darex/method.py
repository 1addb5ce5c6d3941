"""Delta-parameter pruning (DPP): DARE, DAREx-q (four ways to choose q), magnitude and WANDA on deltas.

Paper: "DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models", Deng, Zhao,
Vakilian, Chen, Li, Thrampoulidis, ICLR 2025 (arXiv:2410.09344). DARE: Yu et al., "Language Models
are Super Mario", ICML 2024 (arXiv:2311.03099).
Reference code: vengdeng/DAREx and yule-BUAA/MergeLM, read for facts only; nothing copied.

Notation (paper §3): pre-trained weights θ_P, fine-tuned θ_F, delta parameters Δθ = θ_F − θ_P,
pruning rate p (the fraction of deltas dropped). For a linear layer with input x, the influence of
delta Δw_ij on output i is c_ij = Δw_ij · x_j.

- DARE keeps each delta with probability 1 − p and rescales survivors by 1/(1 − p) (unbiased).
- DAREx-q keeps DARE's mask but rescales by 1/q, 1 − p ≤ q ≤ 1 (paper §4): a bias of (1 − (1 − p)/q)
  in exchange for a ((1 − p)/q)² smaller variance of each output's change, Var = (p/(1−p)) Σ_j c_ij² for
  DARE. q is chosen (a) globally on labelled validation data, (b) globally without labels by the change
  of the last layer's output, (c) per layer from the concentration bound with one hyperparameter η.
- Importance-based DPP (paper §5): magnitude (keep the largest |Δ|) and WANDA (keep the largest
  |Δw_ij| · ‖x_j‖₂ in each output row), without rescaling.

Everything here is pure: functions of tensors and modules, no file I/O, no training loops.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.errors import check_finite

StateDict = Mapping[str, torch.Tensor]
Deltas = dict[str, torch.Tensor]

DEFAULT_EXCLUDE = r"(^|\.)(classifier|head|lm_head|score)(\.|$)"
"""Tensors whose names match are not delta parameters (the task head is trained from scratch)."""


class DeltaMismatchError(ValueError):
    """The two models (or an adapter and the layers it sits on) do not match: tensors on one side only, of
    another shape, or an adapter kind whose ΔW this module cannot compute.

    An algorithm-level error, not a user error: inside code that builds both models itself it is a bug and
    keeps its traceback. Callers that take the models from the user (``python -m darex prune``, the decoder
    experiment's base/fine-tuned directories) turn it into :class:`common.errors.IncompatibleModelsError`.
    """


def _state(model_or_state: nn.Module | StateDict) -> StateDict:
    return model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state


# ----------------------------------------------------------------------------------------------------
# Deltas


def delta_parameters(
    pretrained: nn.Module | StateDict,
    finetuned: nn.Module | StateDict,
    exclude: str | None = DEFAULT_EXCLUDE,
) -> Deltas:
    """Δθ = θ_F − θ_P for every floating-point tensor of the two models.

    Tensors whose name matches the ``exclude`` regex (default: the task head, which a classification
    fine-tune adds or re-initialises) are left out and may differ freely between the two models, as are
    integer buffers (e.g. BatchNorm's ``num_batches_tracked``, BERT's ``position_ids``). Every other
    tensor must be in both models with the same shape: a tensor on one side only (a 2-layer base against a
    3-layer fine-tune) or a shape mismatch raises :class:`DeltaMismatchError` naming the first few
    such tensors and their count, rather than silently leaving deltas out.
    """
    pre, ft = _state(pretrained), _state(finetuned)
    pattern = re.compile(exclude) if exclude else None

    def candidates(state: StateDict) -> list[str]:
        return [n for n, t in state.items() if t.is_floating_point() and not (pattern and pattern.search(n))]

    pre_names, ft_names = candidates(pre), candidates(ft)
    in_pre, in_ft = set(pre_names), set(ft_names)
    only_ft = [n for n in ft_names if n not in in_pre]
    only_pre = [n for n in pre_names if n not in in_ft]
    shared = [n for n in ft_names if n in in_pre]
    reshaped = [n for n in shared if pre[n].shape != ft[n].shape]
    problems = []
    if only_ft:
        problems.append(f"{len(only_ft)} tensor(s) only in the fine-tuned model ({name_list(only_ft)})")
    if only_pre:
        problems.append(f"{len(only_pre)} tensor(s) only in the pre-trained model ({name_list(only_pre)})")
    if reshaped:
        shapes = [f"{n} {tuple(pre[n].shape)} vs {tuple(ft[n].shape)}" for n in reshaped]
        problems.append(f"{len(reshaped)} tensor(s) whose shape differs, pre-trained vs fine-tuned "
                        f"({name_list(shapes)})")  # fmt: skip
    if problems:
        fix = (
            f"Only tensors matching the exclusion rule '{exclude}' may differ: pass the matching pair, or widen "
            "the rule if these tensors are not deltas."
            if exclude
            else "Pass the matching pair."
        )
        raise DeltaMismatchError(
            f"the pre-trained and fine-tuned models are not the same architecture: {'; '.join(problems)}. {fix}"
        )
    deltas = {n: (ft[n].detach().float() - pre[n].detach().float()).clone() for n in shared}
    if not deltas:
        raise DeltaMismatchError(
            "no delta parameters: the models share no floating-point tensors outside the exclusion rule"
        )
    return deltas


def name_list(names: Sequence[str], first: int = 3) -> str:
    """``a, b, c and 12 more``: the first few of ``names`` and how many were left unsaid."""
    shown = ", ".join(names[:first])
    return shown + (f" and {len(names) - first} more" if len(names) > first else "")


def lora_delta_parameters(model: nn.Module, adapter: str = "default") -> Deltas:
    """ΔW of every layer a PEFT LoRA adapter changes, keyed by the merged model's tensor names.

    Each delta equals what PEFT's merge (``merge_and_unload()``) adds to the base tensor, computed in
    float64 and returned as float32:

    - plain LoRA on linear layers (``nn.Linear``, and GPT-2's ``Conv1D`` with ``fan_in_fan_out``):
      ΔW = B·A·scaling;
    - DoRA (``use_dora=True``) on linear layers: the merged weight is m ⊙ (W + B·A·s) / ‖W + B·A·s‖ with the
      norm taken over each output row, so ΔW = (m / ‖W + B·A·s‖ − 1) ⊙ W + (m / ‖W + B·A·s‖) ⊙ B·A·s
      depends on the base weight W, not on B·A alone;
    - ``lora_bias=True``: the bias delta Δb = lora_B.bias · scaling, keyed by the base layer's bias name;
    - plain LoRA on ``nn.Embedding``: ΔE = (B·A)ᵀ·scaling.

    Anything else (LoRA on convolutions or attention modules, other LoRA variants, an adapter already
    merged into the base weights) raises :class:`DeltaMismatchError` naming the layer and the option,
    rather than returning a wrong ΔW. ``modules_to_save`` (e.g. a task head trained in full) are not
    deltas: take them from the PEFT model.
    """
    from peft.tuners.lora import layer as lora_layer

    try:
        from peft.tuners.lora.variants import DoraLinearVariant
    except ImportError:  # older PEFT: DoRA is a flag on the layer, not a variant object
        DoraLinearVariant = None

    deltas: Deltas = {}
    for name, module in model.named_modules():
        if not isinstance(module, lora_layer.LoraLayer):
            continue
        in_linear = adapter in getattr(module, "lora_A", {})
        in_embedding = adapter in getattr(module, "lora_embedding_A", {})
        if not (in_linear or in_embedding):
            continue
        target = _merged_weight_name(name)
        where = f"{target.removesuffix('.weight')} ({type(module).__name__})"
        variant = getattr(module, "lora_variant", {}).get(adapter)
        dora = bool(getattr(module, "use_dora", {}).get(adapter)) or (
            DoraLinearVariant is not None and type(variant) is DoraLinearVariant
        )
        if module.merged:
            raise DeltaMismatchError(
                f"LoRA layer {where}: adapter(s) {module.merged_adapters} are merged into its base weight; "
                "call unmerge_adapter() first so the delta is taken against the base weight"
            )
        if variant is not None and not (dora and type(variant) is DoraLinearVariant):
            raise DeltaMismatchError(
                f"LoRA layer {where}: the {type(variant).__name__} variant of adapter {adapter!r} is not supported "
                "(supported: plain LoRA, use_dora=True on linear layers, lora_bias=True); merge it with PEFT "
                "(merge_and_unload) and use delta_parameters(base, merged) instead"
            )
        base = module.get_base_layer()
        scaling = float(module.scaling[adapter])
        if isinstance(module, lora_layer.Linear) and in_linear:
            a = module.lora_A[adapter].weight.detach().double()
            b = module.lora_B[adapter].weight.detach().double()
            update = (b @ a) * scaling  # (out, in)
            fan_in_fan_out = bool(getattr(module, "fan_in_fan_out", False))
            if dora:
                weight = base.weight.detach().double()
                weight = weight.T if fan_in_fan_out else weight
                magnitude = module.lora_magnitude_vector[adapter].weight.detach().double()
                combined = weight + update
                factor = (magnitude / torch.linalg.vector_norm(combined, dim=1)).unsqueeze(1)
                update = factor * combined - weight
            deltas[target] = (update.T if fan_in_fan_out else update).float().contiguous()
            if getattr(module, "lora_bias", {}).get(adapter, False):
                deltas[target[: -len("weight")] + "bias"] = (
                    module.lora_B[adapter].bias.detach().double() * scaling
                ).float()
        elif isinstance(module, lora_layer.Embedding) and in_embedding and not dora:
            a = module.lora_embedding_A[adapter].detach().double()  # (r, num_embeddings)
            b = module.lora_embedding_B[adapter].detach().double()  # (embedding_dim, r)
            deltas[target] = ((b @ a).T * scaling).float().contiguous()
        else:
            option = "use_dora=True on a non-linear layer" if dora else f"LoRA on {type(base).__name__}"
            raise DeltaMismatchError(
                f"LoRA layer {where}: {option} is not supported (supported: linear and embedding layers); merge "
                "it with PEFT (merge_and_unload) and use delta_parameters(base, merged) instead"
            )
    if not deltas:
        raise DeltaMismatchError(f"no LoRA layers with adapter {adapter!r} found")
    return deltas


def _merged_weight_name(peft_module_name: str) -> str:
    name = re.sub(r"^base_model\.model\.", "", peft_module_name)
    return f"{name}.weight"


def apply_delta(pretrained: nn.Module | StateDict, deltas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_P + Δ̂ for the tensors in ``deltas``; every other tensor is taken from ``pretrained`` unchanged.

    To evaluate, load the result into a model that already holds the fine-tuned task head
    (``model.load_state_dict(apply_delta(pre, pruned), strict=False)`` on a copy of the fine-tuned model).
    """
    state = {name: t.detach().clone() for name, t in _state(pretrained).items()}
    missing = [n for n in deltas if n not in state]
    if missing:
        raise DeltaMismatchError(
            f"deltas for {len(missing)} tensor(s) the pre-trained model lacks: {name_list(missing)}"
        )
    for name, delta in deltas.items():
        state[name] = state[name] + delta.to(device=state[name].device, dtype=state[name].dtype)
    return state


def delta_statistics(deltas: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Mean, mean |·|, standard deviation and max |·| of all deltas together (paper §3: large mean and
    variance of the deltas are one of the two reasons DARE fails)."""
    flat = torch.cat([d.flatten().float() for d in deltas.values()])
    return {
        "mean": flat.mean().item(),
        "mean_abs": flat.abs().mean().item(),
        "std": flat.std().item(),
        "max_abs": flat.abs().max().item(),
        "count": flat.numel(),
    }


def kept_fraction(deltas: Mapping[str, torch.Tensor]) -> float:
    """Share of non-zero entries over all tensors."""
    total = sum(d.numel() for d in deltas.values())
    return sum(int(d.count_nonzero()) for d in deltas.values()) / total


# ----------------------------------------------------------------------------------------------------
# Random DPP: DARE and DAREx-q


def dare(
    deltas: Mapping[str, torch.Tensor],
    p: float,
    q: float | Mapping[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> Deltas:
    """Drop each delta with probability ``p`` and divide the kept ones by ``q`` (DARE: q = 1 − p).

    DARE (Yu et al.; DAREx Eq. 1): Δ̂ = m ⊙ Δ / (1 − p), m ~ Bernoulli(1 − p) entry-wise, so E[Δ̂] = Δ.
    DAREx-q (DAREx §4): the same mask, rescaled by 1/q with 1 − p ≤ q ≤ 1; ``q`` is one number (global q)
    or a mapping from tensor name to q (per-layer q). With the same ``generator`` state the mask is the
    same, so DAREx-q differs from DARE exactly by the factor (1 − p)/q.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning rate p must be in [0, 1), got {p}")
    pruned = {}
    for name, delta in deltas.items():
        q_here = q.get(name, 1.0 - p) if isinstance(q, Mapping) else (1.0 - p if q is None else q)
        if not (1.0 - p) * (1 - 1e-9) <= q_here <= 1.0:
            raise ValueError(f"q must lie in [1 - p, 1] = [{1 - p:.6g}, 1], got {q_here} for {name}")
        # Drawn on the generator's device (CPU by default), so a seed gives the same mask on any device.
        draw = torch.rand(delta.shape, generator=generator, device=generator.device if generator else delta.device)
        keep = draw.to(delta.device) >= p
        pruned[name] = torch.where(keep, delta / q_here, torch.zeros_like(delta))
    return pruned


def q_grid(p: float, n: int = 25, low: float | None = None, high: float = 1.0) -> list[float]:
    """``n`` values of q from ``low`` (default 1 − p) to ``high``, evenly spaced in log(1/q).

    The rescaling factor 1/q then runs from 1/(1 − p) (DARE) down to 1 (no rescaling), dense where
    the optimum of extreme rates lies.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning rate p must be in [0, 1), got {p}")
    low = 1.0 - p if low is None else low
    if n == 1 or low >= high:
        return [low]
    return [float(q) for q in np.geomspace(low, high, n)]


def search_global_q(objective: Callable[[float], float], grid: Iterable[float]) -> tuple[float, dict[float, float]]:
    """The q in ``grid`` that maximises ``objective`` (e.g. validation accuracy), and every score.

    Ties go to the first q in grid order, i.e. to the rescaling closest to DARE's.
    """
    scores = {float(q): float(objective(q)) for q in grid}
    if not scores:
        raise ValueError("empty q grid")
    order = {q: i for i, q in enumerate(scores)}
    best = max(scores, key=lambda q: (scores[q], -order[q]))
    return best, scores


def coarse_to_fine_q(
    objective: Callable[[float], float],
    p: float,
    coarse: int = 7,
    fine: int = 3,
    patience: int = 4,
) -> tuple[float, dict[float, float]]:
    """The official two-stage search for a global q, in log(1/q) rather than linear q.

    Coarse: ``coarse`` log-spaced values from DARE's q = 1 − p towards 1, stopped after ``patience``
    values in a row that do not improve on the best. Fine: ``fine`` more values strictly between the
    best coarse value's neighbours. Returns the best q (ties to the value closest to DARE) and every
    score evaluated. ``objective`` is maximised (accuracy, or minus the output change).
    """
    grid = q_grid(p, coarse)
    scores: dict[float, float] = {}
    best, since_best = None, 0
    for q in grid:
        scores[q] = float(objective(q))
        if best is None or scores[q] > scores[best]:
            best, since_best = q, 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    i = grid.index(best)
    low, high = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if fine > 0 and high > low:
        for q in q_grid(p, fine + 2, low=low, high=high)[1:-1]:
            if q not in scores:
                scores[q] = float(objective(q))
    return search_global_q(scores.__getitem__, sorted(scores))


def _arange(start: float, stop: float, step: float) -> list[float]:
    """``numpy.arange(start, stop, step)`` rounded to 10 decimals (so 0.01 + 0.05 is the key 0.06), with a
    tolerance of 1e-9 steps at ``stop`` so float noise neither adds nor drops the last point."""
    n = max(0, math.ceil((stop - start) / step - 1e-9))
    return [round(start + k * step, 10) for k in range(n)]


def linear_search(
    objective: Callable[[float], float],
    low: float,
    high: float,
    step: float,
    *,
    decay: float = 0.1,
    patience: int = 4,
    upper: float = math.inf,
) -> tuple[float, dict[float, float]]:
    """The official two-stage sweep of one parameter (a global q, or the analytical q's η), maximising ``objective``.

    Coarse: ``low, low + step, ...`` up to ``high`` (numpy's ``arange(low, high + step, step)``, as in the official
    ``find_optimal_param``); fine: steps of ``decay · step`` from ``max(low + decay·step, best − (1 − decay)·step)``
    up to (not including) ``best + step``. Each stage stops after ``patience`` values in a row that score below
    the stage's best so far (a tie counts as an improvement, as in the official ``score >= best``). Values above
    ``upper`` are skipped (q ≤ 1: the official sweep does not bound the fine stage). A value seen in the coarse
    stage is not evaluated again. Returns the best value (ties to the first evaluated, i.e. the lowest coarse
    one) and every score, in the order evaluated.
    """
    if step <= 0 or not 0 < decay <= 1:
        raise ValueError(f"need step > 0 and 0 < decay <= 1, got step={step}, decay={decay}")
    scores: dict[float, float] = {}

    def sweep(points: list[float]) -> None:
        best, since_best = -math.inf, 0
        for x in points:
            if x > upper + 1e-12:
                break
            if x not in scores:
                scores[x] = float(objective(x))
            if scores[x] >= best:
                best, since_best = scores[x], 0
            else:
                since_best += 1
                if since_best >= patience:
                    break

    sweep(_arange(low, high + step, step))
    if not scores:
        raise ValueError(f"empty search range: low={low} is above upper={upper}")
    best = max(scores, key=scores.__getitem__)  # max keeps the first of equal scores
    fine_low = max(low + step * decay, best - step * (1.0 - decay))
    sweep(_arange(round(fine_low, 10), best + step, step * decay))
    return max(scores, key=scores.__getitem__), scores


def global_q_search(
    objective: Callable[[float], float],
    p: float,
    *,
    search: str = "log",
    coarse: int = 7,
    fine: int = 3,
    patience: int = 4,
    step: float = 0.05,
    high: float = 1.0,
    decay: float = 0.1,
) -> tuple[float, dict[float, float]]:
    """A global q in [1 − p, 1] that maximises ``objective``: ``search="log"`` is :func:`coarse_to_fine_q`
    (``coarse``/``fine`` points in log(1/q)); ``"linear"`` is the official :func:`linear_search` in q from 1 − p
    to ``high`` with ``step`` (fine step ``decay · step``)."""
    if search == "log":
        return coarse_to_fine_q(objective, p, coarse, fine, patience)
    if search == "linear":
        if not 0.0 <= p < 1.0:
            raise ValueError(f"pruning rate p must be in [0, 1), got {p}")
        return linear_search(objective, round(1.0 - p, 10), high, step, decay=decay, patience=patience, upper=1.0)
    raise ValueError(f"search must be 'log' or 'linear', got {search!r}")


# ----------------------------------------------------------------------------------------------------
# Calibration statistics of linear-layer inputs (for WANDA and the analytical q)


@dataclass
class InputStats:
    """Per input column j of one linear layer: the mean x̄_j and the squared norm Σ x_j² over tokens."""

    mean: torch.Tensor
    sq_norm: torch.Tensor
    count: int

    @property
    def norm(self) -> torch.Tensor:
        """‖x_j‖₂ over all calibration tokens, WANDA's feature norm."""
        return self.sq_norm.sqrt()


@torch.no_grad()
def collect_input_statistics(
    model: nn.Module, run_batches: Callable[[nn.Module], None], names: Iterable[str] | None = None
) -> dict[str, InputStats]:
    """Record x̄_j and Σ x_j² of the input of every ``nn.Linear`` (keyed by the weight's name).

    ``run_batches(model)`` runs the calibration forward passes; every token of every input counts,
    so pass inputs without padding (e.g. packed windows of text, as the official calibration does).
    """
    wanted = set(names) if names is not None else None
    sums: dict[str, list] = {}
    hooks = []

    def hook(name: str):
        def record(module, inputs, output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            entry = sums.setdefault(name, [torch.zeros(x.shape[1]), torch.zeros(x.shape[1]), 0])
            entry[0] += x.sum(0).cpu()
            entry[1] += x.pow(2).sum(0).cpu()
            entry[2] += x.shape[0]

        return record

    for module_name, module in model.named_modules():
        weight_name = f"{module_name}.weight"
        if isinstance(module, nn.Linear) and (wanted is None or weight_name in wanted):
            hooks.append(module.register_forward_hook(hook(weight_name)))
    try:
        run_batches(model)
    finally:
        for h in hooks:
            h.remove()
    return {name: InputStats(mean=s / n, sq_norm=sq, count=n) for name, (s, sq, n) in sums.items()}


# ----------------------------------------------------------------------------------------------------
# Importance-based DPP (paper §5)


def magnitude_prune(deltas: Mapping[str, torch.Tensor], p: float) -> Deltas:
    """Keep exactly ``round((1 − p) · numel)`` deltas of largest |Δ| in each tensor; no rescaling."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning rate p must be in [0, 1), got {p}")
    pruned = {}
    for name, delta in deltas.items():
        k = round((1.0 - p) * delta.numel())
        mask = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
        if k > 0:
            mask[delta.abs().flatten().topk(k).indices] = True
        pruned[name] = torch.where(mask.view_as(delta), delta, torch.zeros_like(delta))
    return pruned


def wanda_prune(deltas: Mapping[str, torch.Tensor], p: float, input_norms: Mapping[str, torch.Tensor]) -> Deltas:
    """WANDA on deltas: in each output row keep the ``round((1 − p) · in_features)`` largest |Δw_ij| · ‖x_j‖₂.

    ``input_norms`` maps a 2-D weight's name to ‖x_j‖₂ of its layer's input (see
    :func:`collect_input_statistics`). Tensors without input norms (biases, norms, embeddings) fall back
    to :func:`magnitude_prune` at the same rate.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning rate p must be in [0, 1), got {p}")
    pruned = {}
    for name, delta in deltas.items():
        if name not in input_norms or delta.dim() != 2:
            pruned.update(magnitude_prune({name: delta}, p))
            continue
        score = delta.abs() * input_norms[name].to(delta.device).unsqueeze(0)
        k = round((1.0 - p) * delta.shape[1])
        mask = torch.zeros_like(delta, dtype=torch.bool)
        if k > 0:
            mask.scatter_(1, score.topk(k, dim=1).indices, True)
        pruned[name] = torch.where(mask, delta, torch.zeros_like(delta))
    return pruned


# ----------------------------------------------------------------------------------------------------
# Analytical per-layer q (DAREx §4.1; official utils/analyticalq.py, re-derived from the notes)


def bernoulli_phi(p: float) -> float:
    """Φ(p) = (1 − 2p) / log((1 − p)/p): the optimal sub-Gaussian variance proxy of a Bernoulli(p)
    variable (Kearns-Saul / Berend-Kontorovich), used by the concentration bound; Φ(1/2) = 1/2 (limit)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if abs(p - 0.5) < 1e-9:
        return 0.5
    return (1.0 - 2.0 * p) / math.log((1.0 - p) / p)


def analytical_row_q(
    c: torch.Tensor,
    p: float,
    eta: float,
    gamma: float = 0.95,
    step: float = 0.001,
    q_max: float = 0.998,
    stop_fraction: float = 0.8,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Per output row, the q that minimises the bound's objective (notes §1.5), scanned from 1 − p up.

    ``c`` holds c_ij = Δw_ij · x̄_j (rows = outputs; the bias delta may be appended as a column with
    input 1). For each row the objective is

        | η (1 − (1 − p)/q) Σ_j c_ij  +  η² Φ(p) Σ_j c_ij² / (4 q²)  +  log(2 / (1 − γ)) |,

    the bias term plus the variance term of the tail bound at a fixed η. As in the official scan, q grows
    from 1 − p in steps of ``step`` up to ``q_max``; a row takes every q whose objective is at most its
    best so far (ties move q up); a row is flagged the first time its objective is not below its best so
    far, and the scan stops once ``stop_fraction`` of the rows are flagged (so a few outlier rows do not
    drag it on). The objective is evaluated in ``dtype`` (float16 by default, as the official code does:
    its rounding makes a flat objective, e.g. of negligible deltas, stop at once near q = 1 − p).
    Vectorised: the whole scan is a few tensor ops.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    n_steps = math.floor((q_max - (1.0 - p)) / step + 1e-9) + 1
    device = c.device  # every tensor of the scan lives where c does (a CUDA run keeps it on the GPU)
    q = (1.0 - p) + step * torch.arange(max(n_steps, 1), dtype=torch.float64, device=device)
    c = c.to(dtype)
    s1 = c.sum(1, keepdim=True)
    s2 = c.pow(2).sum(1, keepdim=True)
    bias_factor = (1.0 - (1.0 - p) / q).to(dtype).unsqueeze(0)
    variance_factor = (eta**2 * bernoulli_phi(p) / (4.0 * q**2)).to(dtype).unsqueeze(0)
    objective = (eta * (bias_factor * s1) + (variance_factor * s2 + math.log(2.0 / (1.0 - gamma)))).abs().float()
    # Best so far before each step (+inf before the first), and each row's first flagged step.
    previous_best = torch.cat([torch.full_like(objective[:, :1], math.inf), objective.cummin(1).values[:, :-1]], 1)
    flagged = objective >= previous_best
    first_flag = torch.where(
        flagged.any(1), flagged.float().argmax(1), torch.full((c.shape[0],), len(q), device=device)
    )
    flagged_by_step = (first_flag.unsqueeze(1) <= torch.arange(len(q), device=device).unsqueeze(0)).sum(0)
    reached = (flagged_by_step >= stop_fraction * c.shape[0]).nonzero()
    stop = int(reached[0]) if len(reached) else len(q) - 1
    # The last update up to the stop is the last step at which the row's minimum (so far) was attained.
    scanned = objective[:, : stop + 1]
    at_min = scanned == scanned.min(1, keepdim=True).values
    last = stop - at_min.flip(1).float().argmax(1)
    return q[last].float()


def analytical_layer_q(
    deltas: Mapping[str, torch.Tensor],
    input_means: Mapping[str, torch.Tensor],
    p: float,
    eta: float,
    **kwargs,
) -> dict[str, float]:
    """Per-layer q for every delta tensor: the mean row q of each linear weight (its bias shares it); all
    other deltas (embeddings, norms) get the mean of the layer q's, as the official code does."""
    layer_q: dict[str, float] = {}
    for name, delta in deltas.items():
        if name in input_means and delta.dim() == 2:
            c = delta.float() * input_means[name].to(delta.device).unsqueeze(0)
            bias = deltas.get(name[: -len("weight")] + "bias")
            if bias is not None:
                c = torch.cat([c, bias.float().unsqueeze(1)], dim=1)
            layer_q[name] = float(analytical_row_q(c, p, eta, **kwargs).mean())
    if not layer_q:
        raise ValueError("no linear-layer deltas with calibration statistics")
    fallback = float(np.mean(list(layer_q.values())))
    out = {}
    for name in deltas:
        if name in layer_q:
            out[name] = layer_q[name]
        elif name.endswith(".bias") and name[: -len("bias")] + "weight" in layer_q:
            out[name] = layer_q[name[: -len("bias")] + "weight"]
        else:
            out[name] = fallback
    return out


# ----------------------------------------------------------------------------------------------------
# Label-free objective: the change of the last layer's output (DAREx §4, Fig. 1 left)


@torch.no_grad()
def head_inputs(model: nn.Module, head: nn.Module, run: Callable[[nn.Module], object]) -> torch.Tensor:
    """The inputs of ``head`` (the representation the task head reads) while ``run(model)`` executes."""
    captured = []
    handle = head.register_forward_hook(lambda m, inputs, out: captured.append(inputs[0].detach().float()))
    try:
        run(model)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the head module was not called during the forward pass")
    return torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])


def output_change(reference: torch.Tensor, pruned: torch.Tensor) -> float:
    """Mean absolute change of the last-layer representation: the label-free proxy for choosing q."""
    return (reference - pruned).abs().mean().item()


@torch.no_grad()
def last_hidden_states(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The encoder's ``last_hidden_state`` at every token of ``windows`` (rows of token ids, no padding), one row
    per token: the representation of the official label-free objective for encoders. A RoBERTa-style head
    (``classifier.dense`` then ``classifier.out_proj``) has its ``dense`` layer applied to every token's state,
    as the official code does for RoBERTa; a BERT-style head (one linear ``classifier``) reads the state as is.
    """
    device = next(model.parameters()).device
    encoder = model.base_model
    head = getattr(model, "classifier", None)
    dense = head.dense if hasattr(head, "dense") and hasattr(head, "out_proj") else None
    states = []
    for chunk in windows.split(batch_size):
        h = encoder(input_ids=chunk.to(device)).last_hidden_state
        if dense is not None:
            h = dense(h)
        states.append(h.float().reshape(-1, h.shape[-1]))
    return torch.cat(states)


def trimmed_mean(values: Sequence[float]) -> float:
    """The mean after dropping the one value farthest from the mean, when there are at least 3 (the official
    encoder objective averages the output change over 4 masks this way); the plain mean otherwise."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values")
    if len(values) >= 3:
        mean = sum(values) / len(values)
        values.pop(max(range(len(values)), key=lambda i: abs(values[i] - mean)))
    return sum(values) / len(values)


# ----------------------------------------------------------------------------------------------------
# Per-layer q by optimisation (DAREx §4, the official perlayer_opt.py's idea, re-derived from the notes)


def layer_of(name: str) -> str:
    """The module a delta tensor belongs to (``encoder.layer.0.attention.self.query.weight`` → ``...query``)."""
    return name.rsplit(".", 1)[0]


def optimise_layer_q(
    model: nn.Module,
    pretrained: StateDict,
    masked: Mapping[str, torch.Tensor],
    p: float,
    loss: Callable[[nn.Module, Mapping[str, torch.Tensor], int], torch.Tensor],
    steps: int = 200,
    lr: float = 1e-2,
    init: float = 1e-4,
    eval_every: int = 10,
    patience: int = 5,
    val_loss: Callable[[nn.Module, Mapping[str, torch.Tensor]], float] | None = None,
) -> dict[str, float]:
    """Learn one q per layer so the pruned model's outputs match the fine-tuned model's (no labels).

    Each layer's kept deltas ``masked`` (DARE's mask applied, *not* rescaled) enter the weights as
    θ_P + m⊙Δ / q_l with q_l = min(|c_l| + (1 − p), 1); only the scalars c_l (initialised to ``init``,
    i.e. DARE's q = 1 − p) are trained, by AdamW with a cosine schedule, as in the official per-layer
    optimisation (lr 1e-2, 200 steps). ``loss(model, params, step)`` runs ``model`` with the given
    parameters (``torch.func.functional_call``) and returns the differentiable mismatch to the fine-tuned
    outputs for batch ``step``; ``val_loss(model, params)``, if given, is checked every ``eval_every``
    steps and training stops after ``patience`` checks without improvement, keeping the best q's.
    Returns q per delta tensor name (tensors of one layer share it), ready for :func:`dare` with the same mask.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning rate p must be in [0, 1), got {p}")
    layers = sorted({layer_of(n) for n in masked})
    device = next(iter(masked.values())).device
    c = torch.full((len(layers),), float(init), device=device, requires_grad=True)
    index = {name: layers.index(layer_of(name)) for name in masked}
    base = {n: pretrained[n].to(device).float() for n in masked}

    def q_values() -> torch.Tensor:
        return torch.clamp(c.abs() + (1.0 - p), max=1.0)

    def params() -> dict[str, torch.Tensor]:
        q = q_values()
        return {n: base[n] + masked[n].float() / q[index[n]] for n in masked}

    optimiser = torch.optim.AdamW([c], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))
    best_q, best_val, since_best = q_values().detach().clone(), math.inf, 0
    for step in range(steps):
        optimiser.zero_grad(set_to_none=True)
        value = loss(model, params(), step)
        check_finite(value, step=step, where=f"darex DAREx-q per-layer q optimisation (p={p:g})")
        value.backward()
        optimiser.step()
        schedule.step()
        if val_loss is not None and (step + 1) % eval_every == 0:
            with torch.no_grad():
                current = float(val_loss(model, params()))
            if current < best_val:
                best_val, best_q, since_best = current, q_values().detach().clone(), 0
            else:
                since_best += 1
                if since_best >= patience:
                    break
    if val_loss is None:
        best_q = q_values().detach()
    return {n: float(best_q[index[n]]) for n in masked}
