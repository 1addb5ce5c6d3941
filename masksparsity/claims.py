"""The paper's claims and how we judge them: pure functions from a results record to verdicts.

Every claim is judged through :func:`common.stats.replicate` on the seeds of the record (each seed is one
whole pipeline: baseline, sparsity phases, masks, pruning, fine-tuning), with effects paired by seed and
95% t intervals, and again on each half of the seeds. The unit of replication is the seed throughout.

Decision margins (fixed before any run, in the metric's unit):

- :data:`MARGIN_PP` = 1 percentage point of accuracy is the smallest difference we treat as material, for
  every accuracy claim: "under-fits" means more than 1 point below the unregularised control in train
  accuracy; "does not under-fit", "matches" and "no loss" mean not more than 1 point below (non-inferiority);
  "loses less right after pruning" means a drop smaller by more than 1 point.
- "beats the control" (C4) is a superiority claim: margin 0 (any gain, if the whole interval is above it).

Preconditions: every claim needs a baseline that learnt the task (dense test accuracy >= 50 %, chance 10 %);
claims comparing pruned arms (C2-C4) need them pruned to the same FLOPs target, MaskSparsity and the control
with the same mask (``prune.rule=mask``; with per-arm thresholds the unregularised control loses nothing because
none of its γ is small, and the arms end at different FLOPs); C2 needs
MaskSparsity to have driven its masked γ to about zero (the regime the claim is about); C3 needs Network
Slimming's λ picked on a validation split (never the test set); C5 needs our operating point near the
abstract's 63.03 % FLOPs reduction.

The record layout these functions read (table, setting and metric names) is defined here too; the
experiment (``reproduce.py``) writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.results import Measurement, RunRecord, format_mean_std
from common.stats import Judgement, Precondition, Test, mean_ci, paired_difference, replicate

# ----------------------------------------------------------------------------------------------------
# The record layout

PRE_TABLE = "Before pruning: the end of the sparsity phase (under-fitting)"
REF_TABLE = "Unpruned reference with the same total epochs as every pruned arm"
PAPER_TABLE = "Operating points: the paper's abstract vs ours (different network and data)"


def op_table(op: str) -> str:
    return f"Pruned at {op}: accuracy right after pruning and after fine-tuning"


def ns_label(lam: float) -> str:
    return f"Network Slimming (λ={lam:g})"


def ms_pre_label(op: str) -> str:
    """MaskSparsity's row in the before-pruning table (one MaskSparsity run per mask)."""
    return f"{MS} ({op})"


BASELINE = "Baseline, pruned directly"
DENSE = "Baseline (dense, before any sparsity phase)"
MS = "MaskSparsity"
CONTROL = "No regularization (control)"
SCRATCH = "Pruned architecture from scratch"
DENSE_REF = "No regularization, unpruned, fine-tuned too (dense reference)"

TRAIN_ACC = "train accuracy"
TRAIN_LOSS = "train loss"
TEST_ACC = "test accuracy"
"""Before pruning, on the quick test subset (the same images as the accuracies right after pruning)."""
RAW = "test accuracy right after pruning, raw"
FOLD = "… with relu(β) folded"
RECAL = "… with BN statistics re-estimated"
FT = "test accuracy after fine-tuning"
"""On the whole test (sub)set."""
VAL_FT = "validation accuracy after fine-tuning"
FLOPS = "FLOPs (MACs) reduction"
FLOPS_OFFICIAL = "FLOPs (MACs) reduction, official counter (conv, linear, BN, ReLU)"
"""Only in records of runs with prune.flops_counter=official (masksparsity.flops.official_macs)."""
PARAMS = "params reduction"
MASKED_SMALL = "masked γ ≈ 0 before pruning (|γ| below the prune threshold)"
SPEEDUP = "measured CPU speedup over dense"

# ----------------------------------------------------------------------------------------------------
# Rules

MARGIN_PP = 1.0
"""Smallest accuracy difference (percentage points) treated as material; see the module docstring."""
LEARNT_MIN = 50.0
"""Dense test accuracy (%) the baseline must reach for any claim to be testable (chance: 10 %)."""
MASKED_ZERO_MIN = 90.0
"""Share (%) of MaskSparsity's masked γ that must be below the prune threshold for C2 to be testable."""
ABSTRACT_OP = 63.03
"""The abstract's ResNet-110 FLOPs reduction (%), where "no top-1 loss" is claimed."""
ABSTRACT_OP_TOLERANCE = 2.0
"""How close (FLOPs reduction points) our operating point must be to it for C5."""

PAPER_UNDERFIT = ("§1/§3: global sparsity training shrinks the kept γ and raises the training loss (the paper's "
                  "figures; numbers not read)")  # fmt: skip
