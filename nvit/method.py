"""NViT's saliency, grouping and global selection (paper §3.2), and the baselines it argues against.

The algorithm only: functions that take a :class:`~nvit.models.FlexViT` (and its gradients) and return scores,
groups or updated masks. The training loop that feeds them lives in ``nvit.prune``.

Notation: a *layer* is one structure in one block, ``("H", 3)``, or ``("EMB", None)`` for the shared embedding.
A *unit* is one index of it (one head, one per-head QK index, ...); every unit S has a dependency set of
weights (``FlexViT.param_masks``), and the Hessian-aware saliency of a gate g_S on that set is (Eq. 6)

    I_S = (∂L/∂g_S)² = (Σ_{s∈S} w_s ∂L/∂w_s)²,

averaged over batches (E_batch) and smoothed across pruning steps with an EMA (official code). Units are
sorted by score within their layer and consecutive units form a group, whose score is the sum of its units'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .models import STRUCTURES, FlexViT

Layer = tuple[str, int | None]
"""(structure, block index); EMB's block is None."""

CRITERIA = ("hessian", "first_order", "taylor_elementwise", "magnitude", "random")


def layers(model: FlexViT) -> list[Layer]:
    return [("EMB", None)] + [(s, i) for s in STRUCTURES[1:] for i in range(model.dims.depth)]


def layer_mask(model: FlexViT, layer: Layer) -> torch.Tensor:
    s, i = layer
    return model.structure_masks()[s][0 if i is None else i]


