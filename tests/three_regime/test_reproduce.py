"""The CLI end to end: the smoke preset writes a valid record and report; the paper preset's code path at tiny scale."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common.cli import main, report_all
from common.data import DatasetNotFoundError
from common.results import VERDICTS, load_record, read_block
from common.runtime import REPO_ROOT
from tests.smoke import assert_claim_ids_stable
from three_regime import config, reproduce
from three_regime.__main__ import COMMANDS

pytestmark = pytest.mark.e2e  # whole preset runs; `make test` skips them on its second kernel pass


def run_cli(*argv: str) -> int:
    return main("three_regime", presets=config.PRESETS, run=reproduce.run, report=reproduce.report,
                commands=COMMANDS, argv=list(argv))  # fmt: skip


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("results")
    assert run_cli("reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(results_dir)) == 0
    return results_dir


def test_smoke_preset_writes_a_valid_record(smoke_results):
    out_dir = smoke_results / "three_regime" / "smoke"
    assert {p.name for p in out_dir.iterdir()} >= {"record.json", "results.csv", "results.md", "figures"}
    record = load_record(out_dir)
    assert record.paper == "three_regime" and record.preset == "smoke"
    assert_claim_ids_stable(record)
    assert record.command == "python -m three_regime reproduce --preset smoke"
    assert record.config == json.loads(json.dumps(record.config)) and len(record.config_hash) == 12
    assert record.provenance["wall_time_s"] > 0
    phases = record.provenance["phases_s"]  # "data" is there when a job ran in this process (not all cached)
    assert set(phases) - {"data"} == {"grid: dense runs", "grid: cells", "analysis", "case studies", "other"}
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= record.provenance["wall_time_s"] + 0.05
    cfg = config.smoke()
    x = record.extra
    n_t, n_d = len(cfg.grid.training_epochs), len(cfg.grid.densities)
    assert x["temps"] == [2, 4, 6] and x["densities"] == list(cfg.grid.densities)  # hot (fewest epochs) first
    for key in ("test_error", "mc", "cka"):
        assert np.asarray(x["mean"][key]).shape == (n_t, n_d)
    # CKA <= 1 by Cauchy-Schwarz; it is computed in float64, so rounding can exceed 1 by ~1e-13 at most
    assert np.all(np.asarray(x["mean"]["cka"]) <= 1.0 + 1e-9) and np.all(np.asarray(x["mean"]["test_error"]) <= 100)
    assert {r for row in x["regimes"] for r in row} <= {"I", "II-A", "II-B"}
    achieved = np.asarray(x["per_seed"]["achieved_density"])[0]
    assert np.allclose(achieved, np.asarray(cfg.grid.densities)[None, :], atol=0.2)  # density = target (%)
    m = record.get(reproduce.GRID_TABLE, "training_epochs = 2, density 5%", "mc (train error)")
    assert m.n == len(cfg.seeds) and m.mean == pytest.approx(x["mean"]["mc"][0][0])
    assert record.get(reproduce.CASE_TABLES["selection"], "oracle", "mean test error reached").mean <= min(
        record.get(reproduce.CASE_TABLES["selection"], r, "mean test error reached").mean for r in reproduce.RULES
    )
    assert [c.id for c in record.claims] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert all(c.verdict in VERDICTS for c in record.claims)
    for c in record.claims[:5]:  # judged with intervals (one dense seed: no interval, no halves)
        assert c.effect and c.n == len(cfg.seeds) and c.precondition and c.stats["tests"]
    assert record.claims[-1].verdict == "not testable here"  # no SAM axis in this preset
    assert (out_dir / "figures" / "phase_diagrams.png").stat().st_size > 10_000
    assert (out_dir / "figures" / "regime_map.png").is_file()


def test_report_renders_the_readme_block(smoke_results, tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "three_regime" / "README.md", readme)
    content = report_all("three_regime", smoke_results, reproduce.report, readme=readme)
    block = read_block(readme.read_text(), "results")
    assert block == content.strip()
    assert "### Preset `smoke` (`make reproduce-three_regime PRESET=smoke`)" in block
    for text in ("figures/phase_diagrams.png", "#### Regime map", "Case study 1", "Case study 2", "#### Claims",
                 "How verdicts are decided", "Halves A / B", "regime rule - baseline (95% CI)"):  # fmt: skip
        assert text in block
    again = report_all("three_regime", smoke_results, reproduce.report, readme=None, link_base=tmp_path)
    assert again == content  # re-rendering from the saved record gives the same block


@pytest.mark.timeout(600)
@pytest.mark.slow  # `make test-slow`; CI keeps darex's 1-vs-2-worker test and tests/common/test_parallel.py
def test_one_and_two_workers_write_the_same_record(tmp_path):
    """The smoke preset with two dense seeds (so cells of one seed run while the other's dense model trains) in
    this process and in two worker processes: the same record apart from timings and the worker count."""
    records = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        sets = ["data.num_samples=1000", "seeds=(0,1)", f"shard.workers={workers}"]
        argv = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(out)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PRUNE_REPRO_CACHE", str(out / "cache"))
            assert run_cli(*argv, *[a for s in sets for a in ("--set", s)]) == 0
        record = json.loads((out / "three_regime" / "smoke" / "record.json").read_text())
        for key in ("provenance", "config", "config_hash", "command"):  # timings, and shard.workers
            record.pop(key)
        record["extra"].pop("workers")
        records[workers] = record
    assert records[1] == records[2]


def test_rerun_reuses_the_cached_cells(smoke_results, monkeypatch):
    from three_regime import grid

    monkeypatch.setattr(grid, "compute_cell", lambda *a, **k: pytest.fail("a cached cell was recomputed"))
    assert run_cli("reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(smoke_results)) == 0
    assert "data" not in load_record(smoke_results / "three_regime" / "smoke").provenance["phases_s"]  # not loaded


def test_paper_preset_without_cifar_says_what_to_put_where(tmp_results, capsys):
    assert run_cli("reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_results)) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "--set data.root=" in err and "Traceback" not in err
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        run_cli("reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_results), "--debug")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def test_paper_code_path_at_tiny_scale(tmp_results, tmp_path, monkeypatch, device):
    """PreResNet on CIFAR-shaped images (a fake CIFAR-10 of random pixels) through the whole pipeline; on CUDA
    too under ``make test-gpu`` (float32, one process: the jobs do not use mixed precision)."""
    from three_regime import data

    rng = np.random.default_rng(0)

    def fake_cifar10(root, train=True, **kwargs):
        n = 64 if train else 32
        return SimpleNamespace(data=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                               targets=rng.integers(0, 10, n).tolist())  # fmt: skip

    monkeypatch.setattr(data, "cifar10", fake_cifar10)
    (tmp_path / "cifar-10-batches-py").mkdir()
    sets = [f"data.root={tmp_path}", "model.depth=8", "seeds=(1,)", "train.epochs=2", "retrain.seeds=(1,2)",
            "retrain.epochs=1", "retrain.test_error_last_epochs=1", "metrics.lmc_points=3", "metrics.cka_samples=16",
            "grid.training_epochs=(1,2)", "grid.densities=(10.0,80.0)"]  # fmt: skip
    argv = ["reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_results), "--device", device]
    assert run_cli(*argv, *[a for s in sets for a in ("--set", s)]) == 0
    record = load_record(tmp_results / "three_regime" / "paper")
    assert record.provenance["device"].startswith(device)
    assert np.asarray(record.extra["mean"]["mc"]).shape == (2, 2)
    assert record.config["model"]["arch"] == "preresnet" and record.config["data"]["augment"] is True
    # the official recipe (issue 13): raw-input projection shortcuts, black crop padding, BN pass of 64 per sample
    assert record.config["model"]["shortcut_input"] == "input" and record.config["data"]["crop_fill"] == "black"
    assert record.config["metrics"]["bn_batch_size"] == 64 and record.config["metrics"]["bn_weighting"] == "sample"