PAPER_DROP = "§1/§4: the masked γ are ≈ 0, so removing them barely changes the function (numbers not read)"
PAPER_TABLES = "Tables (ResNet-56/110, ResNet-50) vs sparsity-training methods (numbers not read)"
PAPER_METHOD = ("§1: the penalty on the masked channels is what makes pruning them harmless (the method's "
                "contribution; numbers not read)")  # fmt: skip
PAPER_NO_LOSS = "Abstract: ResNet-110 on CIFAR-10, 63.03% FLOPs and 60.34% params removed, no top-1 loss"


@dataclass
class ClaimResult:
    """One claim of the paper, judged: what :meth:`common.results.RunRecord.claim` stores."""

    id: str
    claim: str
    paper_evidence: str
    our_evidence: str
    judgement: Judgement


def add_claims(record: RunRecord) -> list[ClaimResult]:
    """Judge every claim the record holds the measurements for, and append them to the record."""
    results = judge(record)
    for r in results:
        record.claim(r.claim, paper_evidence=r.paper_evidence, our_evidence=r.our_evidence, judgement=r.judgement,
                     id=r.id)  # fmt: skip
    return results


def judge(record: RunRecord) -> list[ClaimResult]:
    """All claims, in order: C1; C2, C3, C4 per operating point (a, b, ...); C5."""
    ops = operating_points(record)
    out = [c for c in (_c1(record, ops),) if c]
    for make in (_c2, _c3, _c4):
        for k, op in enumerate(ops):
            c = make(record, op, chr(ord("a") + k) if len(ops) > 1 else "")
            if c:
                out.append(c)
    c5 = _c5(record, ops)
    if c5:
        out.append(c5)
    return out


def operating_points(record: RunRecord) -> list[str]:
    """The operating points, in the order of the record's tables."""
    prefix, suffix = op_table("\0").split("\0")
    return [t[len(prefix) : -len(suffix)] for t in record.tables() if t.startswith(prefix) and t.endswith(suffix)]


# ----------------------------------------------------------------------------------------------------
# Helpers


def _get(record: RunRecord, table: str, setting: str, metric: str) -> Measurement | None:
    try:
        return record.get(table, setting, metric)
    except KeyError:
        return None


def _fmt(m: Measurement | None) -> str:
    return "n/a" if m is None else format_mean_std(m.values)


def _diff(a: Measurement, b: Measurement, seeds: list[int]):
    return paired_difference(a.at(seeds), b.at(seeds))


def _learnt(record: RunRecord) -> Precondition:
    dense = _get(record, PRE_TABLE, DENSE, TEST_ACC)
    value = dense.mean if dense else float("nan")
    return Precondition(f"dense baseline test accuracy >= {LEARNT_MIN:g}% (chance 10%)", f"{value:.1f}%",
                        dense is not None and value >= LEARNT_MIN)  # fmt: skip


def _same_flops(record: RunRecord) -> Precondition:
    rule = (record.config.get("prune") or {}).get("rule", "mask")
    return Precondition("arms pruned to the same FLOPs target (prune.rule=mask)", f"prune.rule={rule}", rule == "mask")


def _judge(record: RunRecord, evaluate: Callable[[list[int]], list[Test]], pre: Precondition) -> Judgement:
    return replicate(evaluate, record.seeds, precondition=pre)


def _rule(text: str) -> str:
    return f"Rule: {text}; intervals are 95% t intervals of the paired (by seed) differences."


# ----------------------------------------------------------------------------------------------------
# C1: the penalty on kept channels causes under-fitting; MaskSparsity does not under-fit


def _c1(record: RunRecord, ops: list[str]) -> ClaimResult | None:
    lam = (record.config.get("sparsity") or {}).get("mask_lambda")
    control = _get(record, PRE_TABLE, CONTROL, TRAIN_ACC)
    ns = _get(record, PRE_TABLE, ns_label(lam), TRAIN_ACC) if lam is not None else None
    ms = {op: m for op in ops if (m := _get(record, PRE_TABLE, ms_pre_label(op), TRAIN_ACC))}
    if not (control and ns and ms):
        return None

    def evaluate(seeds: list[int]) -> list[Test]:
        return [
            Test(f"control − Network Slimming (λ={lam:g}), train accuracy", _diff(control, ns, seeds),
                 margin=MARGIN_PP, unit="pp"),
            *[Test(f"MaskSparsity ({op}) − control, train accuracy", _diff(m, control, seeds), margin=-MARGIN_PP,
                   unit="pp") for op, m in ms.items()],
        ]  # fmt: skip

    return ClaimResult(
        "C1",
        "Regularising the channels that are kept makes the network under-fit; MaskSparsity does not",
        PAPER_UNDERFIT,
        f"train accuracy at the end of the sparsity phase (same epochs for every arm): control {_fmt(control)}, "
        f"Network Slimming at MaskSparsity's λ={lam:g} {_fmt(ns)}, MaskSparsity "
        + ", ".join(f"{_fmt(m)} ({op})" for op, m in ms.items())
        + ". "
        + _rule(
            f"Network Slimming under-fits = more than {MARGIN_PP:g} point below the control; MaskSparsity does "
            f"not = not more than {MARGIN_PP:g} point below it (non-inferiority), at every mask"
        ),
        _judge(record, evaluate, _learnt(record)),
    )


