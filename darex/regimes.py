"""The two regimes of the reproduction, the units of work they split into, and where their numbers go in the record.

* **real** (``text``): a pre-trained encoder (MiniLM-L6 in ``mini``) fine-tuned on a text task (Rotten
  Tomatoes). At this scale DARE loses little even at p = 0.99, so the claims about recovering from its
  collapse cannot be tested there (their precondition fails, and the record says so with the measured loss).
* **collapse** (``synthetic``): the research notes' MLP pre-trained on one teacher-labelled task and
  fine-tuned on a related one (notes §4.2), at the pilot's scale, where DARE at p = 0.99 does collapse.

Both regimes fine-tune the same kinds of models (``standard``, ``large-delta``, ``adamr-l2 λ=...``) and record
them in the same layout, so :mod:`darex.claims` reads either with the same few functions. Random masks are
identified by ``mask_id(seed, m) = 1000 · seed + m`` (seed: the fine-tuning seed; m: a mask seed of the config),
so every mask is distinct across fine-tuned models; measurements of random methods are recorded with these ids
as their ``seeds``, those of deterministic ones (unpruned, magnitude, WANDA) with the fine-tuning seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT, SYNTHETIC = "text", "synthetic"

SEARCH_MASK = 999
"""Mask seed (per fine-tuned model) with which the real regime chooses q; it is never one of the scored masks."""

STANDARD, LARGE = "standard", "large-delta"

METHODS = {
    "dare": "DARE (1/(1-p))",
    "darex_q_labelled": "DAREx-q, global q on labelled validation",
    "darex_q_unlabelled": "DAREx-q, global q by output change (no labels)",
    "darex_q_analytical": "DAREx-q, per-layer analytical q (η by output change)",
    "darex_q_optimised": "DAREx-q, per-layer q by optimisation (no labels)",
    "magnitude": "Magnitude on deltas",
    "wanda": "WANDA on deltas",
}
"""The real regime's DPP methods and their row labels."""

SYNTHETIC_METHODS = {
    "dare": "DARE (1/(1-p))",
    "darex_q_labelled": "DAREx-q, q per mask on labelled validation",
    "darex_q_unlabelled": "DAREx-q, q per mask by output change (no labels)",
    "magnitude": "Magnitude on deltas",
    "wanda": "WANDA on deltas",
}
"""The collapse regime's DPP methods: q is chosen for every mask on its own (the whole procedure is replicated)."""

ANALYTICAL_LABELLED = "darex_q_analytical_labelled"
"""The analytical per-layer q with η chosen on labelled validation data (``prune.analytical_eta`` with
``labelled``; the official README's commands). Not in ``METHODS``: runs whose config does not ask for it keep
the table they always had."""

METHOD_LABELS = {**METHODS, ANALYTICAL_LABELLED: "DAREx-q, per-layer analytical q (η on labelled validation)"}
"""Row labels of every method the real regime can run."""

ANALYTICAL_ETA = {"output_change": "darex_q_analytical", "labelled": ANALYTICAL_LABELLED}
"""``prune.analytical_eta`` entry -> the method (table row) it produces."""

RANDOM_METHODS = ("dare", "darex_q_labelled", "darex_q_unlabelled", "darex_q_analytical", ANALYTICAL_LABELLED,
                  "darex_q_optimised")  # fmt: skip


def text_methods(prune) -> dict[str, str]:
    """The real regime's methods for a ``PruneConfig`` in table order: ``METHODS``, with the analytical q once per
    entry of ``prune.analytical_eta`` (``("output_change",)``, the default, gives ``METHODS`` itself)."""
    unknown = set(prune.analytical_eta) - set(ANALYTICAL_ETA)
    if unknown or not prune.analytical_eta:
        raise ValueError(f"prune.analytical_eta entries must be among {sorted(ANALYTICAL_ETA)}, got "
                         f"{prune.analytical_eta}")  # fmt: skip
    out: dict[str, str] = {}
    for key, label in METHODS.items():
        if key != "darex_q_analytical":
            out[key] = label
            continue
        for how in prune.analytical_eta:
            method = ANALYTICAL_ETA[how]
            out[method] = METHOD_LABELS[method]
    return out


def search_options(prune) -> dict:
    """Keyword arguments of :func:`darex.method.global_q_search` from a ``PruneConfig``."""
    return {"search": prune.q_search, "coarse": prune.coarse, "fine": prune.fine, "patience": prune.patience,
            "step": prune.q_step, "high": prune.q_high, "decay": prune.fine_decay}  # fmt: skip


