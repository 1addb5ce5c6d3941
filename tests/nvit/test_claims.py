"""The claim rules (nvit/claims.py) on fixed synthetic records: each claim reproduced, not reproduced (or partly),
inconclusive and not testable, from numbers chosen so that the verdict follows from the rule, not from a run."""

from __future__ import annotations

import copy

import pytest

from common.config import to_dict
from common.results import RunRecord
from common.stats import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED
from nvit import claims, config
from nvit.claims import NVIT
from nvit.reproduce import judge_claims

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)

SEEDS = [0, 1, 2, 3, 4, 5]
NOISE = [0.2, -0.2, 0.1, -0.1, 0.15, -0.15]  # per seed; halves A (seeds 0-2) and B (3-5)
OTHER = [-0.1, 0.15, -0.2, 0.2, 0.05, -0.05]  # a second, different pattern, so that paired differences vary


def snap(target, top1, *, kept=None, lat=None, speedup=2.0, step=10, **extra) -> dict:
    return {"target": target, "step": step, "top1_ft": top1, "top1_pruned": top1 - 3, "latency_ratio_lut":
            lat if lat is not None else target - 0.001, "macs_ratio": target - 0.05, "speedup": speedup,
            "speedup_q1": speedup * 0.99, "speedup_q3": speedup * 1.01, "kept": kept or
            {"EMB": 0.9, "H": 0.5, "QK": 0.5, "V": 0.6, "MLP": 0.6}, "kd_batches": 306,
            "equivalence_max_abs_diff": 2e-15, "most_pruned_fraction": 0.5, **extra}  # fmt: skip


def base_record() -> RunRecord:
    """Every claim reproduced: large effects, small per-seed noise, every precondition holding."""
    per_seed = []
    for s, e, o in zip(SEEDS, NOISE, OTHER, strict=True):
        methods = {
            NVIT: [snap(0.5, 84 + e, step=14, speedup=2.0 + e / 10),
                   snap(0.3, 82 + e, step=28, speedup=3.0 + e / 10, top1_scratch=80 + o, scratch_steps=1866,
                        kept={"EMB": 0.9, "H": 0.4, "QK": 0.3, "V": 0.7, "MLP": 0.8})],
            "uniform": [snap(0.5, 82 + o, lat=0.47), snap(0.3, 80 + o, lat=0.28)],
            "magnitude": [snap(0.3, 78 + o, kept={"EMB": 1.0, "H": 0.2, "QK": 0.1, "V": 0.1, "MLP": 0.9})],
            "first_order": [snap(0.3, 81 + o)],
            "random": [snap(0.3, 75 + o)],
            "η=0": [snap(0.5, 84 + e, step=18, speedup=2.0 + e / 10),
                    snap(0.3, 82.5 + e, kept={"EMB": 0.8, "H": 0.5, "QK": 0.4, "V": 0.4, "MLP": 0.5})],
        }  # fmt: skip
        per_seed.append({
            "seed": s, "dense": {"dense_seed": s, "top1": 86 + e, "loss": 0.4},
            "gate_identity": {"max_rel_err": 2e-15, "min_abs_wg": 1e-3},
            "score_check": {"rho": {"hessian": 0.9 + e / 10, "first_order": 0.7 + o / 10, "magnitude": 0.5,
                                    "taylor_elementwise": 0.8, "random": 0.0},
                            "groups": 60, "median_abs_delta_loss": 1e-3},
            "methods": {lb: {"negative_fraction": 0.3 if lb == NVIT else None, "snapshots": sn}
                        for lb, sn in methods.items()},
        })  # fmt: skip
    extra = {
        "record_format": 2, "per_seed": per_seed, "targets": [0.5, 0.3], "methods": list(per_seed[0]["methods"]),
        "target_metric": "latency", "threads": 1, "device": "cpu", "timing_batch": 256,
        "lut": {"description": "analytic"}, "dense": {"per_seed": True},
        "revit": {"revit": {"top1": 87.0, "params": 310_000}, "uniform": {"params": 300_000, "top1": 86.0},
                  "uniform_runs": [{"seed": e["seed"], "top1": e["dense"]["top1"]} for e in per_seed],
                  "uniform_is_dense": True, "epochs": 10, "revit_seed": 0},
    }  # fmt: skip
    cfg = config.mini()
    return RunRecord(paper="nvit", preset="mini", command="test", config=to_dict(cfg), config_hash="x",
                     seeds=SEEDS, provenance={}, extra=extra)  # fmt: skip


