"""A second run of a preset with another seed set, compared claim by claim with the committed record.

A verdict that flips on a re-run is not a result. Every claim is already judged on two halves of its seeds
(:func:`common.stats.replicate`); this module adds the stronger check: the whole preset run again with a
disjoint seed set (``--set seeds=...``), its record kept beside the committed one as
``results/<paper>/<preset>/replica/record.json``, and the two compared by claim id::

    python -m common.replication nvit            # print the comparison, write replica/replication.md
    python -m common.replication nvit --check    # exit 1 if a claim moved between reproduced and not reproduced

A claim **moved** when one run says reproduced and the other not reproduced (the failure the check exists for);
it **changed** when the verdicts differ otherwise (e.g. reproduced in one run, inconclusive in the other: the
evidence is weaker than one run suggests, but neither run contradicts the other); else it is the **same**. The
card's results block and ``results/README.md`` show the comparison when a replica exists.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from .results import RECORD_FILE, RunRecord, load_record, markdown_table
from .runtime import results_root
from .stats import NOT_REPRODUCED, REPRODUCED

REPLICA_DIR = "replica"
REPORT_FILE = "replication.md"

SAME, CHANGED, MOVED = "same", "changed", "moved"
_DECISIVE = frozenset({REPRODUCED, NOT_REPRODUCED})


@dataclass(frozen=True)
class Row:
    id: str
    claim: str
    verdict: str
    """The committed record's verdict (``""`` when the claim is only in the replica)."""
    replica_verdict: str
    effect: str
    replica_effect: str
    status: str


def status(verdict: str, replica_verdict: str) -> str:
    """:data:`SAME`, :data:`MOVED` (reproduced in one run, not reproduced in the other) or :data:`CHANGED`."""
    if verdict == replica_verdict:
        return SAME
    return MOVED if {verdict, replica_verdict} == _DECISIVE else CHANGED


def compare(record: RunRecord, replica: RunRecord) -> list[Row]:
    """One row per claim id of either record, in the committed record's order (claims without an id, from
    records older than the ids, cannot be matched and are left out)."""
    ours = {c.id: c for c in record.claims if c.id}
    theirs = {c.id: c for c in replica.claims if c.id}
    ids = list(ours) + [i for i in theirs if i not in ours]
    rows = []
    for i in ids:
        a, b = ours.get(i), theirs.get(i)
        va, vb = (a.verdict if a else ""), (b.verdict if b else "")
        rows.append(Row(i, (a or b).claim, va, vb, a.effect if a else "", b.effect if b else "",
                        status(va, vb) if a and b else CHANGED))  # fmt: skip
    return rows


def load_replica(record_dir: Path) -> RunRecord | None:
    """The replica beside the record in ``record_dir`` (``<record_dir>/replica/record.json``), if there is one."""
    path = record_dir / REPLICA_DIR
    return load_record(path) if (path / RECORD_FILE).exists() else None


def _seeds(record: RunRecord) -> str:
    return ", ".join(str(s) for s in record.seeds) or "–"


def summary(rows: list[Row]) -> str:
    """'9 of 11 claims kept their verdict; 2 changed (C5, C6); none moved between reproduced and not reproduced.'"""
    n = len(rows)
    changed = [r.id for r in rows if r.status == CHANGED]
    moved = [r.id for r in rows if r.status == MOVED]
    text = f"{n - len(changed) - len(moved)} of {n} claims kept their verdict"
    if changed:
        text += f"; {len(changed)} changed ({', '.join(changed)})"
    if moved:
        text += f"; **{len(moved)} moved between reproduced and not reproduced ({', '.join(moved)})**"
    else:
        text += "; none moved between reproduced and not reproduced"
    return text + "."


def markdown(record: RunRecord, replica: RunRecord, heading_level: int = 4) -> str:
    """The comparison as a Markdown section: the two runs, the summary, one row per claim."""
    rows = compare(record, replica)
    table = markdown_table(
        ("Claim", "Verdict (seeds " + _seeds(record) + ")", "Effect", "Verdict (seeds " + _seeds(replica) + ")",
         "Effect", "Same?"),
        [(r.id, r.verdict or "–", r.effect or "–", r.replica_verdict or "–", r.replica_effect or "–", r.status)
         for r in rows],
    )  # fmt: skip
    p, q = record.provenance, replica.provenance
    return (
        f"{'#' * heading_level} Re-run with another seed set\n\n"
        f"The same preset run again with disjoint seeds: `{replica.command}` (commit "
        f"`{str(q.get('git_commit', 'unknown'))[:10]}`, {q.get('device_name', '?')}, {q.get('wall_time_s', '?')} s), "
        f"against the record above (commit `{str(p.get('git_commit', 'unknown'))[:10]}`). {summary(rows)} A claim "
        f"*moved* when one run says reproduced and the other not reproduced; *changed* when the verdicts differ "
        f"otherwise (the evidence is weaker than one run suggests, but the runs do not contradict each other).\n\n"
        f"{table}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.replication",
        description="Compare a preset's committed record with its replica (the same preset run with another "
        "seed set, saved as results/<paper>/<preset>/replica/record.json), claim by claim.",
    )
    parser.add_argument("paper", help="package name, e.g. nvit")
    parser.add_argument("--preset", default="mini", help="preset whose record and replica to compare (default: mini)")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: the project's)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a claim moved between reproduced and not reproduced")  # fmt: skip
    args = parser.parse_args(argv)
    record_dir = (args.results or results_root()) / args.paper / args.preset
    if not (record_dir / RECORD_FILE).exists():
        parser.error(f"no record at {record_dir / RECORD_FILE}")
    replica = load_replica(record_dir)
    if replica is None:
        parser.error(f"no replica at {record_dir / REPLICA_DIR / RECORD_FILE}: run the preset with another seed "
                     f"set (--set seeds=...) and save its record there")  # fmt: skip
    record = load_record(record_dir)
    text = markdown(record, replica)
    (record_dir / REPLICA_DIR / REPORT_FILE).write_text(text + "\n")
    print(text)
    moved = [r for r in compare(record, replica) if r.status == MOVED]
    return 1 if args.check and moved else 0


if __name__ == "__main__":
    sys.exit(main())
