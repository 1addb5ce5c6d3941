"""The claim rules (three_regime/claims.py) on fixed synthetic records: each verdict from numbers built for it.

A record here is what ``reproduce.run`` writes, with the per-seed grids and the case-study measurements chosen
by hand: a clear effect with little spread across seeds (reproduced), the opposite effect (not reproduced), an
effect smaller than its spread (inconclusive), and a failed precondition (not testable here).
"""

from __future__ import annotations

import numpy as np
import pytest

from common.results import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED, RunRecord
from three_regime import claims, method
from three_regime.config import RegimeConfig

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)

SEEDS = [0, 1, 2, 3]
TEMPS = [20.0, 60.0]  # hot (before the decay at epoch 30 of 60), cold
DENS = [1.0, 2.0, 20.0, 50.0]
JITTER = np.array([-0.3, 0.1, 0.3, -0.1])  # per seed, mean 0: the spread of an effect across dense seeds


def grid_of(hot_low, cold_low, hot_high, cold_high, spread=0.0):
    """A [seed, temperature, density] grid: the value of each (temperature, density group), plus spread x JITTER."""
    base = np.array([[hot_low, hot_low, hot_high, hot_high], [cold_low, cold_low, cold_high, cold_high]], float)
    return base[None] + spread * JITTER[:, None, None] * np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])[None]


def make_record(mc=None, cka=None, test_error=None, dense_error=None, case=None, temps=TEMPS, densities=DENS,
                seeds=SEEDS, min_accuracy=75.0, cka_margin=0.01, temperature="training_epochs"):  # fmt: skip
    """A record with the fields claims.add_claims reads; unspecified grids show no effect at all."""
    s, t, d = len(seeds), len(temps), len(densities)
    mc = np.zeros((s, t, d)) if mc is None else np.asarray(mc, float)
    cka = np.full((s, t, d), 0.99) if cka is None else np.asarray(cka, float)
    test_error = np.full((s, t, d), 20.0) if test_error is None else np.asarray(test_error, float)
    dense_error = np.full((s, t), 15.0) if dense_error is None else np.asarray(dense_error, float)
    regime_cfg = RegimeConfig(mc_barrier=0.02, cka_split="column_max", cka_margin=cka_margin)
    mean = {"test_error": test_error.mean(0), "mc": mc.mean(0), "cka": cka.mean(0)}
    record = RunRecord(
        paper="three_regime", preset="test", command="", config_hash="0", seeds=list(seeds), provenance={},
        config={"regime": {"mc_barrier": 0.02, "cka_split": "column_max", "cka_margin": cka_margin,
                           "cka_threshold": 0.95},
                "claims": {"min_dense_accuracy": min_accuracy},
                "train": {"epochs": 60, "iterations": 0, "lr_decay_at": [0.5, 0.75]},
                "grid": {"temperature": temperature}},
    )  # fmt: skip
    case = case or {}
    studies = {}
    for name in ("direction", "selection"):
        rule, base, oracle = case.get(name, ([20.0] * s, [20.0] * s, [20.0] * s))
        studies[name] = [{r: {"mean": v} for r, v in zip(claims.RULES, values, strict=True)}
                         for values in zip(rule, base, oracle, strict=True)]  # fmt: skip
        for r, values in zip(claims.RULES, (rule, base, oracle), strict=True):
            record.add(claims.CASE_TABLES[name], r, claims.CASE_METRIC, values, seeds=list(seeds), unit="%")
    studies["sam"] = []
    record.extra = {
        "temperature": temperature, "temps": list(temps), "densities": list(densities),
        "per_seed": {"test_error": test_error.tolist(), "mc": mc.tolist(), "cka": cka.tolist(),
                     "dense_test_error": dense_error.tolist()},
        "mean": {k: v.tolist() for k, v in mean.items()},
        "regimes": method.classify_regimes(mean["mc"], mean["cka"], regime_cfg).tolist(),
        "case_studies": studies,
    }  # fmt: skip
    claims.add_claims(record)
    return record


def verdict(record, cid):
    (claim,) = [c for c in record.claims if c.id == cid]
    return claim


# ----------------------------------------------------------------------------------------------------
# C1: Regime I at low density and low temperature


def test_c1_reproduced_when_barriers_are_deep_cold_and_low_density_only():
    mc = grid_of(hot_low=-0.10, cold_low=-0.20, hot_high=0.0, cold_high=0.0, spread=0.02)
    c = verdict(make_record(mc=mc), "C1")
    assert c.verdict == REPRODUCED and c.n == 4
    assert c.verdict_a and c.verdict_b and c.stats["seeds_a"] == [0, 1] and c.stats["seeds_b"] == [2, 3]
    cold_minus_hot = c.stats["tests"][2]["effect"]
    assert cold_minus_hot["estimate"] == pytest.approx(-0.10) and cold_minus_hot["high"] < -0.02
    assert "holds" in c.precondition and "excluded none" in c.precondition