# ----------------------------------------------------------------------------------------------------
# C2: smaller accuracy drop right after pruning (vs the control pruned with the same mask)


def _c2(record: RunRecord, op: str, suffix: str) -> ClaimResult | None:
    table = op_table(op)
    ms_pre, ctl_pre = _get(record, PRE_TABLE, ms_pre_label(op), TEST_ACC), _get(record, PRE_TABLE, CONTROL, TEST_ACC)
    stages = []
    for metric, name in ((RAW, "raw"), (RECAL, "BN re-estimated")):
        ms_post, ctl_post = _get(record, table, MS, metric), _get(record, table, CONTROL, metric)
        if ms_post and ctl_post:
            stages.append((name, ms_post, ctl_post))
    if not (ms_pre and ctl_pre and stages):
        return None

    def drops(pre: Measurement, post: Measurement, seeds: list[int]) -> list[float]:
        return [a - b for a, b in zip(pre.at(seeds), post.at(seeds), strict=True)]

    def evaluate(seeds: list[int]) -> list[Test]:
        return [
            Test(f"control's drop − MaskSparsity's drop, {name}",
                 paired_difference(drops(ctl_pre, ctl_post, seeds), drops(ms_pre, ms_post, seeds)), margin=MARGIN_PP,
                 unit="pp")
            for name, ms_post, ctl_post in stages
        ]  # fmt: skip

    zero = _get(record, table, MS, MASKED_SMALL)
    zero_value = zero.mean if zero else float("nan")
    regime = Precondition(f"MaskSparsity's masked γ ≈ 0 (>= {MASKED_ZERO_MIN:g}% below the prune threshold)",
                          f"{zero_value:.1f}%", zero is not None and zero_value >= MASKED_ZERO_MIN)  # fmt: skip
    seeds = record.seeds
    text = "; ".join(
        f"{name}: MaskSparsity drops {mean_ci(drops(ms_pre, ms_post, seeds)).estimate:.1f} points (to "
        f"{_fmt(ms_post)}), the control {mean_ci(drops(ctl_pre, ctl_post, seeds)).estimate:.1f} (to {_fmt(ctl_post)})"
        for name, ms_post, ctl_post in stages
    )
    return ClaimResult(
        f"C2{suffix}",
        f"MaskSparsity loses less accuracy right after pruning than the same epochs without the penalty ({op})",
        PAPER_DROP,
        f"test accuracy before → right after pruning with the same mask, {text}. "
        + _rule(
            f"the control's drop exceeds MaskSparsity's by more than {MARGIN_PP:g} point, raw and with BN "
            "statistics re-estimated"
        ),
        _judge(record, evaluate, Precondition.all(_learnt(record), _same_flops(record), regime)),
    )


# ----------------------------------------------------------------------------------------------------
# C3: at the same FLOPs, matches or beats the best Network Slimming (λ picked on validation)


def best_slimming(record: RunRecord, op: str, seeds: Sequence[int]) -> tuple[str, bool] | None:
    """The Network Slimming arm with the highest mean validation accuracy after fine-tuning over ``seeds``, and
    whether it was picked on validation (True) or, without a validation split, on the test set (False)."""
    table = op_table(op)
    arms = [m.setting for m in record.tables().get(table, []) if m.metric == FT and m.setting.startswith(
        "Network Slimming")]  # fmt: skip
    if not arms:
        return None
    val = {a: m for a in arms if (m := _get(record, table, a, VAL_FT))}
    if len(val) == len(arms):
        return max(arms, key=lambda a: mean_ci(val[a].at(seeds)).estimate), True
    return max(arms, key=lambda a: mean_ci(record.get(table, a, FT).at(seeds)).estimate), False