def reduce_units(model: FlexViT, elem: dict[str, torch.Tensor]) -> dict[Layer, torch.Tensor]:
    """Sum an element-wise per-parameter tensor (e.g. w·∂L/∂w) over each unit's dependency set.

    ``elem`` maps parameter names to tensors shaped like the parameters. The sets are those of
    ``FlexViT.param_masks`` (a unit's sum is over exactly the weights that pruning it zeroes).
    """
    d = model.dims
    out: dict[Layer, torch.Tensor] = {}
    emb = elem["patch_embed.proj.weight"].sum((1, 2, 3)) + elem["patch_embed.proj.bias"]
    emb = emb + elem["cls_token"].flatten() + elem["pos_embed"].sum((0, 1))
    emb = emb + elem["norm.weight"] + elem["norm.bias"] + elem["head.weight"].sum(0)
    if "dist_token" in elem:
        emb = emb + elem["dist_token"].flatten() + elem["head_dist.weight"].sum(0)
    for i, block in enumerate(model.blocks):
        a, p = block.attn, f"blocks.{i}."
        h, dq, dv, e = a.num_heads, a.qk_dim, a.v_dim, d.emb
        qw = elem[p + "attn.q.weight"].view(h, dq, e) + elem[p + "attn.k.weight"].view(h, dq, e)
        qb = elem[p + "attn.q.bias"].view(h, dq) + elem[p + "attn.k.bias"].view(h, dq)
        vw, vb = elem[p + "attn.v.weight"].view(h, dv, e), elem[p + "attn.v.bias"].view(h, dv)
        pw = elem[p + "attn.proj.weight"].view(e, h, dv)
        fc1w, fc1b, fc2w = elem[p + "mlp.fc1.weight"], elem[p + "mlp.fc1.bias"], elem[p + "mlp.fc2.weight"]
        out[("H", i)] = qw.sum((1, 2)) + qb.sum(1) + vw.sum((1, 2)) + vb.sum(1) + pw.sum((0, 2))
        out[("QK", i)] = qw.sum((0, 2)) + qb.sum(0)
        out[("V", i)] = vw.sum((0, 2)) + vb.sum(0) + pw.sum((0, 1))
        out[("MLP", i)] = fc1w.sum(1) + fc1b + fc2w.sum(0)
        emb = emb + sum(elem[p + n] for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"))
        emb = emb + qw.sum((0, 1)) + vw.sum((0, 1)) + pw.sum((1, 2)) + elem[p + "attn.proj.bias"]
        emb = emb + fc1w.sum(0) + fc2w.sum(1) + elem[p + "mlp.fc2.bias"]
    out[("EMB", None)] = emb
    return {k: out[k] for k in layers(model)}


WEIGHT_SETS = ("dependency", "official")
"""Which weights a unit's Σ w·∂L/∂w runs over: every weight that pruning the unit zeroes (``dependency``, so the
score is exactly the squared gate gradient, Eq. 4-6), or the official code's criterion sets (``official``)."""


def reduce_units_official(model: FlexViT, elem: dict[str, torch.Tensor]) -> dict[Layer, torch.Tensor]:
    """Sum an element-wise per-parameter tensor over each unit's *official* criterion set (notes §1.1).

    The official code sums w·∂L/∂w over a subset of the weights that pruning a unit zeroes: QK over the q rows
    and biases only (not k); V over the v rows and biases (not the proj columns); MLP over the fc1 row and bias
    (not the fc2 column); a head over its q, k and v rows and biases (not its proj columns); EMB over the patch
    embedding's output channel and bias, every block's attn.proj row and bias, fc1 column, fc2 row and bias and
    the q, k and v columns (no LayerNorm, cls/dist token, position embedding or classifier). Because scaling a
    QK index's q rows by a and its k rows by 1/a (or a V index's v rows and proj columns) leaves the network
    unchanged, the q and k halves of a QK unit's full sum are equal, and so are the v and proj halves of a V
    unit's: there the full (``dependency``) sum is exactly twice this one (``tests/nvit/test_method.py``).
    """
    d = model.dims
    out: dict[Layer, torch.Tensor] = {}
    emb = elem["patch_embed.proj.weight"].sum((1, 2, 3)) + elem["patch_embed.proj.bias"]
    for i, block in enumerate(model.blocks):
        a, p = block.attn, f"blocks.{i}."
        h, dq, dv, e = a.num_heads, a.qk_dim, a.v_dim, d.emb
        qw, qb = elem[p + "attn.q.weight"].view(h, dq, e), elem[p + "attn.q.bias"].view(h, dq)
        kw, kb = elem[p + "attn.k.weight"].view(h, dq, e), elem[p + "attn.k.bias"].view(h, dq)
        vw, vb = elem[p + "attn.v.weight"].view(h, dv, e), elem[p + "attn.v.bias"].view(h, dv)
        fc1w, fc1b = elem[p + "mlp.fc1.weight"], elem[p + "mlp.fc1.bias"]
        out[("H", i)] = (qw + kw).sum((1, 2)) + (qb + kb).sum(1) + vw.sum((1, 2)) + vb.sum(1)
        out[("QK", i)] = qw.sum((0, 2)) + qb.sum(0)
        out[("V", i)] = vw.sum((0, 2)) + vb.sum(0)
        out[("MLP", i)] = fc1w.sum(1) + fc1b
        emb = emb + (qw + kw).sum((0, 1)) + vw.sum((0, 1))
        emb = emb + elem[p + "attn.proj.weight"].sum(1) + elem[p + "attn.proj.bias"]
        emb = emb + fc1w.sum(0) + elem[p + "mlp.fc2.weight"].sum(1) + elem[p + "mlp.fc2.bias"]
    out[("EMB", None)] = emb
    return {k: out[k] for k in layers(model)}


def weight_times_grad(
    model: FlexViT, *, absolute: bool = False, weights: str = "dependency"
) -> dict[Layer, torch.Tensor]:
    """Σ_{s∈S} w_s ∂L/∂w_s per unit from the current ``.grad`` (= ∂L/∂g_S, Eq. 4); ``absolute`` sums |w g|.

    ``weights``: the set S of a unit, ``"dependency"`` (every weight pruning it zeroes, :func:`reduce_units`) or
    ``"official"`` (the official code's criterion sets, :func:`reduce_units_official`).
    """
    if weights not in WEIGHT_SETS:
        raise ValueError(f"weights must be one of {WEIGHT_SETS}, got {weights!r}")
    elem = {}
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        wg = p.detach() * g
        elem[name] = wg.abs() if absolute else wg
    return reduce_units(model, elem) if weights == "dependency" else reduce_units_official(model, elem)


def group_magnitude(model: FlexViT) -> dict[Layer, torch.Tensor]:
    """Weight magnitude of each unit: the L2 norm of its dependency set (App. B.4's global magnitude baseline)."""
    return {
        k: v.sqrt() for k, v in reduce_units(model, {n: p.detach() ** 2 for n, p in model.named_parameters()}).items()
    }


class SaliencyAccumulator:
    """E_batch of a per-unit criterion since the last pruning step, and its EMA across steps.

    ``hessian``: (Σ w g / c_s)² per batch (Eq. 6, with the official per-structure divisors c_s);
    ``first_order``: |E_batch[Σ w g]| (first-order Taylor); ``taylor_elementwise``: E_batch[Σ |w g|];
    ``magnitude`` and ``random`` need no gradients (computed at :meth:`step_scores`). ``weights`` selects the
    weights each Σ runs over (:data:`WEIGHT_SETS`; magnitude always uses the full dependency set).
    """

    def __init__(
        self,
        criterion: str,
        *,
        divisors: tuple[float, ...] = (1.0,) * 5,
        momentum: float = 0.0,
        generator: torch.Generator | None = None,
        weights: str = "dependency",
    ):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError("momentum must be in [0, 1)")
        if weights not in WEIGHT_SETS:
            raise ValueError(f"weights must be one of {WEIGHT_SETS}, got {weights!r}")
        self.criterion, self.momentum, self.generator, self.weights = criterion, momentum, generator, weights
        self.divisor = dict(zip(STRUCTURES, divisors, strict=True))
        self.sum: dict[Layer, torch.Tensor] = {}
        self.batches = 0
        self.ema: dict[Layer, torch.Tensor] | None = None

    @property
    def needs_gradients(self) -> bool:
        return self.criterion in ("hessian", "first_order", "taylor_elementwise")

    def add_batch(self, model: FlexViT) -> None:
        """Call after ``loss.backward()`` and before the optimiser step."""
        if not self.needs_gradients:
            return
        per_unit = weight_times_grad(model, absolute=self.criterion == "taylor_elementwise", weights=self.weights)
        for k, v in per_unit.items():
            v = v.detach().double() / self.divisor[k[0]]
            if self.criterion == "hessian":
                v = v**2
            self.sum[k] = self.sum[k] + v if k in self.sum else v
        self.batches += 1

    def step_scores(self, model: FlexViT) -> dict[Layer, torch.Tensor]:
        """The scores to rank at this pruning step (pruned units score 0); resets the batch average."""
        if self.criterion == "magnitude":
            new = {k: v.double() for k, v in group_magnitude(model).items()}
        elif self.criterion == "random":
            new = {k: torch.rand(len(layer_mask(model, k)), generator=self.generator, dtype=torch.float64)
                   for k in layers(model)}  # fmt: skip
        else:
            if self.batches == 0:
                raise RuntimeError(f"criterion {self.criterion!r} needs at least one batch of gradients")
            new = {k: v / self.batches for k, v in self.sum.items()}
            if self.criterion == "first_order":
                new = {k: v.abs() for k, v in new.items()}
        self.sum, self.batches = {}, 0
        if self.momentum and self.ema is not None and self.needs_gradients:
            new = {k: self.momentum * self.ema[k] + (1 - self.momentum) * v for k, v in new.items()}
        self.ema = new
        return {k: v * layer_mask(model, k).double().to(v.device) for k, v in new.items()}


# ---------------------------------------------------------------------------------------------------------
# Groups and selection


@dataclass
class Group:
    """Consecutive units of one layer in score order (NViT's group_criteria); ``score`` sums theirs.

    The sum is what the official code does for its Hessian score; it is used for every criterion here, so a
    magnitude group's score is the sum of its units' L2 norms (larger groups score higher). The random
    baseline replaces it by one draw per group (:func:`redraw_random_scores`).
    """

    layer: Layer
    units: list[int]
    score: float
    latency_saving: float = 0.0
    ranked: float = field(default=0.0)
    """The score used for ranking: ``score - eta * latency_saving`` (Eq. 7) or just ``score``."""


def make_groups(model: FlexViT, scores: dict[Layer, torch.Tensor], group_sizes: tuple[int, ...]) -> list[Group]:
    """All prunable groups: the kept units of each layer sorted by score, chunked by the structure's group size.

    The highest-scoring group of every layer is left out, so no layer is ever emptied (official
    ``leave_at_least_one_group``).
    """
    size = dict(zip(STRUCTURES, group_sizes, strict=True))
    groups = []
    for layer, score in scores.items():
        alive = layer_mask(model, layer).nonzero().flatten().tolist()
        order = sorted(alive, key=lambda u: (float(score[u]), u))
        g = size[layer[0]]
        chunks = [order[j : j + g] for j in range(0, len(order), g)]
        for chunk in chunks[:-1]:
            s = float(sum(float(score[u]) for u in chunk))
            groups.append(Group(layer=layer, units=chunk, score=s, ranked=s))
    return groups


def redraw_random_scores(groups: list[Group], gen: torch.Generator | None = None) -> list[Group]:
    """The random baseline: one uniform draw per group, so that a group's chance does not depend on its size.

    (Summing per-unit draws would give an MLP group of 16 units a score near 8 and a head near 0.5.)
    """
    draws = torch.rand(len(groups), generator=gen, dtype=torch.float64).tolist()
    for grp, r in zip(groups, draws, strict=True):
        grp.score = grp.ranked = r
    return groups


def apply_latency_term(groups: list[Group], saving: Callable[[Layer, int], float], eta: float) -> list[Group]:
    """Eq. 7: I_S^L = I_S − η · (Lat(W) − Lat(W∖S)); ``saving(layer, n_units)`` is that latency difference."""
    for grp in groups:
        grp.latency_saving = saving(grp.layer, len(grp.units))
        grp.ranked = grp.score - eta * grp.latency_saving
    return groups


def calibrate_eta(groups: list[Group], lam: float) -> float:
    """η = λ · median(score) / median(latency saving) (the CPU recipe's scale-free choice; notes §5.2)."""
    scores = torch.tensor([g.score for g in groups], dtype=torch.float64)
    savings = torch.tensor([g.latency_saving for g in groups if g.latency_saving > 0], dtype=torch.float64)
    if not len(savings) or float(scores.median()) <= 0:
        return 0.0
    return lam * float(scores.median()) / float(savings.median())


@torch.no_grad()
def prune_units(model: FlexViT, layer: Layer, units: list[int]) -> None:
    """Set the units' mask entries to 0 and zero their weights."""
    mask = layer_mask(model, layer)
    mask[torch.as_tensor(units, dtype=torch.long)] = 0.0
    model.apply_masks_()


def uniform_keep_counts(model: FlexViT, ratio: float, group_sizes: tuple[int, ...]) -> dict[Layer, int]:
    """Units each layer keeps when every structure of every block keeps ``ratio`` of its width (uniform baseline).

    Counts are rounded to the structure's group size and are at least one group.
    """
    size = dict(zip(STRUCTURES, group_sizes, strict=True))
    out = {}
    for layer in layers(model):
        full = len(layer_mask(model, layer))
        g = size[layer[0]]
        out[layer] = min(full, max(g, g * round(ratio * full / g)))
    return out


@torch.no_grad()
def prune_to_counts(model: FlexViT, scores: dict[Layer, torch.Tensor], counts: dict[Layer, int]) -> int:
    """Prune the lowest-scoring kept units of each layer until it keeps ``counts[layer]``; returns units pruned."""
    removed = 0
    for layer, keep in counts.items():
        mask = layer_mask(model, layer)
        alive = mask.nonzero().flatten().tolist()
        if len(alive) <= keep:
            continue
        order = sorted(alive, key=lambda u: (float(scores[layer][u]), u))
        mask[torch.as_tensor(order[: len(alive) - keep], dtype=torch.long)] = 0.0
        removed += len(alive) - keep
    model.apply_masks_()
    return removed


def kept_fractions(model: FlexViT) -> dict[str, float]:
    """Fraction of the units of each structure type that are kept (App. B.4's check)."""
    m = model.structure_masks()
    return {s: float(sum(t.sum() for t in m[s]) / sum(t.numel() for t in m[s])) for s in STRUCTURES}
