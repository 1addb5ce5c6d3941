"""The smoke preset end to end through the shared CLI: a valid record, claims with verdicts, figures; the same
record with 1 and 2 worker processes."""

from __future__ import annotations

import json

import pytest

from common.cli import report_all
from common.results import VERDICTS, load_record
from masksparsity import claims, config, reproduce
from masksparsity.train import lr_at
from tests.smoke import load_smoke_record, run_smoke

pytestmark = pytest.mark.e2e  # whole preset runs; `make test` skips them on its second kernel pass


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    run_smoke("masksparsity", results)
    return results


def test_smoke_writes_a_valid_record(smoke_results):
    out = smoke_results / "masksparsity" / "smoke"
    record = load_smoke_record(out, "masksparsity")
    cfg = config.smoke()
    for op, target in zip(record.extra["ops"], cfg.sparsity.flops_reductions, strict=True):
        table = reproduce.op_table(op)
        arms = {m.setting for m in record.tables()[table]}
        assert {reproduce.MS, reproduce.CONTROL, reproduce.BASELINE, reproduce.SCRATCH} <= arms
        assert {reproduce.ns_label(lam) for lam in cfg.sparsity.slimming_lambdas} <= arms
        for arm in arms:  # every arm at the FLOPs target: Network Slimming with masks from its own γ
            flops = record.get(table, arm, claims.FLOPS)
            assert 100 * target <= flops.mean < 100 * target + 5
        assert record.get(table, reproduce.ns_label(cfg.sparsity.slimming_lambdas[0]), claims.VAL_FT).n == 1
        speed = [m for m in record.tables()[table] if m.metric.startswith(claims.SPEEDUP)]
        assert speed and speed[0].mean > 0
    assert record.get(claims.REF_TABLE, claims.DENSE_REF, claims.FT).n == 1
    ids = [c.id for c in record.claims]
    assert ids == ["C1", "C2a", "C2b", "C3a", "C3b", "C4a", "C4b", "C5"]
    assert all(c.verdict in VERDICTS and c.effect and c.precondition for c in record.claims)
    assert all("Rule" in c.our_evidence for c in record.claims)
    assert (out / "figures" / "gamma_histograms.png").stat().st_size > 1000
    assert (out / "figures" / "accuracy_vs_flops.png").stat().st_size > 1000
    assert "figures/gamma_histograms.png" in (out / "results.md").read_text()
    phases = record.provenance["phases_s"]  # where the wall time went (cached models: loading them is charged)
    assert set(phases) == {"data", "seed runs", "timing measurements", "other"}
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= record.provenance["wall_time_s"] + 0.05
    inside = record.provenance["seed_phases_s"]  # summed over the seeds' own timers (worker processes)
    assert set(inside) == {"data", "dense training", "sparsity training", "controls", "pruning", "fine-tuning",
                           "evaluation"}  # fmt: skip
    assert "Inside the seed runs" in (out / "results.md").read_text()


def _without_timings(path) -> dict:
    """A record as JSON, without what only says how long things took (provenance, measured speedups)."""
    data = json.loads((path / "record.json").read_text())
    data.pop("provenance")
    data["measurements"] = [m for m in data["measurements"] if not m["metric"].startswith(claims.SPEEDUP)]
    return data


@pytest.mark.slow  # `make test-slow`; CI keeps darex's 1-vs-2-worker test and tests/common/test_parallel.py
def test_one_and_two_worker_processes_give_the_same_record(tmp_path, monkeypatch):
    """Two seeds, each a job; every job seeds itself, so where it runs does not change a number (one operating
    point and no scratch arm, to keep it short)."""
    records = {}
    for workers in (1, 2):
        monkeypatch.setenv("PRUNE_REPRO_WORKERS", str(workers))
        monkeypatch.setenv("PRUNE_REPRO_CACHE", str(tmp_path / f"cache{workers}"))  # each trains its own models
        sets = ["--set", "seeds=(0, 1)", "--set", "sparsity.flops_reductions=(0.63,)", "--set", "arms.scratch=False"]
        out = run_smoke("masksparsity", tmp_path / f"results{workers}", "--threads", "1", *sets)
        assert load_record(out).provenance["workers"] == workers
        records[workers] = _without_timings(out)
    assert records[1] == records[2]


def test_report_rerenders_from_the_record(smoke_results, tmp_path):
    block = report_all("masksparsity", smoke_results, reproduce.report, readme=None, link_base=tmp_path)
    assert "Preset `smoke`" in block and "Claims" in block


def test_presets_differ_in_scale_and_mini_is_fair_and_replicated():
    mini = config.mini()
    assert len(mini.seeds) >= 6 and len(mini.seeds) % 2 == 0 and mini.prune.rule == "mask"  # two halves of >= 3
    assert mini.arms.no_regularization and mini.arms.network_slimming and mini.arms.masksparsity
    assert mini.arms.dense_reference and not mini.arms.direct_prune  # every arm with the same total epochs
    assert mini.data.val_subset > 0  # λ picked on validation, never on the test set
    assert len(mini.sparsity.slimming_lambdas) >= 2 and mini.sparsity.mask_lambda in mini.sparsity.slimming_lambdas
    assert 0.63 in mini.sparsity.flops_reductions
    assert config.paper().model.arch == "resnet110" and config.paper().sparsity.masksparsity_lambda == 5e-4


def test_learning_rate_schedules():
    cos = config.Schedule(epochs=10, lr=0.1, lr_schedule="cosine")
    assert lr_at(cos, 0) == pytest.approx(0.1) and lr_at(cos, 5) == pytest.approx(0.05) and lr_at(cos, 10) < 1e-12
    step = config.Schedule(epochs=100, lr=0.1, lr_steps=(30, 60, 90))
    assert lr_at(step, 29.9) == pytest.approx(0.1) and lr_at(step, 30) == pytest.approx(0.01)
    assert lr_at(step, 95) == pytest.approx(1e-4)
