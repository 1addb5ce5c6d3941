"""The claim rules on fixed synthetic records: reproduced, not reproduced, partly reproduced, inconclusive and
not testable cases, replication halves, and Network Slimming's λ picked on validation (never the test set)."""

from __future__ import annotations

import pytest

from common.results import RunRecord
from common.stats import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED
from masksparsity import claims as C

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)

SEEDS = [0, 1, 2, 3, 4, 5]
JITTER = [0.10, -0.20, 0.15, -0.05, 0.00, 0.10]
"""Seed-to-seed spread of the synthetic arms: small, so intervals are narrow unless a test widens them."""
OPS = ("50% FLOPs ↓", "63% FLOPs ↓")
NS_LO, NS_HI = C.ns_label(0.01), C.ns_label(0.02)
CONFIG = {"sparsity": {"mask_lambda": 0.02}, "prune": {"rule": "mask"}}


def values(mean: float, jitter: list[float] | None = None) -> list[float]:
    return [mean + j for j in (JITTER if jitter is None else jitter)]


def scenario() -> dict[tuple[str, str, str], list[float]]:
    """Every claim holds clearly: the arms as in the paper, with seed-to-seed jitter of 0.1-0.2 points."""
    cells = {
        (C.PRE_TABLE, C.DENSE, C.TEST_ACC): values(74.0),
        (C.PRE_TABLE, C.CONTROL, C.TRAIN_ACC): values(77.5),
        (C.PRE_TABLE, C.CONTROL, C.TEST_ACC): values(77.0),
        (C.PRE_TABLE, NS_HI, C.TRAIN_ACC): values(72.5, JITTER[::-1]),
        (C.PRE_TABLE, NS_LO, C.TRAIN_ACC): values(76.0),
        (C.REF_TABLE, C.DENSE_REF, C.FT): values(77.2),
    }
    for op, flops in zip(OPS, (50.5, 63.2), strict=True):
        t = C.op_table(op)
        cells |= {
            (C.PRE_TABLE, C.ms_pre_label(op), C.TRAIN_ACC): values(77.2, JITTER[::-1]),
            (C.PRE_TABLE, C.ms_pre_label(op), C.TEST_ACC): values(76.8),
            (t, C.MS, C.RAW): values(75.0, JITTER[::-1]),
            (t, C.MS, C.RECAL): values(76.5),
            (t, C.CONTROL, C.RAW): values(40.0),
            (t, C.CONTROL, C.RECAL): values(64.0, JITTER[::-1]),
            (t, C.MS, C.FT): values(77.6),
            (t, C.CONTROL, C.FT): values(76.0, JITTER[::-1]),
            (t, NS_LO, C.FT): values(75.5, JITTER[::-1]),
            (t, NS_LO, C.VAL_FT): values(76.0),
            (t, NS_HI, C.FT): values(71.0),
            (t, NS_HI, C.VAL_FT): values(72.0),
            (t, C.MS, C.MASKED_SMALL): values(99.0, [0.0] * 6),
            (t, C.MS, C.FLOPS): values(flops, [0.0] * 6),
            (t, NS_LO, C.FLOPS): values(flops + 0.1, [0.0] * 6),
        }
    return cells


def record(cells: dict, config: dict | None = None, seeds: list[int] = SEEDS) -> RunRecord:
    rec = RunRecord(paper="masksparsity", preset="test", command="", config=config or CONFIG, config_hash="",
                    seeds=list(seeds), provenance={})  # fmt: skip
    for (table, setting, metric), v in cells.items():
        rec.add(table, setting, metric, v[: len(seeds)], seeds=list(seeds))
    return rec


def verdicts(rec: RunRecord) -> dict[str, str]:
    return {c.id: c.judgement.verdict for c in C.judge(rec)}


def claim(rec: RunRecord, cid: str) -> C.ClaimResult:
    return next(c for c in C.judge(rec) if c.id == cid)


def test_every_claim_reproduced_in_the_clear_case():
    rec = record(scenario())
    assert verdicts(rec) == {cid: REPRODUCED for cid in ("C1", "C2a", "C2b", "C3a", "C3b", "C4a", "C4b", "C5")}
    added = C.add_claims(rec)
    assert [c.id for c in rec.claims] == [c.id for c in added]
    c4 = rec.claims[[c.id for c in rec.claims].index("C4a")]
    assert c4.n == 6 and c4.verdict_a == c4.verdict_b == REPRODUCED and "Rule" in c4.our_evidence
    assert c4.effect.startswith("MaskSparsity − control, after fine-tuning: +1.60 [")


def test_c1_is_partly_reproduced_when_masksparsity_underfits_too():
    cells = scenario()
    for op in OPS:  # MaskSparsity 3 points below the control: it under-fits as well
        cells[(C.PRE_TABLE, C.ms_pre_label(op), C.TRAIN_ACC)] = values(74.5)
    assert claim(record(cells), "C1").judgement.verdict == PARTLY


def test_c1_not_reproduced_when_nothing_underfits_the_way_the_paper_says():
    cells = scenario()
    cells[(C.PRE_TABLE, NS_HI, C.TRAIN_ACC)] = values(78.5)  # Network Slimming above the control
    for op in OPS:
        cells[(C.PRE_TABLE, C.ms_pre_label(op), C.TRAIN_ACC)] = values(75.0)
    assert claim(record(cells), "C1").judgement.verdict == NOT_REPRODUCED