def test_c1_partly_when_the_barrier_does_not_deepen_with_the_temperature():
    # the 4,000-example mini: barrier at low density, none at high, the same depth hot and cold
    mc = grid_of(hot_low=-0.15, cold_low=-0.15, hot_high=0.0, cold_high=0.0, spread=0.002)
    c = verdict(make_record(mc=mc), "C1")
    assert [t["verdict"] for t in c.stats["tests"]] == [REPRODUCED, REPRODUCED, NOT_REPRODUCED]
    assert c.verdict == PARTLY


def test_c1_not_reproduced_when_no_part_holds():
    mc = grid_of(hot_low=0.0, cold_low=0.0, hot_high=-0.2, cold_high=-0.2, spread=0.002)
    assert verdict(make_record(mc=mc), "C1").verdict == NOT_REPRODUCED


def test_c1_inconclusive_when_the_temperature_effect_is_within_the_seed_spread():
    mc = grid_of(hot_low=-0.10, cold_low=-0.14, hot_high=0.0, cold_high=0.0, spread=0.2)
    c = verdict(make_record(mc=mc), "C1")
    assert c.stats["tests"][2]["verdict"] == INCONCLUSIVE
    assert c.verdict == INCONCLUSIVE


def test_under_trained_checkpoints_are_excluded_and_named():
    """The issue's case: the hot half held a checkpoint with 36% dense error. It leaves C1-C3; they are judged on
    the trained ones, and the precondition says which was excluded and its accuracy."""
    temps = [10.0, 20.0, 60.0]
    mc = np.zeros((4, 3, 4))
    mc[:, 0, :2] = -0.5  # the under-trained checkpoint has the deepest barrier: it would flip the temperature part
    mc[:, 1, :2] = -0.10 + 0.01 * JITTER[:, None]
    mc[:, 2, :2] = -0.20 - 0.01 * JITTER[:, None]
    dense_error = np.tile([36.0, 20.0, 8.0], (4, 1))
    record = make_record(mc=mc, temps=temps, dense_error=dense_error)
    c = verdict(record, "C1")
    assert "excluded 10 (64.0%)" in c.precondition and c.verdict == REPRODUCED
    assert c.stats["tests"][2]["effect"]["estimate"] == pytest.approx(-0.10)
    # without the minimum, the same record's temperature part reverses
    assert verdict(make_record(mc=mc, temps=temps, dense_error=dense_error, min_accuracy=0.0), "C1").verdict == PARTLY


def test_not_testable_when_no_trained_hot_checkpoint_is_left():
    dense_error = np.tile([40.0, 8.0], (4, 1))  # the only hot checkpoint is under-trained
    mc = grid_of(hot_low=-0.10, cold_low=-0.20, hot_high=0.0, cold_high=0.0, spread=0.02)
    record = make_record(mc=mc, dense_error=dense_error)
    for cid in ("C1", "C2"):
        c = verdict(record, cid)
        assert c.verdict == NOT_TESTABLE and "excluded 20 (60.0%)" in c.our_evidence
    assert verdict(record, "C3").verdict != NOT_TESTABLE  # C3 needs only one trained checkpoint


# ----------------------------------------------------------------------------------------------------
# C2: the dichotomy in test error


@pytest.mark.parametrize(
    ("hot_low", "hot_high", "spread", "expected"),
    [
        (-1.5, +1.0, 0.3, REPRODUCED),  # hotter better at low density, worse at high: both intervals clear of 0
        (+1.5, -1.0, 0.3, NOT_REPRODUCED),  # the opposite
        (-1.5, -1.0, 0.3, PARTLY),  # hotter better everywhere
        (-0.2, +0.2, 3.0, INCONCLUSIVE),  # effects far inside the seed spread
    ],
)
def test_c2_dichotomy(hot_low, hot_high, spread, expected):
    te = grid_of(hot_low=30 + hot_low / 2, cold_low=30 - hot_low / 2, hot_high=10 + hot_high / 2,
                 cold_high=10 - hot_high / 2, spread=spread / 2)  # fmt: skip
    c = verdict(make_record(test_error=te), "C2")
    assert c.verdict == expected
    assert c.stats["tests"][0]["effect"]["estimate"] == pytest.approx(hot_low)
    assert c.stats["tests"][0]["effect"]["method"] == "paired t"


def test_halves_that_contradict_make_the_claim_inconclusive():
    """Seeds 0, 1 (half A) show the dichotomy, seeds 2, 3 (half B) the opposite, each consistently: the halves
    contradict each other, so the claim is inconclusive whatever all four seeds say."""
    te = np.full((4, 2, 4), 20.0)
    low_effect = np.array([-4.0, -4.2, 1.0, 1.02])  # hot - cold at low density, per seed
    high_effect = np.array([3.0, 3.2, -1.0, -1.02])
    te[:, 0, :2] += low_effect[:, None]
    te[:, 0, 2:] += high_effect[:, None]
    c = verdict(make_record(test_error=te), "C2")
    assert (c.verdict_a, c.verdict_b) == (REPRODUCED, NOT_REPRODUCED)
    assert c.stats["contradiction"] == "half A is reproduced, half B is not reproduced"
    assert c.verdict == INCONCLUSIVE


# ----------------------------------------------------------------------------------------------------
# C3: CKA rises with density, by more than the margin