def verdicts(record: RunRecord) -> dict[str, str]:
    return {s.id: s.judgement.verdict for s in claims.judge(record)}


def each(record: RunRecord, label: str, target: float | None = None):
    """Every snapshot of ``label`` (at ``target``) in every seed, with its seed's index."""
    for i, e in enumerate(record.extra["per_seed"]):
        for s in e["methods"][label]["snapshots"]:
            if target is None or s["target"] == target:
                yield i, s


def test_the_base_record_reproduces_every_claim():
    record = base_record()
    assert verdicts(record) == {f"C{i}": REPRODUCED for i in range(1, 12)}
    c = claims.judge(record)[2]  # C3: both halves judged on their own seeds, and shown
    assert c.judgement.seeds_a == [0, 1, 2] and c.judgement.seeds_b == [3, 4, 5]
    assert c.judgement.verdict_a == c.judgement.verdict_b == REPRODUCED


def test_judge_appends_claims_with_ids_and_a_record_without_format_keeps_its_own():
    record = base_record()
    judge_claims(record)
    assert [c.id for c in record.claims] == [f"C{i}" for i in range(1, 12)]
    assert all(c.effect and c.precondition and c.n for c in record.claims)
    old = base_record()
    del old.extra["record_format"]
    old.claim("an old claim", paper_evidence="-", our_evidence="-", verdict=PARTLY)
    judge_claims(old)
    assert [c.claim for c in old.claims] == ["an old claim"]


def test_c1_gate_identity():
    r = base_record()
    r.extra["per_seed"][3]["gate_identity"]["max_rel_err"] = 1e-6  # one seed's identity fails
    assert verdicts(r)["C1"] == NOT_REPRODUCED
    r = base_record()
    r.extra["per_seed"][0]["gate_identity"]["min_abs_wg"] = 0.0
    assert verdicts(r)["C1"] == NOT_TESTABLE


def test_c2_score_tracks_loss():
    r = base_record()
    for e, x in zip(r.extra["per_seed"], NOISE, strict=True):
        e["score_check"]["rho"]["hessian"] = 0.3 + x / 10  # below first-order (0.7) and magnitude (0.5)
    assert verdicts(r)["C2"] == NOT_REPRODUCED
    for e, x in zip(r.extra["per_seed"], NOISE, strict=True):
        e["score_check"]["rho"]["hessian"] = 0.6 + x / 10  # beats magnitude, below first-order
    assert verdicts(r)["C2"] == PARTLY
    for e, x in zip(r.extra["per_seed"], OTHER, strict=True):
        e["score_check"]["rho"]["hessian"] = 0.7 + x / 10 + 0.02 * (-1) ** e["seed"]  # ties first-order ± noise
    assert verdicts(r)["C2"] == INCONCLUSIVE
    for e in r.extra["per_seed"]:
        e["score_check"]["median_abs_delta_loss"] = 1e-8
    assert verdicts(r)["C2"] == NOT_TESTABLE


def test_c3_global_vs_uniform():
    r = base_record()
    for _, s in each(r, "uniform"):
        s["top1_ft"] += 6  # uniform now 2-4 pp better than global
    assert verdicts(r)["C3"] == NOT_REPRODUCED
    r = base_record()
    for i, s in each(r, "uniform"):
        s["top1_ft"] = 84 + NOISE[i] + OTHER[i] if s["target"] == 0.5 else 82.5 + NOISE[i] + OTHER[i]  # ties
    assert verdicts(r)["C3"] == INCONCLUSIVE
    r = base_record()
    for _, s in each(r, "uniform", 0.3):
        s["latency_ratio_lut"] = 0.22  # 8 pp below global: the comparison would favour global
    assert verdicts(r)["C3"] == NOT_TESTABLE