MAIN_TABLE = "Table 1 analogue: task metric after delta-parameter pruning"
REFERENCE_TABLE = "Unpruned references"
Q_TABLE = "Chosen rescaling factors"
LARGE_TABLE = "Large deltas: the same task fine-tuned with a larger learning rate"
STORAGE_TABLE = "Storage of the pruned delta"
DROPPED = "pre-trained encoder + fine-tuned head (all deltas dropped)"
SYNTHETIC_DROPPED = "pre-trained (no delta)"

SYNTHETIC_PREFIX = "Collapse regime (synthetic MLP): "


def text_regime_name(config: dict) -> str:
    """``"MiniLM-L6 on Rotten Tomatoes"``: the real regime's model and task, from a record's config."""
    model = config["text"]["model_path"].rstrip("/").rsplit("/", 1)[-1] or "MiniLM-L6"
    task = {"rotten_tomatoes": "Rotten Tomatoes", "files": "its task files"}.get(config["text"]["task"], "a text task")
    return f"{model} on {task}"


def mask_id(seed: int, mask_seed: int) -> int:
    """The id of mask ``mask_seed`` of the model fine-tuned with ``seed`` (also its generator's seed)."""
    return 1_000 * seed + mask_seed


def seed_of(mask: int) -> int:
    """The fine-tuning seed a mask id belongs to."""
    return mask // 1_000


def search_mask_ids(seed: int, n: int) -> list[int]:
    """The ``n`` masks with which the real regime chooses q for the model of ``seed``: ``mask_id(seed, SEARCH_MASK)``
    first, then that id plus 10⁶·k (k = 1, 2, ...); never a scored mask (their ids stay below 10⁶ for seeds < 1000)."""
    first = mask_id(seed, SEARCH_MASK)
    return [first + 1_000_000 * k for k in range(max(1, n))]


def mask_ids(seeds, mask_seeds) -> list[int]:
    """Every scored mask of a run, in config order (fine-tuning seed, then mask seed): the replication units."""
    return [mask_id(s, m) for s in seeds for m in mask_seeds]


def l2_model(lam: float) -> str:
    return f"adamr-l2 λ={lam}"


def methods(regime: str) -> dict[str, str]:
    return METHODS if regime == TEXT else SYNTHETIC_METHODS


def _prefix(regime: str) -> str:
    return "" if regime == TEXT else SYNTHETIC_PREFIX


def model_table(regime: str, model: str) -> str:
    """The table holding the pruned scores of one fine-tuned model."""
    if model == STANDARD:
        name = MAIN_TABLE
    elif model == LARGE:
        name = LARGE_TABLE
    else:
        name = f"DAREx-L2: fine-tuned with AdamR-L2 ({model.split()[-1]}), then pruned"
    return _prefix(regime) + name


def reference_table(regime: str) -> str:
    return _prefix(regime) + REFERENCE_TABLE


def q_table(regime: str) -> str:
    return _prefix(regime) + Q_TABLE


def unpruned_setting(model: str) -> str:
    return "fine-tuned (unpruned)" if model == STANDARD else f"{model} fine-tune (unpruned)"


def rate_metric(metric: str, p: float) -> str:
    return f"{metric}, p={p}"


def validation_metric(metric: str, p: float) -> str:
    return f"validation {metric}, p={p}"


def inv_q_metric(p: float) -> str:
    return f"1/q at p={p} (DARE: {1 / (1 - p):.4g})"


@dataclass(frozen=True)
class Job:
    """One independent unit of work: a fine-tune (``stage="train"``) or the pruning of one fine-tuned model at
    one rate or for its references (``stage="prune"``). ``cost`` (rough, relative) only orders the jobs so the
    longest start first; the record never depends on it."""

    regime: str
    stage: str
    seed: int
    model: str
    part: str = ""
    rate: float | None = None
    cost: float = 1.0


def rate_plan(standard_methods: tuple[str, ...], rates, large_delta_rates, extreme_rate: float, model: str
              ) -> list[tuple[float, tuple[str, ...]]]:  # fmt: skip
    """The rates a fine-tune is pruned at, each with its methods, in both regimes: the standard fine-tune with
    ``standard_methods`` at ``rates``; the large-delta one with DARE and the importance-based methods at
    ``large_delta_rates`` (and DAREx-q at ``extreme_rate``); an AdamR-L2 one with DARE at ``extreme_rate``
    (DAREx-L2 is AdamR-L2 fine-tuning, then DARE)."""
    if model == STANDARD:
        return [(p, tuple(standard_methods)) for p in rates]
    if model == LARGE:
        return [(p, ("dare", *(("darex_q_labelled",) if p == extreme_rate else ()), "magnitude", "wanda"))
                for p in large_delta_rates]  # fmt: skip
    return [(extreme_rate, ("dare",))]