@pytest.mark.parametrize(
    ("rise", "expected"),
    [(0.05, REPRODUCED), (0.002, NOT_REPRODUCED), (0.0105, INCONCLUSIVE)],
)
def test_c3_cka_margin(rise, expected):
    cka = grid_of(hot_low=0.95 - rise, cold_low=0.95 - rise, hot_high=0.95, cold_high=0.95, spread=0.0)
    cka[:, :, :2] += 0.004 * JITTER[:, None, None]
    c = verdict(make_record(cka=cka), "C3")
    assert c.verdict == expected
    assert c.stats["tests"][0]["margin"] == 0.01 and c.stats["tests"][0]["effect"]["estimate"] == pytest.approx(rise)


# ----------------------------------------------------------------------------------------------------
# C4, C5: the case studies, testable only where the oracle beats the baseline


def _case(rule_minus_base, headroom, spread):
    base = 25.0 + np.array([0.0, 0.5, -0.5, 0.2])
    rule = base + rule_minus_base + spread * JITTER
    oracle = base - headroom - 0.05 * np.abs(JITTER)
    return rule.tolist(), base.tolist(), oracle.tolist()


@pytest.mark.parametrize(
    ("rule_minus_base", "headroom", "spread", "expected"),
    [
        (-0.8, 1.0, 0.1, REPRODUCED),
        (+0.8, 1.0, 0.1, NOT_REPRODUCED),
        (-0.1, 1.0, 1.0, INCONCLUSIVE),  # the situation: a gain well inside the seed noise
    ],
)
def test_case_study_verdicts(rule_minus_base, headroom, spread, expected):
    record = make_record(case={"direction": _case(rule_minus_base, headroom, spread)})
    c = verdict(record, "C4")
    assert c.verdict == expected and "(holds)" in c.precondition
    assert c.stats["tests"][0]["effect"]["estimate"] == pytest.approx(rule_minus_base)


def test_case_study_without_headroom_is_not_testable():
    base = [25.0, 25.5, 24.5, 25.2]
    record = make_record(case={"selection": ([b + 0.5 for b in base], base, base)})  # the oracle is the baseline
    c = verdict(record, "C5")
    assert c.verdict == NOT_TESTABLE and "(fails)" in c.precondition and "+0.00" in c.precondition


def test_sam_case_study_is_not_testable_without_a_rho_axis():
    record = make_record()
    assert [c.id for c in record.claims] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert verdict(record, "C6").verdict == NOT_TESTABLE


def test_one_seed_gives_no_interval_and_no_halves():
    record = make_record(mc=np.zeros((1, 2, 4)), seeds=[0], case={"direction": ([20.0], [21.0], [19.0]),
                         "selection": ([20.0], [21.0], [19.0])})  # fmt: skip
    for c in record.claims[:3]:
        assert c.verdict == INCONCLUSIVE and c.n == 1 and not c.verdict_a and "n/a" in c.effect
    assert verdict(record, "C4").verdict == NOT_TESTABLE  # no interval for the headroom either


# ----------------------------------------------------------------------------------------------------
# Groups


def test_hot_and_cold_follow_the_learning_rate_and_densities_split_in_halves():
    record = make_record(temps=[10.0, 20.0, 30.0, 40.0, 50.0, 60.0], densities=[50.0, 1.0, 5.0],
                         mc=np.zeros((4, 6, 3)), dense_error=np.full((4, 6), 10.0))  # fmt: skip
    g = claims.groups(record)
    assert g.hot == [0, 1, 2] and g.cold == [3, 4, 5]  # epoch 30 still runs at lr 0.1; epoch 31 does not
    assert g.low == [1] and g.high == [0]  # 1% and 50%; the middle density (5%) in neither
    batch = make_record(temperature="batch_size", temps=[16.0, 64.0, 256.0], mc=np.zeros((4, 3, 4)),
                        dense_error=np.full((4, 3), 10.0))  # fmt: skip
    g = claims.groups(batch)
    assert g.hot == [0] and g.cold == [2] and "half" in g.hot_cold_by


def test_column_max_split_needs_a_minimum_cka_difference():
    """The issue's example: CKA differing in the 4th decimal must not split a column in two."""
    mc = np.zeros((4, 2))
    cka = np.array([[0.9969, 0.95], [0.9992, 0.99], [0.9995, 0.985], [0.9997, 0.992]])
    median = method.classify_regimes(mc, cka, RegimeConfig(cka_split="column_median"))
    assert (median[:, 0] == "II-A").sum() == 2  # the old rule: half of the column, by 0.0003
    regimes = method.classify_regimes(mc, cka, RegimeConfig(cka_split="column_max", cka_margin=0.01))
    assert regimes[:, 0].tolist() == ["II-B"] * 4
    assert regimes[:, 1].tolist() == ["II-A", "II-B", "II-B", "II-B"]  # 0.95 is 0.042 below the best (0.992)
    with_margin = method.classify_regimes(mc, cka, RegimeConfig(cka_split="column_median", cka_margin=0.01))
    assert with_margin[:, 0].tolist() == ["II-B"] * 4