def test_c3_halves_that_contradict_make_the_claim_inconclusive():
    r = base_record()
    for i, s in each(r, "uniform"):
        ref = 84 if s["target"] == 0.5 else 82.5
        # half A: global better by 3 pp; half B: uniform better by 0.5 pp
        s["top1_ft"] = ref + NOISE[i] - 3 + OTHER[i] / 10 if i < 3 else ref + NOISE[i] + 0.5 + OTHER[i] / 10
    spec = next(s for s in claims.judge(r) if s.id == "C3")
    assert spec.judgement.verdict_a == REPRODUCED and spec.judgement.verdict_b == NOT_REPRODUCED
    assert spec.judgement.verdict == INCONCLUSIVE and spec.judgement.contradiction


def test_c4_magnitude_degenerate():
    r = base_record()
    for _, s in each(r, "magnitude"):
        s["kept"] = {"EMB": 0.6, "H": 0.5, "QK": 0.4, "V": 0.5, "MLP": 0.45}  # not degenerate, more even than η=0
        s["top1_ft"] = 90.0  # and more accurate
    assert verdicts(r)["C4"] == NOT_REPRODUCED
    r = base_record()
    for _, s in each(r, "magnitude"):
        s["top1_ft"] = 90.0  # degenerate, but more accurate than the Hessian score
    assert verdicts(r)["C4"] == PARTLY
    r = base_record()
    r.extra["per_seed"][2]["methods"]["magnitude"]["snapshots"] = []  # a seed where magnitude never got there
    assert verdicts(r)["C4"] == NOT_TESTABLE


def test_c5_criteria():
    r = base_record()
    for i, s in each(r, "random"):
        s["top1_ft"] = 84.5 + OTHER[i]  # random beats the Hessian score, first-order does not
    assert verdicts(r)["C5"] == PARTLY
    for i, s in each(r, "first_order"):
        s["top1_ft"] = 82.5 + NOISE[i] + OTHER[i]  # ties
    assert verdicts(r)["C5"] == NOT_REPRODUCED  # one part not reproduced, none reproduced
    r = base_record()
    for e in r.extra["per_seed"]:
        e["dense"]["top1"] = 82.6  # pruning to 30% costs < 0.5 pp: nothing for criteria to differ on
    assert verdicts(r)["C5"] == NOT_TESTABLE


def test_c6_latency_term():
    r = base_record()
    for i, s in each(r, NVIT, 0.5):
        s["top1_ft"] = 82 + NOISE[i] + OTHER[i] / 5  # 2 pp worse than η = 0: beyond the 0.5 pp margin
    assert verdicts(r)["C6"] == PARTLY  # fewer steps and as fast, but less accurate
    r = base_record()
    for i, s in each(r, NVIT, 0.5):
        s["top1_ft"] = 83.5 + NOISE[i] + OTHER[i]  # 0.5 pp worse ± noise: the interval contains the margin
    assert verdicts(r)["C6"] == INCONCLUSIVE
    r = base_record()
    r.config["latency"]["eta"] = 10.0
    r.extra["per_seed"][1]["methods"]["η=0"]["snapshots"] = r.extra["per_seed"][1]["methods"]["η=0"]["snapshots"][1:]
    assert verdicts(r)["C6"] == NOT_TESTABLE


def test_c7_redistribution():
    r = base_record()
    for _, s in each(r, NVIT, 0.3):
        s["kept"] = {"EMB": 0.9, "H": 0.8, "QK": 0.7, "V": 0.3, "MLP": 0.4}
    assert verdicts(r)["C7"] == NOT_REPRODUCED
    for _, s in each(r, NVIT, 0.3):
        s["kept"] = {"EMB": 0.9, "H": 0.8, "QK": 0.3, "V": 0.7, "MLP": 0.4}
    assert verdicts(r)["C7"] == PARTLY
    r.extra["per_seed"][0]["methods"][NVIT]["snapshots"] = r.extra["per_seed"][0]["methods"][NVIT]["snapshots"][:1]
    assert verdicts(r)["C7"] == NOT_TESTABLE


