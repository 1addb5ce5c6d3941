"""The smoke preset end to end through the shared CLI: a valid record, tables, claims with verdicts, figures; and the
same record with 1 or 2 worker processes, apart from timings."""

from __future__ import annotations

import json

import pytest

from common.cli import main, report_all
from common.results import VERDICTS, load_record
from nvit import claims, config, reproduce
from tests.smoke import load_smoke_record, run_smoke

pytestmark = pytest.mark.e2e  # whole preset runs; `make test` skips them on its second kernel pass


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    run_smoke("nvit", results, "--threads", "2")
    return results


def test_smoke_writes_a_valid_record(smoke_results):
    out = smoke_results / "nvit" / "smoke"
    record = load_smoke_record(out, "nvit")
    assert record.provenance["threads"] == 1, "max_threads caps --threads, and the record says so"
    tables = record.tables()
    assert {reproduce.T1, reproduce.T_BASE, reproduce.T_KEPT, reproduce.T_CHECK} <= set(tables)
    for t in config.smoke().prune.latency_targets:
        lat = record.get(reproduce.T1, f"NViT @ {reproduce.target_label(t)}", "LUT latency")
        assert lat.mean <= 100 * t + 1e-6
        speed = [m for m in tables[reproduce.T1] if m.setting.startswith("NViT") and "speedup" in m.metric]
        assert speed and all(m.mean > 0 for m in speed)
    check = record.get(reproduce.T_CHECK, "masked model vs converted dense model, float64",
                       "max |logit difference| over all snapshots")  # fmt: skip
    # float64 logits (in units of 1e-15), masked vs converted differ in summation order only: ~1e-15 for logits of
    # size ~10 after a few hundred operations; the claim's margin (nvit.claims.FLOAT64_EXACT) is 1e-9
    assert check.mean * 1e-15 < claims.FLOAT64_EXACT
    kd = [m for m in tables[reproduce.T_BASE] if m.metric == "KD batches"]
    assert len({m.mean for m in kd}) == 1  # every method and target got the same KD budget
    assert [c.id for c in record.claims] == [f"C{i}" for i in range(1, 12)]
    assert all(c.verdict in VERDICTS and "Rule" in c.our_evidence for c in record.claims)
    assert all(c.effect and c.n is not None and c.precondition for c in record.claims)
    exact = {c.id: c.verdict for c in record.claims if c.id in ("C1", "C8")}
    assert exact == {"C1": "reproduced", "C8": "reproduced"}  # float64 identities, whatever the training did
    # one seed: no interval, no halves, so no verdict beyond "inconclusive" unless a precondition fails
    assert all(c.verdict in ("inconclusive", "not testable here") for c in record.claims if c.id not in exact)
    assert (out / "figures" / "per_block_dims.png").stat().st_size > 1000
    assert (out / "figures" / "accuracy_vs_latency.png").stat().st_size > 1000
    text = (out / "results.md").read_text()
    assert "figures/per_block_dims.png" in text and "NViT-H" in text and "How verdicts are decided" in text
    phases = record.provenance["phases_s"]
    assert set(phases) == {"data", "timing measurements", "dense training", "pruning", "fine-tuning and controls",
                           "other"}  # fmt: skip
    assert all(sec >= 0 for sec in phases.values())
    assert sum(phases.values()) <= record.provenance["wall_time_s"] + 0.05  # each value rounded to 0.01 s
    jobs = record.extra["job_seconds"]
    assert {"dense training", "pruning", "fine-tuning", "evaluation", "controls"} <= set(jobs)
    assert "after every worker had finished" in record.extra["timing_protocol"]


def test_report_rerenders_from_the_record(smoke_results, tmp_path):
    block = report_all("nvit", smoke_results, reproduce.report, readme=None, link_base=tmp_path)
    assert "Preset `smoke`" in block and "Claims" in block and "Table 1 analogue" in block


TIMING_KEYS = {"speedup", "speedup_q1", "speedup_q3", "dense_ms", "pruned_ms"}


def _without_timings(record) -> dict:
    """What must not depend on the number of workers: every per-seed result except the measured latencies, the
    tables except speedups, and the verdicts of the claims that do not read timings (C6 and C10 do)."""
    per_seed = json.loads(json.dumps(record.extra["per_seed"]))
    for e in per_seed:
        for run in e["methods"].values():
            for snap in run["snapshots"]:
                for k in TIMING_KEYS:
                    snap.pop(k)
    tables = [(m.table, m.setting, m.metric, m.values) for m in record.measurements if "speedup" not in m.metric]
    verdicts = [(c.id, c.verdict, c.verdict_a, c.verdict_b) for c in record.claims if c.id not in ("C6", "C10")]
    return {"per_seed": per_seed, "revit": record.extra["revit"], "tables": tables, "claims": verdicts,
            "config": record.config}  # fmt: skip


