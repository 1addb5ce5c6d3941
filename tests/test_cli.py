"""The shared command line, end to end on the one preset that computes something (darex smoke)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from common.cli import NotImplementedYet, main, report_all
from common.results import load_record, read_block
from common.runtime import REPO_ROOT
from darex import config, reproduce
from darex.__main__ import COMMANDS
from tests.smoke import assert_claim_ids_stable


def run_cli(*argv: str) -> int:
    return main("darex", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, commands=COMMANDS,
                argv=list(argv))  # fmt: skip


@pytest.fixture(scope="module")
def smoke_results(darex_smoke):
    return darex_smoke  # the session's darex smoke run (tests/conftest.py), 2 worker processes


def test_smoke_run_writes_a_valid_record(smoke_results):
    out_dir = smoke_results / "darex" / "smoke"
    assert {p.name for p in out_dir.iterdir()} >= {"record.json", "results.csv", "results.md"}
    record = load_record(out_dir)
    assert record.paper == "darex" and record.preset == "smoke"
    assert_claim_ids_stable(record)
    assert record.command == "python -m darex reproduce --preset smoke"
    assert record.config == json.loads(json.dumps(record.config)) and len(record.config_hash) == 12
    assert record.provenance["wall_time_s"] > 0 and record.provenance["threads"] >= 1
    assert record.provenance["packages"]["torch"]
    usage = record.provenance["machine"]  # how the run used the machine (common.machine); the probe is off in tests
    assert usage["cpu_s"] > 0 and 0 < usage["cores_busy"] <= usage["cores"] + 0.1
    assert usage["speed_probe"] is None
    cfg = config.smoke()
    n_masks = len(cfg.prune.mask_seeds) * len(cfg.seeds)
    assert record.extra["regimes"] == ["text", "synthetic"]
    for key, label in reproduce.METHODS.items():
        for p in cfg.prune.rates:
            if key == "darex_q_optimised" and p not in cfg.prune.optimise_rates:
                continue
            m = record.get(reproduce.MAIN_TABLE, label, f"accuracy, p={p}")
            assert m.n == (n_masks if key in reproduce.RANDOM_METHODS else len(cfg.seeds))
            assert 0.0 <= m.mean <= 100.0
    assert len(record.claims) >= 3 and all(c.verdict for c in record.claims)
    assert {"standard", "large-delta"} <= set(record.extra["delta_statistics"])
    assert (out_dir / "figures" / "metric_vs_rate.png").is_file()
    assert (out_dir / "figures" / "rescaling_factor.png").is_file()
    # Where the time went: the run's phases (the jobs run in worker processes) plus the rest ("other"), within the
    # wall time; inside the jobs, every phase of both regimes (summed over the jobs, so not bounded by the wall).
    phases = record.provenance["phases_s"]
    assert set(phases) == {"fine-tuning and pre-training", "pruning and evaluation", "record and claims", "other"}
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= record.provenance["wall_time_s"] + 0.05
    assert set(record.extra["job_phases_s"]) == {"data", "fine-tuning", "pre-training", "deltas and pruning",
                                                 "q search", "evaluation", "storage", "Fig. 1 curve"}  # fmt: skip


def test_report_renders_the_readme_block(smoke_results, tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "darex" / "README.md", readme)
    saved = (smoke_results / "darex" / "smoke" / "record.json").read_bytes()
    content = report_all("darex", smoke_results, reproduce.report, readme=readme)
    assert (smoke_results / "darex" / "smoke" / "record.json").read_bytes() == saved  # report never edits a record
    block = read_block(readme.read_text(), "results")
    assert block == content.strip()
    assert "### Preset `smoke` (`make reproduce-darex PRESET=smoke`)" in block
    assert "| DARE (1/(1-p)) |" in block and "![metric vs pruning rate](" in block
    assert "python -m darex reproduce --preset smoke" in block
    # Re-rendering from the saved record alone gives the same block (make report is reproducible).
    assert report_all("darex", smoke_results, reproduce.report, readme=readme) == content


def test_rerun_uses_the_cache(smoke_results, tmp_path, monkeypatch):
    """A second run finds the trained models in the cache (an interrupted run resumes) and agrees."""
    from darex import synthetic

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached pre-trained/fine-tuned pair should have been reused")

    monkeypatch.setenv("PRUNE_REPRO_CACHE", str(smoke_results / "cache"))  # the first run's cache
    monkeypatch.setenv("PRUNE_REPRO_WORKERS", "1")  # in this process, where the patches apply
    monkeypatch.setattr(reproduce, "finetune", must_not_train)
    monkeypatch.setattr(synthetic, "train", must_not_train)
    assert run_cli("reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_path)) == 0
    first = load_record(smoke_results / "darex" / "smoke")
    second = load_record(tmp_path / "darex" / "smoke")
    assert [m.values for m in first.measurements] == [m.values for m in second.measurements]


def test_presets_and_dry_run(capsys):
    assert run_cli("presets") == 0
    assert "smoke:" in capsys.readouterr().out
    assert run_cli("reproduce", "--preset", "smoke", "--dry-run", "--set", "prune.rates=(0.5,)") == 0
    out = capsys.readouterr().out
    assert '"rates": [\n      0.5\n    ]' in out and "config hash:" in out


@pytest.mark.parametrize("bad", ["prune.rates='high'", "nope=1", "synthetic.hidden=1.5", "experiment=other"])
def test_bad_override_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("reproduce", "--preset", "smoke", "--set", bad)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_rebase_links(tmp_path):
    from common.cli import rebase_links

    md = "![fig](figures/a.png) [doc](https://x.org/a) [top](#results) ![abs](/abs.png)"
    out = rebase_links(md, tmp_path / "results" / "darex" / "smoke", tmp_path / "darex")
    assert out == "![fig](../results/darex/smoke/figures/a.png) [doc](https://x.org/a) [top](#results) ![abs](/abs.png)"


def test_synthetic_experiment(tmp_path):
    """The notes' MLP toy runs through the same CLI (``--set experiment=synthetic``)."""
    args = [
        "--set",
        "experiment=synthetic",
        "--set",
        "synthetic.pretrain_steps=200",
        "--set",
        "synthetic.finetune_steps=100",
    ]
    assert run_cli("reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_path), *args) == 0
    record = load_record(tmp_path / "darex" / "smoke")
    from darex.regimes import SYNTHETIC_DROPPED, reference_table

    assert record.extra["regimes"] == ["synthetic"]
    finetuned = record.get(reference_table("synthetic"), "fine-tuned (unpruned)", "accuracy")
    pretrained = record.get(reference_table("synthetic"), SYNTHETIC_DROPPED, "accuracy")
    assert finetuned.mean > pretrained.mean, "fine-tuning learned the new task"
    assert (tmp_path / "darex" / "smoke" / "figures" / "accuracy_vs_rescaling.png").is_file()
    assert {c.id for c in record.claims} == {f"C{i}-mlp" for i in range(1, 6)}
    phases = record.provenance["phases_s"]
    assert set(phases) == {"fine-tuning and pre-training", "pruning and evaluation", "record and claims", "other"}
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= record.provenance["wall_time_s"] + 0.05
    assert set(record.extra["job_phases_s"]) == {"pre-training", "fine-tuning", "data", "evaluation",
                                                 "deltas and pruning", "q search"}  # fmt: skip


@pytest.mark.kernel_independent
def test_save_every_reaches_the_run_and_is_restored(monkeypatch, tmp_path, capsys):
    """--save-every sets the epochs between saves for the run (its worker processes read it from the environment),
    the paper preset saves every epoch by default and the others never, the setting ends with the run, and a
    negative value is refused by the parser."""
    from common import resume

    seen = []

    def fake_run(cfg, ctx):
        seen.append(resume.save_every())
        raise NotImplementedYet("stop here")

    monkeypatch.delenv(resume.SAVE_EVERY_ENV, raising=False)
    for argv, expected in ((["--preset", "smoke"], 0), (["--preset", "paper"], 1),
                           (["--preset", "smoke", "--save-every", "3"], 3)):  # fmt: skip
        main("darex", presets=config.PRESETS, run=fake_run,
             argv=["reproduce", *argv, "--no-readme", "--results-dir", str(tmp_path)])  # fmt: skip
        assert seen[-1] == expected and resume.SAVE_EVERY_ENV not in os.environ
    with pytest.raises(SystemExit):
        main("darex", presets=config.PRESETS, run=fake_run, argv=["reproduce", "--save-every", "-1"])
    assert "--save-every" in capsys.readouterr().err