def test_c8_conversion():
    r = base_record()
    next(each(r, "uniform"))[1]["equivalence_max_abs_diff"] = 3e-4  # one snapshot converts wrongly
    assert verdicts(r)["C8"] == NOT_REPRODUCED  # an exact check: one failure is a failure, no halves
    assert next(s for s in claims.judge(r) if s.id == "C8").judgement.verdict_a == ""
    r = base_record()
    next(each(r, "uniform"))[1]["most_pruned_fraction"] = 0.0
    assert verdicts(r)["C8"] == NOT_TESTABLE


def test_c9_scratch():
    r = base_record()
    for i, s in each(r, NVIT, 0.3):
        s["top1_scratch"] = 84 + OTHER[i]  # scratch 2 pp better than pruned, still below the dense model
    assert verdicts(r)["C9"] == NOT_REPRODUCED
    for i, s in each(r, NVIT, 0.3):
        s["top1_scratch"] = 82 + NOISE[i] + OTHER[i]  # ties
    assert verdicts(r)["C9"] == INCONCLUSIVE
    for i, s in each(r, NVIT, 0.3):
        s["top1_scratch"] = 86.5 + OTHER[i]  # scratch better than the dense model: dense under-trained
    spec = next(s for s in claims.judge(r) if s.id == "C9")
    assert spec.judgement.verdict == NOT_TESTABLE and spec.judgement.precondition.value.startswith("-0.5")


def test_c10_speedup():
    r = base_record()
    for i, s in each(r, NVIT, 0.3):
        s["speedup"] = 2.0 + NOISE[i] / 10  # × 0.3 = 0.6, below 80% of the table's prediction
    assert verdicts(r)["C10"] == PARTLY  # 50% target still fine
    for i, s in each(r, NVIT, 0.5):
        s["speedup"] = 1.6 + NOISE[i] * 2  # × 0.5 = 0.8 ± 0.1: the interval contains the margin
    assert verdicts(r)["C10"] == NOT_REPRODUCED  # one part inconclusive and one not: the conjunction fails
    for i, s in each(r, NVIT, 0.3):
        s["speedup"] = 3.0 + NOISE[i] / 10
    assert verdicts(r)["C10"] == INCONCLUSIVE  # one part inconclusive, the other reproduced
    r = base_record()
    for lb in r.extra["methods"]:
        for _, s in each(r, lb):
            s["speedup_q1"], s["speedup_q3"] = 0.8 * s["speedup"], 1.2 * s["speedup"]  # noisy timings
    assert verdicts(r)["C10"] == NOT_TESTABLE


def test_c11_revit():
    r = base_record()
    r.extra["revit"]["revit"]["top1"] = 84.0  # 2 pp below the uniform runs (86 ± 0.17)
    assert verdicts(r)["C11"] == NOT_REPRODUCED
    r.extra["revit"]["revit"]["top1"] = 86.1  # within the runs' spread
    assert verdicts(r)["C11"] == INCONCLUSIVE
    r = base_record()
    r.extra["revit"]["revit"]["params"] = 400_000  # 33% larger: not the same size
    assert verdicts(r)["C11"] == NOT_TESTABLE
    r = base_record()
    r.extra["revit"]["uniform_runs"] = r.extra["revit"]["uniform_runs"][:1]  # one uniform run: no spread known
    assert verdicts(r)["C11"] == INCONCLUSIVE
    r.extra["revit"] = None
    assert verdicts(r)["C11"] == NOT_TESTABLE


def test_one_vs_sample_is_a_t_prediction_interval():
    from scipy import stats

    e = claims.one_vs_sample(10.0, [1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 * (1 + 1 / 3) ** 0.5  # sd of [1, 2, 3] is 1
    assert e.estimate == pytest.approx(8.0) and e.high - e.estimate == pytest.approx(half, rel=1e-12)


def test_claims_of_one_seed_are_never_reproduced_from_noise():
    r = base_record()
    r.extra["per_seed"] = r.extra["per_seed"][:1]
    r.extra["revit"]["uniform_runs"] = r.extra["revit"]["uniform_runs"][:1]
    got = verdicts(copy.deepcopy(r))
    assert got.pop("C1") == got.pop("C8") == REPRODUCED  # exact identities need no interval
    assert set(got.values()) == {INCONCLUSIVE}