@pytest.mark.slow  # `make test-slow`; CI keeps darex's 1-vs-2-worker test and tests/common/test_parallel.py
def test_one_and_two_workers_give_the_same_record(tmp_path, monkeypatch):
    """Two seeds of a cut-down smoke run, each from its own empty cache, with 1 and with 2 worker processes."""
    records = {}
    for workers in (1, 2):
        monkeypatch.setenv("PRUNE_REPRO_WORKERS", str(workers))
        monkeypatch.setenv("PRUNE_REPRO_CACHE", str(tmp_path / f"cache{workers}"))
        results = tmp_path / f"results{workers}"
        argv = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(results), "--set",
                "seeds=(0, 1)", "--set", "prune.baselines=('uniform', 'magnitude')", "--set", "score_check.groups=4",
                "--set", "revit_epochs=1"]  # fmt: skip
        assert main("nvit", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv) == 0
        records[workers] = load_record(results / "nvit" / "smoke")
    assert records[1].extra["workers"] == 1 and records[2].extra["workers"] == 2
    assert _without_timings(records[1]) == _without_timings(records[2])  # bit for bit: one thread everywhere


@pytest.mark.parametrize("weights", ["dependency", "official"])
def test_both_score_weight_sets_run_end_to_end(tmp_path, monkeypatch, weights):
    """A cut-down smoke run with each weight set (the official one with the official factors, as in `paper`)."""
    monkeypatch.setenv("PRUNE_REPRO_WORKERS", "1")
    monkeypatch.setenv("PRUNE_REPRO_CACHE", str(tmp_path / "cache"))
    divisors = "(12.0, 12.0, 2.0, 2.0, 1.0)" if weights == "official" else "(1.0, 1.0, 1.0, 1.0, 1.0)"
    argv = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_path), "--set", "seeds=(0,)",
            "--set", "prune.baselines=()", "--set", "score_check.groups=4", "--set", "revit_epochs=0",
            "--set", "finetune.scratch_baseline=False", "--set", "dense.epochs=1",
            "--set", f"prune.score_weights={weights}", "--set", f"prune.structure_divisors={divisors}"]  # fmt: skip
    assert main("nvit", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv) == 0
    record = load_record(tmp_path / "nvit" / "smoke")
    assert record.config["prune"]["score_weights"] == weights
    (entry,) = record.extra["per_seed"]
    assert [s["target"] for s in entry["methods"][claims.NVIT]["snapshots"]] == [0.6, 0.4]
    variant = reproduce.HESSIAN_RAW if weights == "official" else reproduce.HESSIAN_OFFICIAL
    assert set(entry["score_check"]["rho"]) >= {"hessian", variant}


def test_paper_preset_follows_the_official_recipe():
    cfg = config.paper()
    assert cfg.prune.score_weights == "official" and cfg.prune.structure_divisors == (12.0, 12.0, 2.0, 2.0, 1.0)
    assert cfg.kd.finetune_kl_per_head and cfg.kd.finetune_tau == 20.0 and cfg.kd.kl_reduction == "mean"
    assert cfg.finetune.min_lr == 1e-5 and cfg.finetune.model_ema_decay == 0.99996
    assert cfg.finetune.drop_path == 0.0  # official: 0.1, but its student fine-tunes in eval mode (see the help)
    assert cfg.data.repeated_augmentation and cfg.data.num_workers == 10
    for preset in (config.smoke(), config.mini()):  # new options default to what the committed records computed
        assert preset.prune.score_weights == "dependency" and not preset.kd.finetune_kl_per_head
        assert preset.finetune.min_lr == 0.0 and preset.finetune.model_ema_decay == 0.0
        assert preset.finetune.drop_path == 0.0 and not preset.data.repeated_augmentation
        assert preset.accumulation == 1 and preset.revit_rule == "table6"


def test_variant_records_are_compared_in_the_preset_section(smoke_results, tmp_path):
    import shutil

    src = smoke_results / "nvit" / "smoke"
    record = load_record(src)
    assert reproduce.variants_section(record, tmp_path) == ""
    shutil.copytree(src, tmp_path / reproduce.VARIANTS_DIR / "official-weights")
    text = reproduce.variants_section(record, tmp_path)
    assert "| official-weights | dependency weight sets" in text and "| this record |" in text
    assert "NViT" in text and "kept EMB / H / QK / V / MLP" in text and "also" not in text
    # A variant run with an earlier version of the preset says how else it differs.
    blob = json.loads((tmp_path / reproduce.VARIANTS_DIR / "official-weights" / "record.json").read_text())
    blob["config"]["data"]["train_subset"] = 123
    (tmp_path / reproduce.VARIANTS_DIR / "official-weights" / "record.json").write_text(json.dumps(blob))
    assert "dependency weight sets, divisors 1, 1, 1, 1, 1; also data.train_subset=123 |" in reproduce.variants_section(
        record, tmp_path
    )
