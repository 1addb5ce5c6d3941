"""The smoke preset end to end through the shared CLI: a valid record, claims with verdicts, figures."""

from __future__ import annotations

import pytest

from common.cli import report_all
from common.results import VERDICTS
from masksparsity import config, reproduce
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
        flops = record.get(reproduce.op_table(op), "every pruned arm (same mask)", "FLOPs (MACs) reduction")
        assert 100 * target <= flops.mean < 100 * target + 5
        arms = {m.setting for m in record.tables()[reproduce.op_table(op)]}
        assert {reproduce.MS, reproduce.CONTROL, reproduce.BASELINE, reproduce.SCRATCH} <= arms
        speed = [m for m in record.tables()[reproduce.op_table(op)] if "speedup" in m.metric]
        assert speed and speed[0].mean > 0
    assert record.claims and all(c.verdict in VERDICTS for c in record.claims)
    assert all("Rule" in c.our_evidence for c in record.claims)
    assert (out / "figures" / "gamma_histograms.png").stat().st_size > 1000
    assert (out / "figures" / "accuracy_vs_flops.png").stat().st_size > 1000
    assert "figures/gamma_histograms.png" in (out / "results.md").read_text()
    phases = record.provenance["phases_s"]  # where the wall time went (cached models: loading them is charged)
    assert set(phases) == {"data", "dense training", "sparsity training", "controls", "pruning", "fine-tuning",
                           "evaluation", "timing measurements", "other"}  # fmt: skip
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= record.provenance["wall_time_s"] + 0.05


def test_report_rerenders_from_the_record(smoke_results, tmp_path):
    block = report_all("masksparsity", smoke_results, reproduce.report, readme=None, link_base=tmp_path)
    assert "Preset `smoke`" in block and "Claims" in block


def test_presets_differ_in_scale_and_mini_shares_one_mask():
    mini = config.mini()
    assert len(mini.seeds) >= 3 and mini.prune.rule == "mask"
    assert mini.arms.no_regularization and mini.arms.network_slimming and mini.arms.masksparsity
    assert len(mini.sparsity.slimming_lambdas) >= 2 and mini.sparsity.mask_lambda in mini.sparsity.slimming_lambdas
    assert 0.63 in mini.sparsity.flops_reductions
    assert config.paper().model.arch == "resnet110" and config.paper().sparsity.masksparsity_lambda == 5e-4


def test_learning_rate_schedules():
    cos = config.Schedule(epochs=10, lr=0.1, lr_schedule="cosine")
    assert lr_at(cos, 0) == pytest.approx(0.1) and lr_at(cos, 5) == pytest.approx(0.05) and lr_at(cos, 10) < 1e-12
    step = config.Schedule(epochs=100, lr=0.1, lr_steps=(30, 60, 90))
    assert lr_at(step, 29.9) == pytest.approx(0.1) and lr_at(step, 30) == pytest.approx(0.01)
    assert lr_at(step, 95) == pytest.approx(1e-4)