def _c3(record: RunRecord, op: str, suffix: str) -> ClaimResult | None:
    table = op_table(op)
    ms = _get(record, table, MS, FT)
    picked = best_slimming(record, op, record.seeds)
    if not (ms and picked):
        return None
    best, on_val = picked

    def evaluate(seeds: list[int]) -> list[Test]:
        arm, _ = best_slimming(record, op, seeds)  # picked again on each half's own seeds
        return [Test(f"MaskSparsity − {arm} (best on validation), after fine-tuning",
                     _diff(ms, record.get(table, arm, FT), seeds), margin=-MARGIN_PP, unit="pp")]  # fmt: skip

    arms = [m for m in record.tables()[table] if m.metric == FT and m.setting.startswith("Network Slimming")]
    val = Precondition("Network Slimming's λ picked on a validation split held out of the training set",
                       "yes" if on_val else "no validation split (picked on the test set)", on_val)  # fmt: skip
    flops = {m.setting: m for m in record.tables()[table] if m.metric == FLOPS}
    flops_text = ", ".join(f"{a} {flops[a].mean:.1f}%" for a in (MS, *(m.setting for m in arms)) if a in flops)
    return ClaimResult(
        f"C3{suffix}",
        f"At the same FLOPs, MaskSparsity matches or beats global sparsity (Network Slimming), {op}",
        PAPER_TABLES,
        f"test accuracy after fine-tuning: MaskSparsity {_fmt(ms)}; Network Slimming, each λ pruned with a mask from "
        f"its own γ: "
        + ", ".join(f"{m.setting} {_fmt(m)}" for m in arms)
        + f"; best on validation over all seeds: {best}. FLOPs removed: {flops_text}. "
        + _rule(
            f"matches = MaskSparsity not more than {MARGIN_PP:g} point below the best Network Slimming "
            "(non-inferiority); λ is picked again within each half"
        ),
        _judge(record, evaluate, Precondition.all(_learnt(record), _same_flops(record), val)),
    )


# ----------------------------------------------------------------------------------------------------
# C4: the penalty itself helps: MaskSparsity beats the control pruned with the same mask


def _c4(record: RunRecord, op: str, suffix: str) -> ClaimResult | None:
    table = op_table(op)
    ms, ctl = _get(record, table, MS, FT), _get(record, table, CONTROL, FT)
    if not (ms and ctl):
        return None

    def evaluate(seeds: list[int]) -> list[Test]:
        return [Test("MaskSparsity − control, after fine-tuning", _diff(ms, ctl, seeds), margin=0.0, unit="pp")]

    return ClaimResult(
        f"C4{suffix}",
        f"MaskSparsity beats the same epochs without the penalty, pruned with the same mask and fine-tuned ({op})",
        PAPER_METHOD,
        f"test accuracy after fine-tuning: MaskSparsity {_fmt(ms)}, control {_fmt(ctl)} (same baseline, epochs, mask "
        "and fine-tuning; only the penalty differs). " + _rule("beats = the whole interval above 0 (superiority)"),
        _judge(record, evaluate, Precondition.all(_learnt(record), _same_flops(record))),
    )


# ----------------------------------------------------------------------------------------------------
# C5: no top-1 loss vs the unpruned model at the abstract's ResNet-110 point


def _c5(record: RunRecord, ops: list[str]) -> ClaimResult | None:
    ref = _get(record, REF_TABLE, DENSE_REF, FT)

    def reduction(op: str):  # the official counter's FLOPs reduction where the run counted it (prune.flops_counter)
        return _get(record, op_table(op), MS, FLOPS_OFFICIAL) or _get(record, op_table(op), MS, FLOPS)

    candidates = [(op, m, f) for op in ops if (m := _get(record, op_table(op), MS, FT)) and (f := reduction(op))]
    if not (ref and candidates):
        return None
    op, ms, flops = min(candidates, key=lambda c: abs(c[2].mean - ABSTRACT_OP))

    def evaluate(seeds: list[int]) -> list[Test]:
        return [Test(f"MaskSparsity ({op}) − dense reference, test accuracy", _diff(ms, ref, seeds),
                     margin=-MARGIN_PP, unit="pp")]  # fmt: skip

    near = Precondition(f"our operating point within {ABSTRACT_OP_TOLERANCE:g} points of the abstract's "
                        f"{ABSTRACT_OP:g}% FLOPs reduction", f"{flops.mean:.1f}%",
                        abs(flops.mean - ABSTRACT_OP) <= ABSTRACT_OP_TOLERANCE)  # fmt: skip
    base = _get(record, PRE_TABLE, DENSE, TEST_ACC)
    return ClaimResult(
        "C5",
        f"No top-1 loss vs the unpruned model at {op} (the abstract's ResNet-110 point)",
        PAPER_NO_LOSS,
        f"MaskSparsity pruned and fine-tuned {_fmt(ms)}; the unpruned reference with the same total epochs (the "
        f"control, fine-tuned unpruned for the fine-tuning epochs) {_fmt(ref)}; the baseline before any sparsity "
        f"phase {_fmt(base)} (test subset). A different, much smaller network and dataset. "
        + _rule(f"no loss = not more than {MARGIN_PP:g} point below the reference (non-inferiority)"),
        _judge(record, evaluate, Precondition.all(_learnt(record), near)),
    )
