"""The claim rules of diffusehigh.claims on fixed synthetic records: no model, no sampling.

Each record holds per-image values drawn here (seeded) for every condition the rules read; a case moves one
condition's mean and checks the verdict. The effects are many standard errors from their margins (or exactly on
them), so the verdicts follow from the rules, not from the draw.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.config import to_dict
from common.results import RunRecord
from common.stats import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED
from diffusehigh import claims, config
from diffusehigh.claims import BASE, BICUBIC, DH, DIRECT, M_BORDER, M_EDGE, M_HF, M_OBJ, M_PSNR, M_STRIPE, SDEDIT

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)

SEEDS = (0, 1)
N = 24  # images per seed
PROG, ONE = "DiffuseHigh, progressive 2x -> 4x -> 8x", "DiffuseHigh, one jump to 8x"
STRONG_DWT, STRONG_NONE = "noise sigma=3.00, dwt_steps=5", "noise sigma=3.00, dwt_steps=0"
REAL_STRIPE = 1.5  # the real images' stripe energy at every target size (x1e-3)
DH_4X = {"psnr": 21.0, "stripe": 1.0}
IDS = ["C1", "C2", "C3a", "C3b", "C4a", "C4b", "C5a", "C5b", "C6"]


def _condition(rng, n: int, objects=1.0, psnr=20.0, stripe=1.0, hf=4.0, border=0.13, edge=1.0, sd=0.05) -> dict:
    """Per-image values around the given means (objects are whole numbers: the mean's floor plus Bernoulli)."""
    base = np.floor(objects)
    counts = base + (rng.random(n) < objects - base)
    return {M_OBJ: counts, M_PSNR: psnr + sd * rng.standard_normal(n), M_STRIPE: stripe + sd * rng.standard_normal(n),
            M_HF: hf + sd * rng.standard_normal(n), M_BORDER: border + 0.01 * rng.standard_normal(n),
            M_EDGE: edge + sd * rng.standard_normal(n)}  # fmt: skip


def synthetic_record(overrides: dict | None = None, timing_ratio: float = 2.0, jump: bool = True) -> RunRecord:
    """A mini-shaped record in which every claim is reproduced, unless ``overrides`` (``{(factor, row): kwargs of
    _condition}``) move a condition."""
    rng = np.random.default_rng(0)
    n = N * len(SEEDS)
    spec = {
        (1.0, BASE): {},
        (4.0, DIRECT): {"objects": 8.0},
        (4.0, DH): DH_4X,
        (4.0, SDEDIT): {"psnr": 20.0, "stripe": 1.0},
        (4.0, BICUBIC): {"psnr": 30.0, "stripe": 0.0, "edge": 2.5},
        (2.0, BICUBIC): {},
        (2.0, STRONG_DWT): {},
        (2.0, STRONG_NONE): {"objects": 1.6},
        (2.0, "sharpening alpha=1"): {"stripe": 1.0},
        (2.0, "sharpening alpha=0"): {"stripe": 0.5, "edge": 1.5},
        (8.0, PROG): {"stripe": 1.2, "edge": 2.0},
        (8.0, ONE): {"stripe": 0.3, "edge": 3.0},
    }
    if not jump:
        spec = {k: v for k, v in spec.items() if k[0] != 8.0}
    spec.update(overrides or {})
    conditions = {}
    for (f, name), kwargs in spec.items():
        values = _condition(rng, n, **kwargs)
        conditions[claims.key(f, name)] = {
            "per_seed": N,
            "metrics": {m: claims.round_values(v) for m, v in values.items()},
        }
    real = {M_BORDER: 0.13, M_OBJ: 1.0, M_EDGE: 0.6}
    reference = {"1x": {M_STRIPE: 1.0, M_HF: 6.0, **real}}
    reference |= {f"{f:g}x": {M_STRIPE: REAL_STRIPE, M_HF: 5.0, **real} for f in (2, 4, 8)}
    base = rng.uniform(0.10, 0.12, 4)
    stages = rng.uniform(0.8, 0.9, 4)
    direct = timing_ratio * (base + stages)
    timing = {"base": base.tolist(), "diffusehigh": stages.tolist(), "direct": direct.tolist(), "images": 2,
              "threads": 2}  # fmt: skip
    cfg = config.mini()
    record = RunRecord(paper="diffusehigh", preset="mini", command="test", config=to_dict(cfg), config_hash="x",
                       seeds=list(SEEDS), provenance={})  # fmt: skip
    record.extra = {
        "per_image": {"seeds": list(SEEDS), "conditions": conditions},
        "reference": reference,
        "timing": timing,
        "jump": {"factor": 8.0, "progressive": PROG, "one_jump": ONE} if jump else None,
    }
    return record


def verdicts(record: RunRecord) -> dict[str, str]:
    claims.add_claims(record)
    return {c.id: c.verdict for c in record.claims}


def test_every_claim_reproduced_on_the_reference_record():
    record = synthetic_record()
    assert verdicts(record) == dict.fromkeys(IDS, REPRODUCED)
    for c in record.claims:  # judged on all images and on both halves (seed 0's images, seed 1's)
        assert c.verdict_a == REPRODUCED and c.verdict_b == REPRODUCED, c.id
        assert c.n >= 4 and c.precondition and c.effect
    c3 = next(c for c in record.claims if c.id == "C3b")
    assert c3.n == 48 and c3.stats["seeds_a"] == [0] and c3.stats["seeds_b"] == [1]
    assert record.extra["quality_gate"]["layout"] and record.extra["quality_gate"]["texture"]


def test_the_quality_gate_makes_claims_not_testable_with_the_measured_value():
    """Grey backgrounds (border 0.45 vs real 0.13) fail the texture gate: the texture claims (b) are not testable,
    the layout and edge claims still are; too few single-object base samples fail the layout gate."""
    record = synthetic_record({(1.0, BASE): {"border": 0.45}})
    v = verdicts(record)
    assert v["C3b"] == v["C4b"] == v["C5b"] == NOT_TESTABLE
    assert {v[i] for i in ("C1", "C2", "C3a", "C4a", "C5a", "C6")} == {REPRODUCED}
    c3 = next(c for c in record.claims if c.id == "C3b")
    assert "border 0.45 vs 0.13" in c3.precondition and "fails" in c3.precondition

    no_stripes = verdicts(synthetic_record({(1.0, BASE): {"stripe": 0.3}}))  # 30% of the real stripe energy
    assert no_stripes["C3b"] == NOT_TESTABLE and no_stripes["C3a"] == REPRODUCED

    layout = synthetic_record({(1.0, BASE): {"objects": 0.5}})  # half the base samples show no object
    v = verdicts(layout)
    assert {v[i] for i in ("C1", "C2", "C3a", "C4a", "C5a")} == {NOT_TESTABLE} and v["C3b"] == REPRODUCED
    share = layout.extra["quality_gate"]["single_share"]  # about 50%: the record's own measured value is shown
    assert share < 70 and f"(single-object share >= 70%): {share:.0f}% (fails)" in layout.claims[0].precondition


def test_repetition_rule():
    # Direct does not repeat (its part fails) while DiffuseHigh keeps the layout (its part holds): partly.
    assert verdicts(synthetic_record({(4.0, DIRECT): {"objects": 1.0}}))["C1"] == PARTLY
    both_fail = {(4.0, DIRECT): {"objects": 1.0}, (4.0, DH): {**DH_4X, "objects": 0.6}}
    assert verdicts(synthetic_record(both_fail))["C1"] == NOT_REPRODUCED
    # An extra object in about half the direct images: 0.5 objects/image, on the margin.
    assert verdicts(synthetic_record({(4.0, DIRECT): {"objects": 1.5}}))["C1"] == INCONCLUSIVE
    # Direct repeats, but DiffuseHigh loses the layout too (one image in three without an object): partly.
    v = verdicts(synthetic_record({(4.0, DH): {**DH_4X, "objects": 0.6}}))
    assert v["C1"] == PARTLY


def test_structure_rule():
    # LR-PSNR gain below the 0.5 dB margin, count still closer to the guide's: partly.
    assert verdicts(synthetic_record({(4.0, DH): {**DH_4X, "psnr": 20.1}}))["C2"] == PARTLY
    # Without DWT the count stays the guide's: that part fails (on the margin: inconclusive), LR-PSNR holds.
    assert verdicts(synthetic_record({(2.0, STRONG_NONE): {}}))["C2"] == INCONCLUSIVE
    assert verdicts(synthetic_record({(2.0, STRONG_DWT): {"objects": 1.6}, (2.0, STRONG_NONE): {}}))["C2"] == PARTLY


def test_detail_rule_does_not_credit_noise_or_tiny_effects():
    """C3b compares stripe energy, the oriented measure that isotropic noise does not raise (test_metrics.py): a run
    whose detail is noise has a DiffuseHigh stripe energy like bicubic's and is not reproduced; an effect below 10%
    of the real images' stripe energy is not reproduced either."""
    noise = {(4.0, DH): {**DH_4X, "stripe": 0.0, "hf": 80.0}}
    assert verdicts(synthetic_record(noise))["C3b"] == NOT_REPRODUCED
    tiny = {(4.0, DH): {**DH_4X, "stripe": 0.05}}  # 3% of the real 1.5
    assert verdicts(synthetic_record(tiny))["C3b"] == NOT_REPRODUCED
    edge = {(4.0, DH): {**DH_4X, "stripe": 0.15, "sd": 0.3}}  # on the margin (0.15), noisy
    assert verdicts(synthetic_record(edge))["C3b"] == INCONCLUSIVE


def test_edge_rules():
    """C3a/C4a/C5a: edges narrower by more than a quarter pixel, paired by image."""
    assert verdicts(synthetic_record({(4.0, BICUBIC): {"psnr": 30.0, "stripe": 0.0, "edge": 1.0}}))["C3a"] == (
        NOT_REPRODUCED
    )
    assert verdicts(synthetic_record({(4.0, BICUBIC): {"psnr": 30.0, "stripe": 0.0, "edge": 1.25}}))["C3a"] == (
        INCONCLUSIVE  # exactly a quarter pixel wider than DiffuseHigh's: on the margin
    )
    assert verdicts(synthetic_record({(2.0, "sharpening alpha=0"): {"stripe": 0.5, "edge": 1.1}}))["C4a"] == (
        NOT_REPRODUCED
    )
    assert verdicts(synthetic_record({(8.0, ONE): {"stripe": 0.3, "edge": 2.0}}))["C5a"] == NOT_REPRODUCED


def test_images_without_an_edge_are_left_out_of_the_pairs():
    """Edge width is NaN (stored as None) where no object was found: those pairs are dropped, the rest judged."""
    record = synthetic_record()
    edges = record.extra["per_image"]["conditions"][claims.key(8.0, ONE)]["metrics"][M_EDGE]
    edges[:10] = [None] * 10
    claims.add_claims(record)
    c5 = next(c for c in record.claims if c.id == "C5a")
    assert c5.verdict == REPRODUCED and c5.n == 48 - 10
    assert c5.stats["tests_a"][0]["effect"]["n"] == 24 - 10 and c5.stats["tests_b"][0]["effect"]["n"] == 24


def test_sharpening_rule():
    assert verdicts(synthetic_record({(2.0, "sharpening alpha=1"): {"stripe": 0.55}}))["C4b"] == NOT_REPRODUCED
    assert verdicts(synthetic_record({(2.0, "sharpening alpha=1"): {"stripe": 0.2}}))["C4b"] == NOT_REPRODUCED


def test_progressive_rule():
    # One jump as close to the real stripe energy as progressive: not reproduced; closer: not reproduced either.
    assert verdicts(synthetic_record({(8.0, ONE): {"stripe": 1.2, "edge": 3.0}}))["C5b"] == NOT_REPRODUCED
    assert verdicts(synthetic_record({(8.0, ONE): {"stripe": 1.5, "edge": 3.0}}))["C5b"] == NOT_REPRODUCED
    # Overshooting the real value counts as far from it.
    assert verdicts(synthetic_record({(8.0, PROG): {"stripe": 2.7, "edge": 2.0}}))["C5b"] == NOT_REPRODUCED
    no_jump = synthetic_record(jump=False)
    v = verdicts(no_jump)
    assert v["C5a"] == v["C5b"] == NOT_TESTABLE and next(c for c in no_jump.claims if c.id == "C5a").n is None


def test_cost_rule():
    assert verdicts(synthetic_record(timing_ratio=0.5))["C6"] == NOT_REPRODUCED
    record = synthetic_record()
    record.extra["timing"] = None
    assert verdicts(record)["C6"] == NOT_TESTABLE


def test_halves_that_contradict_each_other_make_the_claim_inconclusive():
    """Seed 0's images show a large detail gain, seed 1's a loss: each half is definite and they disagree."""
    record = synthetic_record()
    c = record.extra["per_image"]["conditions"][claims.key(4.0, DH)]["metrics"]
    c[M_STRIPE] = [3.0] * N + [-0.6] * N  # mean +1.2 over all images; bicubic is 0
    claims.add_claims(record)
    c3 = next(x for x in record.claims if x.id == "C3b")
    assert (c3.verdict_a, c3.verdict_b) == (REPRODUCED, NOT_REPRODUCED)
    assert c3.verdict == INCONCLUSIVE


@pytest.mark.parametrize("seeds, first_half", [((0,), 12), ((0, 1, 2), 36)])
def test_halves_split_the_images_in_seed_order(seeds, first_half):
    """One seed: its images are split in two; three seeds: the first half of the 72 images (seed 0, half of seed 1)."""
    values = {M_OBJ: list(range(24 * len(seeds)))}
    pi = claims.PerImage(list(seeds), {claims.key(4.0, DH): {"per_seed": 24, "metrics": values}}, {})
    a, b = pi.values(4.0, DH, M_OBJ, "A"), pi.values(4.0, DH, M_OBJ, "B")
    assert len(a) == first_half and a[0] == 0 and b[0] == first_half and len(a) + len(b) == 24 * len(seeds)
