"""A preset re-run with another seed set, compared claim by claim with the committed record."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import overview, replication
from common.results import RunRecord, write_record
from common.stats import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED, Test, mean_ci, replicate

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


def _record(seeds: list[int], shifts: dict[str, float]) -> RunRecord:
    """A record whose claim ``cid`` has per-seed effects around ``shift`` (margin 0: > 0 reproduces)."""
    record = RunRecord(paper="nvit", preset="mini", command=f"python -m nvit reproduce --set seeds={seeds}",
                       config={}, config_hash="abc", seeds=seeds,
                       provenance={"git_commit": "0123456789abcdef", "wall_time_s": 12.5})  # fmt: skip
    noise = [0.1, -0.1, 0.05, -0.05]
    for cid, shift in shifts.items():
        values = {s: shift + noise[i % 4] for i, s in enumerate(seeds)}
        j = replicate(lambda ss, v=values: [Test("a - b", mean_ci([v[s] for s in ss]))], seeds)
        record.claim(f"claim {cid}", paper_evidence="-", our_evidence="-", judgement=j, id=cid)
    return record


def test_status_separates_moved_from_changed():
    assert replication.status(REPRODUCED, REPRODUCED) == replication.SAME
    assert replication.status(REPRODUCED, NOT_REPRODUCED) == replication.MOVED
    assert replication.status(NOT_REPRODUCED, REPRODUCED) == replication.MOVED
    assert replication.status(REPRODUCED, INCONCLUSIVE) == replication.CHANGED
    assert replication.status(PARTLY, REPRODUCED) == replication.CHANGED


def test_compare_matches_claims_by_id_and_summarises():
    a = _record([0, 1, 2, 3], {"C1": 1.0, "C2": 1.0, "C3": 1.0})
    b = _record([4, 5, 6, 7], {"C1": 1.0, "C2": -1.0, "C4": 1.0})  # C2 flips, C3 missing, C4 new
    rows = {r.id: r for r in replication.compare(a, b)}
    assert [r.id for r in replication.compare(a, b)] == ["C1", "C2", "C3", "C4"]
    assert rows["C1"].status == replication.SAME and rows["C1"].verdict == REPRODUCED
    assert rows["C2"].status == replication.MOVED and rows["C2"].replica_verdict == NOT_REPRODUCED
    assert rows["C3"].status == replication.CHANGED and rows["C3"].replica_verdict == ""
    text = replication.summary(list(rows.values()))
    assert text.startswith("1 of 4 claims kept their verdict")
    assert "moved between reproduced and not reproduced (C2)" in text


def test_cli_writes_the_report_and_check_fails_only_on_a_move(tmp_path: Path, capsys):
    write_record(_record([0, 1, 2, 3], {"C1": 1.0, "C2": 1.0}), tmp_path / "nvit" / "mini")
    assert replication.load_replica(tmp_path / "nvit" / "mini") is None
    write_record(_record([4, 5, 6, 7], {"C1": 1.0, "C2": 0.0}), tmp_path / "nvit" / "mini" / "replica")
    args = ["nvit", "--results", str(tmp_path), "--check"]
    assert replication.main(args) == 0  # C2 only softened (inconclusive): not a move
    out = capsys.readouterr().out
    assert "seeds 4, 5, 6, 7" in out and "none moved" in out
    assert (tmp_path / "nvit" / "mini" / "replica" / replication.REPORT_FILE).exists()
    write_record(_record([4, 5, 6, 7], {"C1": 1.0, "C2": -1.0}), tmp_path / "nvit" / "mini" / "replica")
    assert replication.main(args) == 1
    page = overview.render(tmp_path)
    assert "1 moved" in page  # the overview's replication section reads the replica too
    # and the claims table, which users cite, says beside the verdict that the re-run disagrees
    assert f"**{REPRODUCED}** (re-run with other seeds: {NOT_REPRODUCED}; moved)" in page
    assert "**reproduced** (re-run" not in page.split("C2")[0]  # C1 kept its verdict: nothing added
