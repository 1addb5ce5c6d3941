"""common.stats: intervals against scipy's own tests, the verdict rules, replication on two halves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from common import stats
from common.results import RunRecord, claims_table, render_record
from common.stats import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
    Effect,
    Precondition,
    Test,
    combine,
    replicate,
)

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)

# Interval arithmetic in float64 over a handful of values: agreement to ~1e-12 relative.
TOL = 1e-10


def test_paired_difference_matches_scipy_ttest_rel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(75, 1, 6), rng.normal(74, 1, 6)
    e = stats.paired_difference(a, b)
    ci = st.ttest_rel(a, b).confidence_interval(0.95)
    assert e.estimate == pytest.approx(float(np.mean(a - b)), abs=TOL)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=TOL)
    assert e.n == 6 and e.method == "paired t"


def test_welch_difference_matches_scipy_ttest_ind():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 5), rng.normal(0, 3, 7)
    e = stats.difference(a, b)
    ci = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=TOL)
    assert e.n == 5 and e.method == "Welch t"


def test_mean_ci_closed_form():
    # [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302652729911275
    e = stats.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (e.low, e.high) == pytest.approx((2 - half, 2 + half), abs=TOL)


def test_single_value_has_no_interval_and_is_inconclusive():
    e = stats.mean_ci([5.0])
    assert math.isinf(e.low) and math.isinf(e.high) and e.n == 1
    assert Test("x", e, margin=0.0).verdict == INCONCLUSIVE
    assert "interval n/a" in e.text()
    assert e.to_json()["low"] is None


def test_paired_difference_refuses_unpaired_lengths():
    with pytest.raises(ValueError, match="pair them"):
        stats.paired_difference([1, 2, 3], [1, 2])


def test_zero_spread_gives_a_point_interval():
    e = stats.paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (e.low, e.estimate, e.high) == (1.0, 1.0, 1.0)
    assert Test("x", e, margin=0.5).verdict == REPRODUCED
    assert Test("x", e, margin=1.0).verdict == INCONCLUSIVE  # the effect sits on the margin


@pytest.mark.parametrize(
    ("low", "high", "higher", "expected"),
    [
        (0.5, 2.0, True, REPRODUCED),
        (-2.0, -0.5, True, NOT_REPRODUCED),
        (-0.5, 2.0, True, INCONCLUSIVE),
        (-2.0, -0.5, False, REPRODUCED),  # "no more than": below the margin
        (0.5, 2.0, False, NOT_REPRODUCED),
    ],
)
def test_verdict_rule(low, high, higher, expected):
    assert Test("x", Effect((low + high) / 2, low, high, 5, "paired t"), 0.0, higher).verdict == expected


def test_margin_shifts_the_decision():
    e = Effect(1.0, 0.4, 1.6, 5, "paired t")
    assert Test("x", e, margin=0.0).verdict == REPRODUCED
    assert Test("x", e, margin=1.0).verdict == INCONCLUSIVE
    assert Test("x", e, margin=2.0).verdict == NOT_REPRODUCED


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([REPRODUCED, REPRODUCED], REPRODUCED),
        ([NOT_REPRODUCED, NOT_REPRODUCED], NOT_REPRODUCED),
        ([REPRODUCED, NOT_REPRODUCED], PARTLY),
        ([REPRODUCED, INCONCLUSIVE], INCONCLUSIVE),
        ([NOT_REPRODUCED, INCONCLUSIVE], NOT_REPRODUCED),
        ([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE], PARTLY),
        ([PARTLY], PARTLY),
        ([REPRODUCED, NOT_TESTABLE], NOT_TESTABLE),
    ],
)
def test_combine(parts, expected):
    assert combine(parts) == expected


def test_combine_rejects_unknown_and_empty():
    with pytest.raises(ValueError):
        combine([])
    with pytest.raises(ValueError, match="unknown"):
        combine(["sort of"])


def test_split_halves_are_disjoint_and_ordered():
    assert stats.split_halves([4, 5, 6, 7, 8, 9]) == ([4, 5, 6], [7, 8, 9])
    assert stats.split_halves([0, 1, 2, 3, 4]) == ([0, 1, 2], [3, 4])
    with pytest.raises(ValueError, match="distinct"):
        stats.split_halves([0, 0])


def _paired_claim(a: dict[int, float], b: dict[int, float], margin: float = 0.0):
    def evaluate(seeds):
        return [Test("a - b", stats.paired_difference([a[s] for s in seeds], [b[s] for s in seeds]), margin)]

    return evaluate


def test_replicate_consistent_effect_is_reproduced_in_both_halves():
    seeds = list(range(8))
    a = {s: 76.0 + 0.1 * (s % 3) for s in seeds}
    b = {s: 74.0 + 0.1 * ((s + 1) % 3) for s in seeds}
    j = replicate(_paired_claim(a, b), seeds)
    assert (j.verdict_a, j.verdict_b, j.verdict_all, j.verdict) == (REPRODUCED,) * 4
    assert j.seeds_a == [0, 1, 2, 3] and j.seeds_b == [4, 5, 6, 7] and j.n == 8
    assert j.contradiction == ""


def test_replicate_halves_pointing_opposite_ways_make_the_claim_inconclusive():
    # half A: a beats b by ~2; half B: b beats a by ~0.5, both tight. All seeds together: reproduced (+0.75
    # with a tight-enough interval), but half B's estimate is on the wrong side, so the combined verdict is not.
    seeds = list(range(12))
    a = {s: (76.0 if s < 6 else 74.0) + 0.01 * (s % 2) for s in seeds}
    b = {s: (74.0 if s < 6 else 74.5) + 0.01 * ((s + 1) % 2) for s in seeds}
    j = replicate(_paired_claim(a, b), seeds)
    assert j.verdict_a == REPRODUCED and j.verdict_b == NOT_REPRODUCED
    assert j.verdict == INCONCLUSIVE and "half A is reproduced, half B is not reproduced" in j.contradiction


def test_replicate_failed_precondition_is_not_testable_everywhere():
    seeds = [0, 1, 2, 3]
    a, b = {s: 2.0 + s for s in seeds}, {s: float(s) for s in seeds}
    pre = Precondition("dense accuracy >= 40%", "12.0%", holds=False)
    j = replicate(_paired_claim(a, b), seeds, precondition=pre)
    assert (j.verdict_a, j.verdict_b, j.verdict) == (NOT_TESTABLE,) * 3
    assert pre.describe() == "dense accuracy >= 40%: 12.0% (fails)"


def test_replicate_single_seed_has_no_halves():
    j = replicate(lambda seeds: [Test("x", stats.mean_ci([1.0, 1.1, 1.2]), 0.0)], [0])
    assert j.verdict_a == "" and j.verdict_b == "" and j.verdict == REPRODUCED


def test_record_claim_carries_the_judgement_and_round_trips():
    seeds = [0, 1, 2, 3, 4, 5]
    a = {s: 76.0 + 0.2 * (s % 3) for s in seeds}
    b = {s: 74.0 + 0.1 * (s % 2) for s in seeds}
    record = RunRecord(paper="p", preset="smoke", command="c", config={}, config_hash="h", seeds=seeds,
                       provenance={})  # fmt: skip
    j = replicate(_paired_claim(a, b), seeds, Precondition("dense trained", "80%", True))
    c = record.claim("A beats B", paper_evidence="Table 1", our_evidence="see effect", judgement=j, id="C1")
    assert c.verdict == REPRODUCED and c.n == 6 and c.verdict_a == REPRODUCED
    assert c.precondition == "dense trained: 80% (holds)" and "a - b: +" in c.effect
    back = RunRecord.from_json(record.to_json())
    assert back.claims[0] == c
    table = claims_table(back.claims)
    assert "| **C1** A beats B |" in table and "reproduced / reproduced" in table
    assert "How verdicts are decided" in render_record(back)
    with pytest.raises(ValueError, match="used twice"):
        record.claim("again", paper_evidence="", our_evidence="", judgement=j, id="C1")
    with pytest.raises(ValueError, match="either"):
        record.claim("neither", paper_evidence="", our_evidence="")


def test_measurement_at_selects_by_seed():
    record = RunRecord(paper="p", preset="smoke", command="c", config={}, config_hash="h", seeds=[3, 5, 7],
                       provenance={})  # fmt: skip
    m = record.add("t", "s", "acc", [1.0, 2.0, 3.0], seeds=[3, 5, 7])
    assert m.at([7, 3]) == [3.0, 1.0]
    with pytest.raises(KeyError, match="not among"):
        m.at([4])
