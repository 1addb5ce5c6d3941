"""The claims of the NViT paper that a run can test, and the rules that judge them, apart from the experiment.

Pure functions from a results record (``record.extra["per_seed"]``: per seed, the dense model and every pruning
run's snapshots after fine-tuning; ``record.config``) to claims with verdicts, so that a rule can be read, tested
on synthetic records (``tests/nvit/test_claims.py``) and changed without re-running anything (``python -m nvit
report`` re-judges a saved record). Every claim has a stable id (C1 ... C11), and is judged with
:func:`common.stats.replicate`: the effect with its 95% interval over the seeds (paired by seed: every seed prunes
its own dense model when ``dense.per_seed``), a decision margin in the metric's unit with the reason for it, a
precondition with its measured value (a claim whose precondition fails is "not testable here"), and the verdicts
on the two halves of the seeds. C1 and C8 are exact float64 identities: their "effect" is the largest error over
all seeds, a computation rather than a sample, so its interval is the value itself. C11 compares one ReViT run
with the uniform runs (the per-seed dense models): its interval is a prediction interval (below).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from common.results import RunRecord
from common.stats import (
    CONFIDENCE,
    Effect,
    Judgement,
    Precondition,
    Test,
    mean_ci,
    paired_difference,
    replicate,
)

NVIT = "NViT"
STRUCTURES = ("EMB", "H", "QK", "V", "MLP")

# ---------------------------------------------------------------------------------------------------------
# Decision margins, each in its metric's unit, with the reason for it

FLOAT64_EXACT = 1e-9
"""C1 (relative error) and C8 (|logit difference|): both sides are float64 computations of a few thousand
operations each (unit roundoff 1.1e-16), so a correct identity leaves errors of ~1e-14; 1e-9 keeps a 10^5 margin
over that and is still far below any real discrepancy (a wrong dependency set changes results at ~1e-2)."""

"""The unit in which C1's and C8's float64 errors are shown."""

DIRECTION = 0.0
"""Claims that one arm beats another (accuracy in pp, Spearman ρ, kept fraction in pp): the paper states a
direction, not a size, so any difference whose whole interval is on the claimed side counts."""

NO_WORSE_PP = 0.5
"""C6 "at no worse accuracy": a top-1 loss smaller than 0.5 pp counts as no worse, about 1.5 binomial standard
errors of one top-1 on a 10k-image test set (0.35 pp at 85%) and one on mini's 5,000 images (0.5 pp), about the
smallest difference one evaluation resolves (the two arms are scored on the same images)."""

NO_SLOWER_X = 0.1
"""C6 "and no slower model": a measured speedup lower by less than 0.1x counts as no slower, 5% of the ~2x
speedups at the first target, below the spread of CPU timings between runs (a few %)."""

LUT_FRACTION = 0.8
"""C10: the measured speedup must reach 80% of what the latency table predicts (1/target); the table is an
analytic estimate (MACs plus a per-head cost), so 20% is left for what it does not model."""

DEGENERATE_SPREAD_PP = 65.0
"""C4: magnitude is degenerate when the kept fractions of the five structure types span more than 65 pp, the
span of "some type >= 90% kept and some <= 25% kept" (App. B.4: "either unpruned or all pruned away")."""

COST_GAP_PP = 5.0
"""C3 precondition: uniform's widths move in coarse steps, so it lands below the target; a gap of more than 5 pp of
dense latency to the global run (about 0.5 pp of top-1 on this model's accuracy-latency curve) would make the
comparison unfair to uniform."""

SAME_SIZE = 0.10
"""C11 precondition: the ReViT model has the uniform model's parameter count within 10%."""

TIMING_IQR = 0.10
"""C10 precondition: the timings are stable, the median relative interquartile range of the per-round speedup
at most 10%."""

MIN_DELTA_LOSS = 1e-5
"""C2 precondition: removing a group changes the loss by more than 1e-5 nats (median over the groups), far above
the float32 noise of a loss averaged over a few hundred images (~1e-7), so the ranks compare real changes."""


# ---------------------------------------------------------------------------------------------------------
# Reading the record


def target_label(t: float, metric: str = "latency") -> str:
    return f"{100 * t:g}% {'FLOPs' if metric == 'flops' else 'latency'}"


def method_name(label: str) -> str:
    names = {NVIT: "NViT (Hessian, global, latency-aware)", "uniform": "uniform per-layer (Hessian within layers)",
             "magnitude": "global magnitude", "first_order": "global first-order Taylor",
             "taylor_elementwise": "global element-wise Taylor", "random": "global random"}  # fmt: skip
    return names.get(label, f"NViT with {label}" if label.startswith("η=") else label)


def eta0_label(labels: Sequence[str]) -> str | None:
    """The NViT-score run without latency term (the reference of the criterion comparisons), if any."""
    return next((lb for lb in labels if lb.startswith("η=") and float(lb[2:]) == 0.0), None)


def snapshot_of(entry: dict, label: str, target: float) -> dict | None:
    run = entry.get("methods", {}).get(label)
    if run is None:
        return None
    for s in run["snapshots"]:
        if abs(s["target"] - target) < 1e-12:
            return s
    return None


def values_of(per_seed: list[dict], label: str, target: float, key: str) -> tuple[list[float], list[int]]:
    """``key`` of ``label``'s snapshot at ``target``, for every seed that has it, and those seeds."""
    vals, seeds = [], []
    for e in per_seed:
        s = snapshot_of(e, label, target)
        if s is not None and key in s:
            vals.append(float(s[key]))
            seeds.append(e["seed"])
    return vals, seeds


def by_seed(per_seed: list[dict], label: str, target: float, key: str) -> dict[int, float]:
    vals, seeds = values_of(per_seed, label, target, key)
    return dict(zip(seeds, vals, strict=True))


def paired(
    per_seed: list[dict], a: str, b: str, t: float, key: str, key_b: str | None = None, seeds: Sequence[int] = ()
) -> tuple[list[float], list[float]]:
    """``key`` of method ``a`` and ``key_b`` (default ``key``) of method ``b`` at target ``t``, aligned by seed
    (a seed missing either is dropped from both); only ``seeds`` when given."""
    va, vb = by_seed(per_seed, a, t, key), by_seed(per_seed, b, t, key_b or key)
    common = [s for s in va if s in vb and (not seeds or s in seeds)]
    return [va[s] for s in common], [vb[s] for s in common]


NO_DATA = Effect(math.nan, -math.inf, math.inf, 0, "no values")
"""The effect of a part with no values on these seeds: its interval is undefined, so the part is inconclusive."""


def diff(a: Sequence[float], b: Sequence[float]) -> Effect:
    """:func:`common.stats.paired_difference`, or :data:`NO_DATA` when no seed has both values."""
    return paired_difference(a, b) if len(a) else NO_DATA


def mean_of(values: Sequence[float]) -> Effect:
    return mean_ci(values) if len(values) else NO_DATA


def exact(value: float, n: int) -> Effect:
    """A computed quantity (not a sample): its interval is the value itself."""
    return Effect(value, value, value, n, "exact (float64), max over runs")


def one_vs_sample(value: float, sample: Sequence[float], confidence: float = CONFIDENCE) -> Effect:
    """``value − mean(sample)`` for one run of arm A against ``k`` runs of arm B, with the t prediction interval
    ``± t_{k−1} · sd(sample) · sqrt(1 + 1/k)``: it assumes A's run-to-run spread equals B's (one run of A carries
    the noise of one run of B). Undefined for k < 2. (Belongs in ``common.stats`` if another paper needs it.)"""
    x = np.asarray(list(sample), dtype=np.float64)
    est = float(value - x.mean())
    k = x.size
    if k < 2:
        return Effect(est, -math.inf, math.inf, k, "single value")
    half = float(_st.t.ppf(0.5 + confidence / 2, k - 1)) * float(x.std(ddof=1)) * math.sqrt(1 + 1 / k)
    return Effect(est, est - half, est + half, k, "one run vs k runs, t prediction interval")


@dataclass
class Spec:
    """A judged claim, ready for ``record.claim``."""

    id: str
    claim: str
    paper_evidence: str
    our_evidence: str
    judgement: Judgement


def _seeds(per_seed: list[dict]) -> list[int]:
    return [e["seed"] for e in per_seed]


def _tl(record: RunRecord) -> Callable[[float], str]:
    metric = record.extra.get("target_metric", "latency")
    return lambda t: target_label(t, metric)


def _n_of(per_seed, label, t) -> int:
    return sum(snapshot_of(e, label, t) is not None for e in per_seed)


# ---------------------------------------------------------------------------------------------------------
# The claims


def c1_gate_identity(record: RunRecord) -> Spec | None:
    per_seed = record.extra["per_seed"]
    if not per_seed or "gate_identity" not in per_seed[0]:
        return None
    g = {e["seed"]: e["gate_identity"] for e in per_seed}
    smallest = min(v["min_abs_wg"] for v in g.values())
    pre = Precondition("the probed units' |Σ w·∂L/∂w| > 0 (a relative error of zeros would be vacuous)",
                       f"smallest {smallest:.1e}", smallest > 0)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        err = max(g[s]["max_rel_err"] for s in seeds)
        name = "max relative error, (∂L/∂g_S)² vs (Σ w ∂L/∂w)²"
        return [Test(name, exact(err, len(seeds)), FLOAT64_EXACT, higher=False, digits=-1)]

    j = Judgement(evaluate(_seeds(per_seed)), precondition=pre)  # a computation: no halves to replicate
    worst = max(v["max_rel_err"] for v in g.values())
    return Spec("C1", "The saliency I_S = (Σ w ∂L/∂w)² equals the squared gradient of a gate on the group's weights "
                "(Eq. 4-6)", "§3.2.1, Eq. 1-6 (derivation)",
                f"float64 autograd through a weight gate vs the summed w·g, one unit of every structure type, on each "
                f"seed's dense model; max relative error {worst:.1e}. Rule: reproduced if below "
                f"{FLOAT64_EXACT:g} (float64 rounding of a few thousand operations stays near 1e-14; also a unit "
                "test); an exact check has no replication halves", j)  # fmt: skip


def c2_score_tracks_loss(record: RunRecord) -> Spec | None:
    per_seed = record.extra["per_seed"]
    if not per_seed or "score_check" not in per_seed[0]:
        return None
    rho = {e["seed"]: e["score_check"]["rho"] for e in per_seed}
    others = [k for k in ("first_order", "magnitude") if k in rho[per_seed[0]["seed"]]]
    if not others:
        return None
    med = float(np.median([e["score_check"].get("median_abs_delta_loss", math.inf) for e in per_seed]))
    pre = Precondition(f"removing a group changes the loss measurably: median |Δloss| ≥ {MIN_DELTA_LOSS:g} nats",
                       f"{med:.1e}", med >= MIN_DELTA_LOSS)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        h = [rho[s]["hessian"] for s in seeds]
        return [Test(f"ρ(Hessian) − ρ({o})", diff(h, [rho[s][o] for s in seeds]), DIRECTION, digits=3)
                for o in others]  # fmt: skip

    j = replicate(evaluate, _seeds(per_seed), pre)
    first = per_seed[0]["score_check"]
    mean_rho = {k: np.mean([rho[s][k] for s in rho]) for k in rho[per_seed[0]["seed"]]}
    return Spec("C2", "The Hessian-aware score tracks the true loss increase of removing a group better than "
                "first-order Taylor and magnitude", "App. B.5 (numbers not retrievable); App. B.4",
                f"Spearman ρ between a criterion's score and the true loss change over {first['groups']} random groups "
                f"of all five types, on each seed's dense model (a group's score = the sum of its units'; random: one "
                f"draw per group); mean ρ: " + ", ".join(f"{k} {v:.3f}" for k, v in mean_rho.items())
                + ". Rule: ρ(Hessian) − ρ(other), paired by seed, above 0 for both others (the paper states a "
                "direction, not a size)", j)  # fmt: skip


def _cost_text(per_seed, label, t, seeds=None) -> str:
    def m(key):
        v = [x for s, x in by_seed(per_seed, label, t, key).items() if not seeds or s in seeds]
        return np.mean(v) if v else float("nan")

    return f"LUT {100 * m('latency_ratio_lut'):.1f}%, MACs {100 * m('macs_ratio'):.1f}%, {m('speedup'):.2f}x"


def c3_global_vs_uniform(record: RunRecord) -> Spec | None:
    ex = record.extra
    per_seed, targets, tl = ex["per_seed"], ex["targets"], _tl(record)
    ref = eta0_label(ex["methods"])
    if "uniform" not in ex["methods"] or ref is None:
        return None
    ts = [t for t in targets if paired(per_seed, ref, "uniform", t, "top1_ft")[0]]
    if not ts:
        return None
    gaps = []
    for t in ts:
        g, u = paired(per_seed, ref, "uniform", t, "latency_ratio_lut")
        gaps.append(100 * float(np.mean(np.subtract(g, u))))
    worst = max(gaps)
    pre = Precondition(f"comparable cost: uniform lands at most {COST_GAP_PP:g} pp of dense latency below global "
                       "(η = 0), at every target", f"largest gap {worst:+.1f} pp", worst <= COST_GAP_PP)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        return [Test(f"{tl(t)}: top-1 global (η = 0) − uniform",
                     diff(*paired(per_seed, ref, "uniform", t, "top1_ft", seeds=seeds)), DIRECTION,
                     unit="pp") for t in ts]  # fmt: skip

    j = replicate(evaluate, _seeds(per_seed), pre)
    lam = [f"{tl(t)} {diff(*paired(per_seed, NVIT, 'uniform', t, 'top1_ft')).text(2, 'pp')}"
           for t in ts if paired(per_seed, NVIT, "uniform", t, "top1_ft")[0]]  # fmt: skip
    return Spec("C3", "Global ranking across all structures beats uniform per-layer pruning at the same cost",
                "§3.2, §4 (global vs uniform allocation); App. B ablations (numbers not retrievable)",
                f"top-1 after the same KD budget and fine-tune, NViT's score at η = 0 ({ref}) − uniform (the same "
                "score within each layer, no latency term either). Achieved cost, global vs uniform: "
                + "; ".join(f"{tl(t)}: {_cost_text(per_seed, ref, t)} vs {_cost_text(per_seed, 'uniform', t)}"
                            for t in ts)
                + (f". For reference, NViT (with the latency term) − uniform: {'; '.join(lam)}" if lam else "")
                + ". Rule: above 0 pp at every target (direction), paired by seed", j)  # fmt: skip


def _spread(kept: dict) -> float:
    return 100 * (max(kept.values()) - min(kept.values()))


def c4_magnitude_degenerate(record: RunRecord) -> Spec | None:
    ex = record.extra
    per_seed, targets, tl = ex["per_seed"], ex["targets"], _tl(record)
    ref = eta0_label(ex["methods"])
    base_t = [t for t in targets if any(snapshot_of(e, "magnitude", t) for e in per_seed)]
    if "magnitude" not in ex["methods"] or ref is None or not base_t:
        return None
    t = base_t[-1]
    both = [e for e in per_seed if snapshot_of(e, "magnitude", t) and snapshot_of(e, ref, t)]
    pre = Precondition("magnitude and η = 0 reached the target in every seed", f"{len(both)}/{len(per_seed)}",
                       len(both) == len(per_seed) and len(both) > 0)  # fmt: skip
    spread = {e["seed"]: (_spread(snapshot_of(e, "magnitude", t)["kept"]), _spread(snapshot_of(e, ref, t)["kept"]))
              for e in both}  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        ss = [s for s in seeds if s in spread]
        mag, hes = [spread[s][0] for s in ss], [spread[s][1] for s in ss]
        return [
            Test("magnitude: spread of the kept fractions", mean_of(mag),
                 DEGENERATE_SPREAD_PP, unit="pp", digits=1),
            Test(f"spread, magnitude − {ref}", diff(mag, hes), DIRECTION,
                 unit="pp", digits=1),
            Test(f"{tl(t)}: top-1 {ref} − magnitude",
                 diff(*paired(per_seed, ref, "magnitude", t, "top1_ft", seeds=seeds)), DIRECTION,
                 unit="pp"),
        ]  # fmt: skip

    j = replicate(evaluate, _seeds(per_seed), pre)

    def kept(label):
        return ", ".join(f"{s} {np.mean([100 * snapshot_of(e, label, t)['kept'][s] for e in both]):.0f}%"
                         for s in STRUCTURES) if both else "–"  # fmt: skip

    return Spec("C4", "Weight magnitude fails as a global criterion: some structure types are left almost untouched "
                "while others are nearly emptied",
                'App. B.4 ("most structural components either unpruned or all pruned away"; numbers not retrievable)',
                f"kept fractions at {tl(t)}, both with η = 0 (only the criterion differs; a magnitude group scores "
                f"the sum of its units' L2 norms): magnitude {kept('magnitude')}; {ref} {kept(ref)}. Achieved cost: "
                f"magnitude {_cost_text(per_seed, 'magnitude', t)}; {ref} {_cost_text(per_seed, ref, t)}. Rule: three "
                f"parts, (1) magnitude's spread (largest − smallest kept fraction) above {DEGENERATE_SPREAD_PP:g} pp "
                "(some type ≥ 90% kept and some ≤ 25%), (2) magnitude's spread above the Hessian score's, (3) the "
                "Hessian score more accurate; all three: reproduced, some: partly", j)  # fmt: skip


def c5_criteria(record: RunRecord) -> Spec | None:
    ex = record.extra
    per_seed, targets, tl = ex["per_seed"], ex["targets"], _tl(record)
    ref = eta0_label(ex["methods"])
    crit = [c for c in ("first_order", "random", "taylor_elementwise") if c in ex["methods"]]
    if not crit or ref is None:
        return None
    pairs = [(c, t) for c in crit for t in targets if paired(per_seed, ref, c, t, "top1_ft")[0]]
    if not pairs:
        return None
    drops = []
    for t in sorted({t for _, t in pairs}):
        r = by_seed(per_seed, ref, t, "top1_ft")
        drops += [e["dense"]["top1"] - r[e["seed"]] for e in per_seed if e["seed"] in r and "dense" in e]
    drop = float(np.mean(drops)) if drops else math.nan
    pre = Precondition(f"pruning to the target costs accuracy, so that criteria can differ: dense − {ref} top-1 "
                       f"≥ {NO_WORSE_PP:g} pp", f"{drop:+.2f} pp", drop >= NO_WORSE_PP)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        return [Test(f"{tl(t)}: top-1 {ref} − {c}",
                     diff(*paired(per_seed, ref, c, t, "top1_ft", seeds=seeds)), DIRECTION, unit="pp")
                for c, t in pairs]  # fmt: skip

    j = replicate(evaluate, _seeds(per_seed), pre)
    return Spec("C5", "As a global pruning criterion, the Hessian-aware score beats "
                + " and ".join(method_name(c).replace("global ", "") for c in crit),
                "§3.2 (the Hessian score vs the first-order Taylor it squares; the issue's baseline list); App. B "
                "numbers not retrievable",
                f"top-1 after the same KD budget, all with η = 0: NViT's score ({ref}) minus each criterion. Achieved "
                "cost: " + "; ".join(f"{method_name(c)} at {tl(t)}: {_cost_text(per_seed, c, t)}" for c, t in pairs)
                + f"; {ref}: " + "; ".join(f"{tl(t)} {_cost_text(per_seed, ref, t)}" for t in sorted({t for _, t in
                                                                                                    pairs}))
                + ". Rule: above 0 pp against every criterion (reproduced), against some (partly)", j)  # fmt: skip


def c6_latency_term(record: RunRecord) -> Spec | None:
    ex, cfg = record.extra, record.config
    per_seed, targets, tl = ex["per_seed"], ex["targets"], _tl(record)
    ref = eta0_label(ex["methods"])
    if ref is None or not cfg["latency"]["eta"] or not targets:
        return None
    t = targets[0]
    both = [e for e in per_seed if snapshot_of(e, NVIT, t) and snapshot_of(e, ref, t)]
    pre = Precondition("the latency term is on (η > 0) and both runs reached the first target in every seed",
                       f"η = {cfg['latency']['eta']:g} ({cfg['latency']['eta_mode']}); {len(both)}/{len(per_seed)}",
                       len(both) == len(per_seed) and len(both) > 0)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        return [
            Test(f"{tl(t)}: pruning steps, NViT − η = 0",
                 diff(*paired(per_seed, NVIT, ref, t, "step", seeds=seeds)), DIRECTION, higher=False,
                 digits=1),
            Test(f"{tl(t)}: measured speedup, NViT − η = 0",
                 diff(*paired(per_seed, NVIT, ref, t, "speedup", seeds=seeds)), -NO_SLOWER_X, unit="x"),
            Test(f"{tl(t)}: top-1, NViT − η = 0",
                 diff(*paired(per_seed, NVIT, ref, t, "top1_ft", seeds=seeds)), -NO_WORSE_PP, unit="pp"),
        ]  # fmt: skip

    j = replicate(evaluate, _seeds(per_seed), pre)
    neg = [e["methods"][NVIT].get("negative_fraction") for e in per_seed if NVIT in e.get("methods", {})]
    neg = [x for x in neg if x is not None]
    lam = f"η = {cfg['latency']['eta']:g} ({cfg['latency']['eta_mode']})"
    return Spec("C6", "The latency-aware term (Eq. 7) reaches the latency target in fewer pruning steps at no worse "
                "accuracy (and, implicitly, no slower model)", "App. B.6 (numbers not retrievable)",
                f"NViT ({lam}) vs NViT's score at η = 0, at {tl(t)}; steps are counted against the LUT that the term "
                "itself optimises, so the measured speedup and top-1 are parts of the claim"
                + (f"; at this λ the latency term dominates the ranking: {100 * np.mean(neg):.0f}% of the groups have "
                   "a negative Eq. 7 score at the first step" if neg else "")
                + f". Rule: three parts, fewer steps (below 0), speedup no lower by more than {NO_SLOWER_X:g}x (5% of "
                f"~2x), top-1 no lower by more than {NO_WORSE_PP:g} pp (1.5 binomial s.e. of one top-1); all three: "
                "reproduced, some: partly", j)  # fmt: skip


def c7_redistribution(record: RunRecord) -> Spec | None:
    ex = record.extra
    per_seed, targets, tl = ex["per_seed"], ex["targets"], _tl(record)
    if not targets:
        return None
    t = targets[-1]
    have = {e["seed"]: snapshot_of(e, NVIT, t)["kept"] for e in per_seed if snapshot_of(e, NVIT, t)}
    if not have:
        return None
    pre = Precondition("NViT reached the last target in every seed", f"{len(have)}/{len(per_seed)}",
                       len(have) == len(per_seed))  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        ss = [s for s in seeds if s in have]
        k = {x: [100 * have[s][x] for s in ss] for x in STRUCTURES}
        return [
            Test("kept V − kept QK", diff(k["V"], k["QK"]), DIRECTION, unit="pp", digits=1),
            Test("kept MLP − kept H", diff(k["MLP"], k["H"]), DIRECTION, unit="pp", digits=1),
        ]

    j = replicate(evaluate, _seeds(per_seed), pre)
    lam = f"η = {record.config['latency']['eta']:g}"
    mean_k = ", ".join(f"{x} {np.mean([100 * k[x] for k in have.values()]):.0f}%" for x in STRUCTURES)
    return Spec("C7", "Redistribution: QK and heads shrink more than V and MLP (Fig. 4, §5)",
                "Fig. 4 and Table 5 (QK/H more prunable; V and MLP more sensitive)",
                f"NViT ({lam}) at {tl(t)}, mean kept: {mean_k}. Rule: kept V − kept QK and kept MLP − kept H above 0 "
                "pp, paired by seed (direction); both: reproduced, one: partly (per-block widths in the figure)",
                j)  # fmt: skip


def c8_conversion(record: RunRecord) -> Spec | None:
    per_seed = record.extra["per_seed"]
    err = {e["seed"]: [s["equivalence_max_abs_diff"] for r in e.get("methods", {}).values() for s in r["snapshots"]]
           for e in per_seed}  # fmt: skip
    if not any(err.values()):
        return None
    pruned = [s.get("most_pruned_fraction", 1.0) for e in per_seed for r in e["methods"].values()
              for s in r["snapshots"]]  # fmt: skip
    pre = Precondition(
        "every snapshot has pruned units (the conversion removes something)",
        f"smallest pruned share of a structure's units {100 * min(pruned):.0f}%",
        min(pruned) > 0,
    )

    def evaluate(seeds: list[int]) -> list[Test]:
        worst = max(x for s in seeds for x in err[s])
        return [Test("max |logit difference|, masked − converted (float64)", exact(worst, len(seeds)),
                     FLOAT64_EXACT, higher=False, digits=-1)]  # fmt: skip

    j = Judgement(evaluate(_seeds(per_seed)), precondition=pre)  # a computation: no halves to replicate
    n = sum(len(v) for v in err.values())
    return Spec("C8", "Head alignment keeps per-head QK/V equal, and the pruned model converts to a smaller dense "
                "model with the same outputs", "§3.1, official finetune_dense.py",
                f"both models in float64 on 64 test images, every snapshot ({n}); LayerNorm over the kept channels "
                f"only. Rule: below {FLOAT64_EXACT:g} (float64 rounding of this forward pass is ~1e-15; float32 would "
                "test summation order, not the conversion); an exact check has no replication halves", j)  # fmt: skip


def c9_scratch(record: RunRecord) -> Spec | None:
    ex = record.extra
    per_seed, targets, tl = ex["per_seed"], ex["targets"], _tl(record)
    ts = [t for t in targets if by_seed(per_seed, NVIT, t, "top1_scratch")]
    if not ts:
        return None
    gaps = []
    for t in ts:
        sc = by_seed(per_seed, NVIT, t, "top1_scratch")
        gaps += [e["dense"]["top1"] - sc[e["seed"]] for e in per_seed if e["seed"] in sc]
    gap = float(np.mean(gaps))
    pre = Precondition("the dense model is better than the scratch control at the target (trained enough that "
                       "pruning it is meaningful): mean of dense − scratch top-1 > 0", f"{gap:+.2f} pp",
                       gap > 0)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        return [Test(f"{tl(t)}: top-1 pruned + KD − scratch",
                     diff(*paired(per_seed, NVIT, NVIT, t, "top1_ft", "top1_scratch", seeds=seeds)),
                     DIRECTION, unit="pp") for t in ts]  # fmt: skip

    j = replicate(evaluate, _seeds(per_seed), pre)
    spent = []
    for t in ts:
        steps, kd = values_of(per_seed, NVIT, t, "scratch_steps")[0], values_of(per_seed, NVIT, t, "kd_batches")[0]
        spent.append(f"{tl(t)}: {np.mean(steps) - np.mean(kd):.0f} + {np.mean(kd):.0f} batches")
    return Spec("C9", "Pruning + KD fine-tuning beats the same architecture trained from scratch",
                "official --scratch control; §4 (NViT-S/T vs DeiT-S/T trained from scratch, Table 1)",
                "top-1, pruned + fine-tuned − the same dims from random init (attention scale of its own QK) with the "
                "same compute and recipes as the pruned model's whole path: the dense model's training epochs (dense "
                f"recipe, labels only), then as many KD batches as the pruned model got ({'; '.join(spent)}). Rule: "
                "above 0 pp (direction), paired by seed", j)  # fmt: skip


def c10_speedup(record: RunRecord) -> Spec | None:
    ex = record.extra
    per_seed, targets, tl = ex["per_seed"], ex["targets"], _tl(record)
    ts = [t for t in targets if by_seed(per_seed, NVIT, t, "speedup")]
    if not ts:
        return None
    iqr = []
    for e in per_seed:
        for r in e["methods"].values():
            for s in r["snapshots"]:
                if "speedup_q1" in s and s.get("speedup"):
                    iqr.append((s["speedup_q3"] - s["speedup_q1"]) / s["speedup"])
    med = float(np.median(iqr)) if iqr else math.nan
    pre = Precondition(f"stable timings: median relative IQR of the per-round speedup ≤ {100 * TIMING_IQR:g}%",
                       f"{100 * med:.1f}%", med <= TIMING_IQR)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        return [Test(f"{tl(t)}: measured speedup × target (1 = the LUT's prediction)",
                     mean_of([v * t for s, v in by_seed(per_seed, NVIT, t, "speedup").items() if s in seeds]),
                     LUT_FRACTION) for t in ts]  # fmt: skip

    j = replicate(evaluate, _seeds(per_seed), pre)
    thr = ex["threads"]
    return Spec("C10", "Latency-targeted pruning gives a real speedup close to the latency the table predicts",
                "Table 1: NViT-B/H/S/T run 1.86x/2.01x/2.52x/4.97x faster than DeiT-B (V100, batch 256); their "
                "latency targets, 0.54/0.50/0.39/0.19, are from the official commands",
                f"measured speedup ({ex.get('timing_protocol', 'interleaved timing')}; {ex['device']}, batch "
                f"{ex['timing_batch']}, {thr} thread{'s' * (thr > 1)}) vs 1/target: "
                + "; ".join(f"{tl(t)}: {np.mean(values_of(per_seed, NVIT, t, 'speedup')[0]):.2f}x vs {1 / t:.2f}x"
                            for t in ts)
                + f" (LUT: {ex['lut']['description']}). Rule: speedup × target above {LUT_FRACTION:g} at every "
                "target (the analytic table leaves 20% unmodelled), interval over the seeds", j)  # fmt: skip


def c11_revit(record: RunRecord) -> Spec:
    rv = record.extra.get("revit")
    claim = "A ViT built with the ReViT rule beats the uniform (DeiT-rule) ViT of about the same size"
    if not rv:
        j = Judgement(
            [Test("ReViT − uniform top-1", Effect(math.nan, -math.inf, math.inf, 0, "not run"))],
            precondition=Precondition("the check runs in this preset (revit_epochs > 0)", "0", False),
        )
        return Spec("C11", claim, "Table 7", "skipped in this preset (revit_epochs = 0)", j)
    runs = {u["seed"]: u["top1"] for u in rv["uniform_runs"]}
    more = rv["revit"]["params"] / rv["uniform"]["params"] - 1
    pre = Precondition(f"about the same size: ReViT's params within ±{100 * SAME_SIZE:g}% of uniform's",
                       f"{100 * more:+.1f}%", abs(more) <= SAME_SIZE)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        return [Test("top-1, ReViT (1 run) − uniform", one_vs_sample(rv["revit"]["top1"], [runs[s] for s in seeds]),
                     DIRECTION, unit="pp")]  # fmt: skip

    j = replicate(evaluate, list(runs), pre)
    what = ("the dense models of the seeds (the same recipe and epochs)" if rv.get("uniform_is_dense")
            else "a uniform model trained with the same recipe and epochs")  # fmt: skip
    return Spec("C11", claim, "Table 7: ReViT-T 74.20 vs DeiT-T 72.84, ReViT-S 81.22 vs DeiT-S 81.01 (from scratch)",
                f"from scratch, {rv['epochs']} epochs: one ReViT run (seed {rv.get('revit_seed', 0)}, "
                f"{rv['revit']['top1']:.2f}%, {rv['revit']['params'] / 1e6:.3f}M params) against {len(runs)} uniform "
                f"run(s), {what}. Rule: above 0 pp (direction); the interval is a t prediction interval for one run "
                "against the uniform runs' spread (it assumes the same run-to-run spread for both); halves: the "
                "uniform runs split in two, the one ReViT run in both", j)  # fmt: skip


CLAIMS: tuple[Callable[[RunRecord], Spec | None], ...] = (
    c1_gate_identity, c2_score_tracks_loss, c3_global_vs_uniform, c4_magnitude_degenerate, c5_criteria,
    c6_latency_term, c7_redistribution, c8_conversion, c9_scratch, c10_speedup, c11_revit,
)  # fmt: skip


def judge(record: RunRecord) -> list[Spec]:
    """Judge every claim the record can test and append them to ``record.claims`` (replacing earlier ones)."""
    record.claims = []
    specs = [spec for rule in CLAIMS if (spec := rule(record)) is not None]
    for s in specs:
        record.claim(s.claim, paper_evidence=s.paper_evidence, our_evidence=s.our_evidence, judgement=s.judgement,
                     id=s.id)  # fmt: skip
    return specs
