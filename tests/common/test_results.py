from __future__ import annotations

import csv
import io
import json
import math
import subprocess

import pytest

from common import results
from common.results import Claim, Measurement, RunRecord

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


def make_record() -> RunRecord:
    record = RunRecord(
        paper="toy", preset="smoke", command="python -m toy reproduce --preset smoke", config={"lr": 0.1},
        config_hash="abc123", seeds=[0, 1, 2],
        provenance=results.provenance(device="cpu", device_name="test cpu", threads=2),
    )  # fmt: skip
    record.add("Table 1", "pruned 50%", "top-1", [90.0, 91.0, 92.0], seeds=[0, 1, 2], unit="%", paper=89.5,
               paper_source="Table 1")  # fmt: skip
    record.add("Table 1", "dense | ref", "params", 1234, digits=0)
    record.claim("pruning helps", paper_evidence="Table 1", our_evidence="+1 pp", verdict=results.REPRODUCED)
    record.extra["curve"] = [1, 2, 3]
    return record


def test_mean_std_uses_sample_std():
    mean, std = results.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))
    assert results.mean_std([7.0]) == (7.0, 0.0)
    assert results.format_mean_std([90.0, 91.0, 92.0]) == "91.00 ± 1.00"
    assert results.format_mean_std([0.5], digits=3) == "0.500"
    with pytest.raises(ValueError):
        results.mean_std([])


def test_record_round_trips_through_disk(tmp_path):
    record = make_record()
    path = results.write_record(record, tmp_path / "toy" / "smoke")
    loaded = results.load_record(path.parent)
    assert loaded.to_json() == record.to_json()
    assert loaded.get("Table 1", "pruned 50%", "top-1").mean == 91.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json", "results.csv", "results.md"]


def test_record_json_is_self_describing(tmp_path):
    data = json.loads(results.write_record(make_record(), tmp_path).read_text())
    assert data["schema"] == results.SCHEMA_VERSION
    assert {"git_commit", "git_dirty", "packages", "device", "threads", "wall_time_s", "python"} <= set(
        data["provenance"]
    )
    assert data["provenance"]["packages"]["torch"]
    m = data["measurements"][0]
    assert m["mean"] == 91.0 and m["std"] == 1.0 and m["n"] == 3 and m["values"] == [90.0, 91.0, 92.0]


def test_git_state_in_this_checkout():
    state = results.git_state()
    assert set(state) == {"git_commit", "git_dirty"}
    if state["git_commit"] is not None:  # a fresh `git init` without commits has no HEAD
        assert len(state["git_commit"]) == 40


def test_git_state_ignores_outputs_but_not_code(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "results").mkdir()
    for name in ("code.py", "README.md", "results/r.json"):
        (tmp_path / name).write_text("0")
    git("add", ".")
    git("commit", "-qm", "init")
    assert results.git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "README.md").write_text("a regenerated results block")
    (tmp_path / "results" / "r.json").write_text("1")
    assert results.git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("1")
    assert results.git_state(tmp_path)["git_dirty"] is True


def test_schema_mismatch_is_refused(tmp_path):
    path = results.write_record(make_record(), tmp_path)
    data = json.loads(path.read_text())
    data["schema"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="schema"):
        results.load_record(path)


def test_measurement_validation():
    with pytest.raises(ValueError, match="source"):
        Measurement(table="t", setting="s", metric="m", values=[1.0], paper=2.0)
    with pytest.raises(ValueError, match="seeds"):
        Measurement(table="t", setting="s", metric="m", values=[1.0, 2.0], seeds=[0])
    with pytest.raises(ValueError, match="no values"):
        Measurement(table="t", setting="s", metric="m", values=[])
    with pytest.raises(ValueError, match="verdict"):
        Claim(claim="c", paper_evidence="p", our_evidence="o", verdict="sort of")


def test_rendered_tables():
    md = results.render_record(make_record())
    assert "| pruned 50% | top-1 [%] | 89.50 (Table 1) | 91.00 ± 1.00 | 3 |" in md
    assert "| dense \\| ref | params | – | 1234 | 1 |" in md  # "|" escaped, no paper number shown as "–"
    assert "| pruning helps | Table 1 | +1 pp | **reproduced** |" in md
    assert "python -m toy reproduce --preset smoke" in md


def test_csv_has_one_row_per_measurement():
    rows = list(csv.DictReader(io.StringIO(results.measurements_csv(make_record().measurements))))
    assert len(rows) == 2 and rows[0]["values"] == "90.0;91.0;92.0" and rows[0]["paper"] == "89.5"
    assert rows[1]["paper"] == "" and float(rows[0]["std"]) == 1.0


def test_replace_block():
    text = "intro\n<!-- BEGIN GENERATED: results -->\nold\n<!-- END GENERATED: results -->\noutro\n"
    new = results.replace_block(text, "results", "new table")
    assert new == "intro\n<!-- BEGIN GENERATED: results -->\nnew table\n<!-- END GENERATED: results -->\noutro\n"
    assert results.replace_block(new, "results", "new table") == new, "idempotent"
    assert results.read_block(new, "results") == "new table"
    with pytest.raises(ValueError, match="exactly one pair"):
        results.replace_block("no markers", "results", "x")
    with pytest.raises(ValueError, match="comes before"):
        results.replace_block("<!-- END GENERATED: r -->\n<!-- BEGIN GENERATED: r -->", "r", "x")


def test_update_readme_block_reports_change(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN GENERATED: results -->\n<!-- END GENERATED: results -->\n")
    assert results.update_readme_block(readme, "results", "table") is True
    assert results.update_readme_block(readme, "results", "table") is False
    assert "table" in readme.read_text()


def test_provenance_holds_no_local_paths():
    """Records are committed: nothing in them may name this machine's folders."""
    from common.runtime import REPO_ROOT

    text = json.dumps(results.provenance(device="cpu", device_name="x", threads=1))
    assert str(REPO_ROOT) not in text and "/home/" not in text


def test_provenance_line_shows_the_time_by_phase():
    record = make_record()
    record.provenance.update(wall_time_s=200.0, phases_s={"dense training": 150.0, "evaluation": 30.0, "other": 20.0})
    first_paragraph = results.render_record(record).split("\n\n", 1)[0]
    assert "3.3 min" in first_paragraph
    assert first_paragraph.endswith(
        "Time by phase: dense training 2.5 min (75%) · evaluation 30 s (15%) · other 20 s (10%)"
    )
    del record.provenance["phases_s"]
    assert "Time by phase" not in results.render_record(record)  # records from before the breakdown render as before
