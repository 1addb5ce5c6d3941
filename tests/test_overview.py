"""results/README.md: every claim on one page, generated from the committed records, never stale."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from common import overview
from common.cli import cite_line
from common.results import RunRecord, load_record, write_record
from common.runtime import REPO_ROOT
from common.stats import Test, mean_ci, replicate

RESULTS = REPO_ROOT / "results"
ID = re.compile(r"^C\d+[a-z]?(-[a-z0-9]+)?$")  # C3, C3a, C1-mlp (a claim judged per regime)


def test_committed_overview_matches_the_records():
    diff = overview.check(RESULTS)
    assert diff == "", f"results/README.md is stale; run `make report`:\n{diff[:3000]}"


@pytest.mark.parametrize("paper", [p.package for p in overview.PAPERS])
def test_claim_ids_are_stable_names(paper):
    """Ids are unique in a record, and a claim keeps its id across presets (smoke and mini run the same rules)."""
    by_preset = {}
    for preset in ("smoke", "mini"):
        path = RESULTS / paper / preset
        if (path / "record.json").exists():
            record = load_record(path)
            ids = [c.id for c in record.claims if c.id]
            assert len(ids) == len(set(ids)), f"{paper}/{preset}: duplicate claim ids {ids}"
            assert all(ID.match(i) for i in ids), f"{paper}/{preset}: ids must look like C3, C3a or C1-mlp: {ids}"
            by_preset[preset] = {c.id: c for c in record.claims if c.id}
    if {"smoke", "mini"} <= by_preset.keys():
        for cid in by_preset["smoke"].keys() & by_preset["mini"].keys():
            smoke_words = set(by_preset["smoke"][cid].claim.lower().split()[:4])
            mini_words = set(by_preset["mini"][cid].claim.lower().split()[:4])
            assert smoke_words & mini_words, f"{paper}.{cid} names different claims in smoke and mini"


def _record(tmp: Path, paper: str, verdict_shift: float) -> None:
    record = RunRecord(paper=paper, preset="mini", command=f"python -m {paper} reproduce --preset mini", config={},
                       config_hash="abc", seeds=[0, 1, 2, 3], provenance={"git_commit": "0123456789abcdef",
                       "started_at": "2026-12-01T00:00:00"})  # fmt: skip
    record.add("Table 1 analogue", "method", "top-1", [80.0, 81.0, 80.5, 80.7], seeds=[0, 1, 2, 3], unit="%",
               paper=83.29, paper_source="Table 1")  # fmt: skip
    effects = {0: 1.0, 1: 1.2, 2: 0.9, 3: 1.1}
    j = replicate(lambda seeds: [Test("a - b", mean_ci([effects[s] + verdict_shift for s in seeds]))], [0, 1, 2, 3])
    record.claim("A beats B | at equal cost", paper_evidence="Table 1", our_evidence="see effect", judgement=j, id="C1")
    write_record(record, tmp / paper / "mini")


def test_overview_lists_links_and_detects_staleness(tmp_path):
    _record(tmp_path, "nvit", 0.0)
    text = overview.render(tmp_path)
    assert "[nvit.C1](../nvit/README.md#nvit-mini-c1)" in text
    assert "A beats B \\| at equal cost" in text and "**reproduced**" in text and "`0123456789`, 2026-12-01" in text
    assert "83.29 (Table 1)" in text and "**1 claims**" in text
    assert overview.check(tmp_path) != ""  # nothing written yet
    overview.write(tmp_path)
    assert overview.check(tmp_path) == ""
    _record(tmp_path, "nvit", -5.0)  # a re-run whose verdict changed: the committed page is now stale
    assert "not reproduced" in overview.check(tmp_path)
    assert overview.main(["--check", "--results-dir", str(tmp_path)]) == 1
    assert overview.main(["--results-dir", str(tmp_path)]) == 0
    assert overview.main(["--check", "--results-dir", str(tmp_path)]) == 0


def test_cite_line_names_claims_and_commit(tmp_path):
    _record(tmp_path, "darex", 0.0)
    line = cite_line("darex", tmp_path)
    assert "claim `darex.C1`" in line and "`0123456789`" in line and "CITATION.cff" in line
    assert cite_line("darex", tmp_path / "nowhere") == ""


def test_card_rows_carry_the_anchor_the_overview_links_to():
    for paper in overview.PAPERS:
        readme = (REPO_ROOT / paper.package / "README.md").read_text()
        for record in overview.cited_records(RESULTS, paper.package):
            for c in record.claims:
                if c.id:
                    anchor = f'<a id="{paper.package}-{record.preset}-{c.id}"></a>'.lower()
                    assert anchor in readme.lower(), f"{paper.package}: card lacks {anchor}; run `make report`"


def test_citation_file_is_valid_cff():
    data = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text())
    assert data["cff-version"] == "1.2.0" and data["title"] and data["authors"]


def test_overview_of_a_copy_of_the_committed_results_is_reproducible(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results")
    assert overview.render(tmp_path / "results") == overview.render(RESULTS)


@pytest.mark.parametrize("paper", overview.PAPERS, ids=lambda p: p.package)
def test_committed_mini_runs_are_within_their_budgets(paper):
    """Issue 17: ``make reproduce-<paper>`` fits its budget on an idle 2-core machine. Every committed timed run of
    the ``mini`` preset (the record and its re-run with other seeds) says so in its own wall time; a run over the
    budget must be made faster (or the budget argued anew), not committed."""
    runs = overview.mini_runs(RESULTS, paper)
    assert runs, f"{paper.package} has no committed mini record"
    for which, record in runs:
        wall = record.provenance["wall_time_s"]
        commit = str(record.provenance.get("git_commit"))[:10]
        assert wall <= 60 * paper.budget_min(record), (
            f"{paper.package} mini ({which}, commit {commit}) took {wall:.0f} s, over its "
            f"{paper.budget_min(record):g}-minute budget"
        )
