"""The shared command line, end to end on the one preset that computes something (darex smoke)."""

from __future__ import annotations

import json
import shutil

import pytest

from common.cli import main, report_all
from common.results import load_record, read_block
from common.runtime import REPO_ROOT
from darex import config, reproduce


def run_cli(*argv: str) -> int:
    return main("darex", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=list(argv))


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("results")
    assert run_cli("reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(results_dir)) == 0
    return results_dir


def test_smoke_run_writes_a_valid_record(smoke_results):
    out_dir = smoke_results / "darex" / "smoke"
    assert {p.name for p in out_dir.iterdir()} >= {"record.json", "results.csv", "results.md"}
    record = load_record(out_dir)
    assert record.paper == "darex" and record.preset == "smoke"
    assert record.command == "python -m darex reproduce --preset smoke"
    assert record.config == json.loads(json.dumps(record.config)) and len(record.config_hash) == 12
    assert record.provenance["wall_time_s"] > 0 and record.provenance["threads"] >= 1
    assert record.provenance["packages"]["torch"]
    finetuned = record.get(reproduce.TABLE, "fine-tuned (unpruned)", "top-1 accuracy")
    pretrained = record.get(reproduce.TABLE, "pre-trained (no delta)", "top-1 accuracy")
    assert finetuned.mean > pretrained.mean, "fine-tuning learned the new task"
    dare_099 = record.get(reproduce.TABLE, "DARE, p=0.99", "top-1 accuracy")
    assert dare_099.n == len(config.smoke().mask_seeds) * len(config.smoke().seeds)


def test_report_renders_the_readme_block(smoke_results, tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "darex" / "README.md", readme)
    content = report_all("darex", smoke_results, reproduce.report, readme=readme)
    block = read_block(readme.read_text(), "results")
    assert block == content.strip()
    assert "### Preset `smoke` (`make reproduce-darex PRESET=smoke`)" in block
    assert "| fine-tuned (unpruned) | top-1 accuracy [%] |" in block
    assert "python -m darex reproduce --preset smoke" in block
    # Re-rendering from the saved record alone gives the same block (make report is reproducible).
    assert report_all("darex", smoke_results, reproduce.report, readme=readme) == content


def test_rerun_uses_the_cache(smoke_results, tmp_path, monkeypatch):
    """A second run finds the trained models in the cache (an interrupted run resumes) and agrees."""

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached pre-trained/fine-tuned pair should have been reused")

    monkeypatch.setattr(reproduce, "_fine_tuned_pair", must_not_train)
    assert run_cli("reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_path)) == 0
    first = load_record(smoke_results / "darex" / "smoke")
    second = load_record(tmp_path / "darex" / "smoke")
    assert [m.values for m in first.measurements] == [m.values for m in second.measurements]


def test_presets_and_dry_run(capsys):
    assert run_cli("presets") == 0
    assert "smoke:" in capsys.readouterr().out
    assert run_cli("reproduce", "--preset", "smoke", "--dry-run", "--set", "rates=(0.5,)") == 0
    out = capsys.readouterr().out
    assert '"rates": [\n    0.5\n  ]' in out and "config hash:" in out


@pytest.mark.parametrize("bad", ["rates='high'", "nope=1", "synthetic.hidden=1.5"])
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