def test_c2_needs_a_drop_smaller_by_more_than_the_margin_and_the_masked_gamma_at_zero():
    cells = scenario()
    t = C.op_table(OPS[0])
    cells[(t, C.CONTROL, C.RECAL)] = values(76.3)  # control loses only 0.7 points with BN re-estimated
    c2 = claim(record(cells), "C2a")
    assert [x.verdict for x in c2.judgement.tests] == [REPRODUCED, NOT_REPRODUCED]
    assert c2.judgement.verdict == PARTLY
    cells = scenario()
    cells[(t, C.MS, C.MASKED_SMALL)] = values(40.0, [0.0] * 6)  # the penalty did not reach zero: other regime
    c2 = claim(record(cells), "C2a")
    assert c2.judgement.verdict == NOT_TESTABLE and "40.0%" in c2.judgement.precondition.value


def test_c3_picks_lambda_on_validation_not_on_test():
    cells = scenario()
    t = C.op_table(OPS[0])
    cells[(t, NS_HI, C.FT)] = values(78.5)  # best on the test set, but not on validation
    c3 = claim(record(cells), "C3a")
    assert NS_LO in c3.judgement.tests[0].label and c3.judgement.verdict == REPRODUCED
    assert "best on validation over all seeds: " + NS_LO in c3.our_evidence


def test_c3_picks_lambda_again_within_each_half():
    cells = scenario()
    t = C.op_table(OPS[0])
    cells[(t, NS_HI, C.VAL_FT)] = [70.0, 70.0, 70.0, 80.0, 80.0, 80.0]  # best on validation in half B only
    j = claim(record(cells), "C3a").judgement
    assert NS_LO in j.tests_a[0].label and NS_HI in j.tests_b[0].label


def test_c3_not_reproduced_when_the_best_slimming_is_clearly_better():
    cells = scenario()
    t = C.op_table(OPS[1])
    cells[(t, NS_LO, C.FT)] = values(80.0, JITTER[::-1])
    assert claim(record(cells), "C3b").judgement.verdict == NOT_REPRODUCED


def test_c3_not_testable_without_a_validation_split_or_with_per_arm_thresholds():
    cells = {k: v for k, v in scenario().items() if k[2] != C.VAL_FT}
    c3 = claim(record(cells), "C3a")
    assert c3.judgement.verdict == NOT_TESTABLE and "picked on the test set" in c3.judgement.precondition.value
    threshold = {"sparsity": {"mask_lambda": 0.02}, "prune": {"rule": "threshold"}}
    v = verdicts(record(scenario(), config=threshold))
    assert v["C2a"] == v["C3a"] == v["C4a"] == NOT_TESTABLE and v["C1"] == REPRODUCED


def test_c4_inconclusive_when_the_interval_spans_zero():
    cells = scenario()
    t = C.op_table(OPS[0])
    cells[(t, C.MS, C.FT)] = [76.0 + d for d in (1.5, -1.2, 0.9, -0.8, 1.1, -0.6)]
    assert claim(record(cells), "C4a").judgement.verdict == INCONCLUSIVE


def test_c4_not_reproduced_when_the_control_is_better():
    cells = scenario()
    cells[(C.op_table(OPS[1]), C.MS, C.FT)] = values(74.0)
    assert claim(record(cells), "C4b").judgement.verdict == NOT_REPRODUCED


def test_contradicting_halves_make_a_claim_inconclusive():
    cells = scenario()
    t = C.op_table(OPS[0])
    cells[(t, C.CONTROL, C.FT)] = [76.0] * 6
    cells[(t, C.MS, C.FT)] = [79.0, 79.1, 78.9, 74.0, 74.1, 73.9]  # half A clearly better, half B clearly worse
    j = claim(record(cells), "C4a").judgement
    assert (j.verdict_a, j.verdict_b, j.verdict) == (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


def test_c5_compares_with_the_reference_of_equal_epochs_and_needs_the_63_percent_point():
    cells = scenario()
    cells[(C.REF_TABLE, C.DENSE_REF, C.FT)] = values(79.5)  # the pruned model is 1.9 points below it
    c5 = claim(record(cells), "C5")
    assert c5.judgement.verdict == NOT_REPRODUCED and "63% FLOPs ↓" in c5.claim
    cells = {k: v for k, v in scenario().items() if OPS[1] not in k[0] and OPS[1] not in k[1]}
    c5 = claim(record(cells), "C5")  # only the 50% point: far from the abstract's 63.03%
    assert c5.judgement.verdict == NOT_TESTABLE and c5.judgement.precondition.value == "50.5%"


def test_nothing_is_testable_when_the_baseline_did_not_learn():
    cells = scenario()
    cells[(C.PRE_TABLE, C.DENSE, C.TEST_ACC)] = values(12.0)
    assert set(verdicts(record(cells)).values()) == {NOT_TESTABLE}


def test_claims_without_their_arms_are_left_out_and_one_seed_is_inconclusive():
    cells = {k: v for k, v in scenario().items() if k[1] != C.CONTROL}
    assert set(verdicts(record(cells))) == {"C3a", "C3b", "C5"}
    one = verdicts(record(scenario(), seeds=[0]))
    assert set(one.values()) == {INCONCLUSIVE}  # no interval from one seed


@pytest.mark.parametrize("op", OPS)
def test_operating_points_are_read_from_the_tables(op):
    assert op in C.operating_points(record(scenario()))


def test_a_combined_precondition_says_which_part_fails():
    cells = scenario()
    cells[(C.PRE_TABLE, C.DENSE, C.TEST_ACC)] = values(12.0)
    text = claim(record(cells), "C4a").judgement.precondition.describe()
    assert text == ("arms pruned to the same FLOPs target (prune.rule=mask): prune.rule=mask; dense baseline test "
                    "accuracy >= 50% (chance 10%): 12.0% (fails)")  # fmt: skip
    text = claim(record(scenario()), "C4a").judgement.precondition.describe()
    assert text.endswith("prune.rule=mask (holds)") and "fails" not in text
