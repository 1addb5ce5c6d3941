"""``results/README.md``: every claim of every paper on one page, generated from the committed records alone.

``make report`` rebuilds it (``python -m common.overview``); ``python -m common.overview --check`` exits 1 when
the committed page differs from what the records give, and a test runs that check, so the page cannot go stale.
Claims are named ``<paper>.<id>`` (``nvit.C3``); the ids are fixed in each package's ``claims`` module and kept
when wording or numbers change. Each row links to the claim's row in its card (an anchor written by
:func:`common.results.claim_anchors`).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path

from . import replication
from .results import RECORD_FILE, RunRecord, claim_anchor, load_record, markdown_table
from .runtime import atomic_write_bytes, results_root

OVERVIEW_FILE = "README.md"


@dataclass(frozen=True)
class Paper:
    package: str
    title: str
    venue: str
    mini_budget_min: float
    """Wall-time budget of ``make reproduce-<package>`` (the ``mini`` preset) on an idle 2-core CPU machine from an
    empty cache (issue 17)."""
    mini_budget_cached_min: float | None = None
    """A smaller budget for a run that found an expensive input ready (diffusehigh: the committed base UNet)."""

    def budget_min(self, record: RunRecord) -> float:
        base = record.extra.get("base_model")
        cached = isinstance(base, dict) and base.get("source") == "committed checkpoint"
        return self.mini_budget_cached_min if cached and self.mini_budget_cached_min else self.mini_budget_min


PAPERS = (
    Paper("nvit", "Global Vision Transformer Pruning with Hessian-Aware Saliency (NViT)", "CVPR 2023", 15),
    Paper("three_regime", "A Three-regime Model of Network Pruning", "ICML 2023", 20),
    Paper(
        "diffusehigh",
        "DiffuseHigh: Training-free Progressive High-Resolution Image Synthesis through Structure Guidance",
        "AAAI 2025",
        30,
        10,
    ),
    Paper(
        "darex", "DARE the Extreme: Revisiting Delta-Parameter Pruning for Fine-Tuned Models (DAREx)", "ICLR 2025", 20
    ),
    Paper("masksparsity", "Pruning-aware Sparse Regularization for Network Pruning (MaskSparsity)", "MIR 2023", 15),
)

CLAIM_HEADERS = ("Claim", "What the paper claims", "Preset", "Verdict", "Effect [95% CI]", "n", "Record (commit, date)")

CITED_PRESETS = ("mini", "paper")
"""Presets whose records are results; ``smoke`` records only show the pipeline runs."""


def cited_records(results_dir: Path, paper: str) -> list[RunRecord]:
    return [
        load_record(results_dir / paper / p) for p in CITED_PRESETS if (results_dir / paper / p / RECORD_FILE).exists()
    ]


def _one_line(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def claim_name(paper: str, record: RunRecord, index: int) -> str:
    c = record.claims[index]
    return f"{paper}.{c.id}" if c.id else f"{paper}.#{index + 1}"


def _commit_date(record: RunRecord) -> str:
    p = record.provenance
    commit = (p.get("git_commit") or "unknown")[:10] + ("+dirty" if p.get("git_dirty") else "")
    rejudged = record.extra.get("claims_rejudged") or {}
    again = f"; claims re-judged at `{str(rejudged.get('commit') or 'unknown')[:10]}`" if rejudged else ""
    return f"`{commit}`, {str(p.get('started_at', ''))[:10]}{again}"


def _claims_rows(results_dir: Path) -> list[tuple[tuple, str, bool]]:
    """(table row, plain verdict, whether the re-run with other seeds disagrees) for every claim of every record."""
    rows = []
    for paper in PAPERS:
        card = f"../{paper.package}/README.md"  # the page lives in results/, next to the paper folders
        for record in cited_records(results_dir, paper.package):
            replica = replication.load_replica(results_dir / paper.package / record.preset)
            again = {r.id: r for r in replication.compare(record, replica)} if replica else {}
            for i, c in enumerate(record.claims):
                name = claim_name(paper.package, record, i)
                target = f"{card}#{claim_anchor(f'{paper.package}-{record.preset}', c.id)}" if c.id else str(card)
                cell = f"**{c.verdict}**"
                r = again.get(c.id)
                disagrees = r is not None and r.status != replication.SAME
                if disagrees:  # what a reader citing the verdict must know
                    cell += f" (re-run with other seeds: {r.replica_verdict}; {r.status})"
                row = (f"[{name}]({target})", _one_line(c.claim), record.preset, cell, c.effect or "–",
                       "–" if c.n is None else c.n, _commit_date(record))  # fmt: skip
                rows.append((row, c.verdict, disagrees))
    return rows


def _methods_table(record: RunRecord) -> str:
    """The record's first table (each paper's main comparison of methods), next to the paper's numbers."""
    tables = record.tables()
    if not tables:
        return ""
    name, ms = next(iter(tables.items()))
    with_paper = [m for m in record.measurements if m.paper is not None and m not in ms]
    rows = []
    for m in [*ms, *with_paper]:
        metric = f"{m.metric} [{m.unit}]" if m.unit else m.metric
        paper = "–" if m.paper is None else f"{m.paper:.{m.digits}f} ({m.paper_source})"
        rows.append((m.setting, metric, paper, m.ours(), m.n))
    return f"*{name}*\n\n" + markdown_table(["Setting", "Metric", "Paper", "Ours (mean ± std)", "n"], rows)


def _replication_section(results_dir: Path) -> str:
    """One line per record that has a replica (the preset re-run with another seed set): do the verdicts hold?"""
    rows = []
    for paper in PAPERS:
        for record in cited_records(results_dir, paper.package):
            replica = replication.load_replica(results_dir / paper.package / record.preset)
            if replica is None:
                rows.append((f"`{paper.package}`", record.preset, ", ".join(map(str, record.seeds)), "–",
                             "not re-run yet"))  # fmt: skip
                continue
            compared = replication.compare(record, replica)
            rows.append((f"`{paper.package}`", record.preset, ", ".join(map(str, record.seeds)),
                         ", ".join(map(str, replica.seeds)), replication.summary(compared)))  # fmt: skip
    return (
        "## Re-run with another seed set\n\nEach record's preset run again with disjoint seeds "
        "(`python -m common.replication <paper>`; the table per claim is in the card). A claim *moved* when one "
        "run says reproduced and the other not reproduced; *changed* when the verdicts differ otherwise.\n\n"
        + markdown_table(["Package", "Preset", "Seeds", "Re-run seeds", "Result"], rows)
    )


def mini_runs(results_dir: Path, paper: Paper) -> list[tuple[str, RunRecord]]:
    """The paper's timed runs of the ``mini`` preset: its record and the re-run with other seeds."""
    path = results_dir / paper.package / "mini"
    runs = [("record", load_record(path))] if (path / RECORD_FILE).exists() else []
    replica = replication.load_replica(path)
    return runs + ([("re-run, other seeds", replica)] if replica is not None else [])


def _probe_cell(usage: dict | None) -> str:
    probe = (usage or {}).get("speed_probe") or {}
    if not probe.get("before") or not probe.get("after"):
        return "–"
    return f"{probe['before']['matmul_gflops']:.0f} / {probe['after']['matmul_gflops']:.0f}"


def _time_section(results_dir: Path) -> str:
    """Each timed ``mini`` run against its budget, with how the run used the machine (common.machine)."""
    rows = []
    for paper in PAPERS:
        for which, record in mini_runs(results_dir, paper):
            p = record.provenance
            wall, budget = p.get("wall_time_s"), paper.budget_min(record)
            usage = p.get("machine") or {}
            share = f"{100 * wall / (60 * budget):.0f}%" if isinstance(wall, (int, float)) else "–"
            rows.append((f"`{paper.package}`", which, _commit_date(record), p.get("device_name") or "–",
                         f"{wall / 60:.1f}" if isinstance(wall, (int, float)) else "–", f"{budget:g}", share,
                         "–" if usage.get("cores_busy") is None else f"{usage['cores_busy']:.2f}",
                         _probe_cell(usage)))  # fmt: skip
    headers = ["Package", "Run", "Record (commit, date)", "CPU", "Wall [min]", "Budget [min]", "Share", "Cores busy",
               "Probe [GFLOP/s]"]  # fmt: skip
    return (
        "## Run time against the budgets\n\nWall time of each timed `mini` run (`make reproduce-<paper>`, empty "
        "cache, nothing else running) against its budget for an idle 2-core CPU machine. *Cores busy*: CPU time of "
        "the run's processes / wall time (2.00 = both cores all the time). *Probe*: a fixed one-thread matrix "
        "product timed just before / after the run, in GFLOP/s ([common/machine.py](../common/machine.py)): the "
        "machine's state at the start and the end, not throughout (a run can be slowed in between with normal "
        "probes). The same VM has run identical work 1.4-1.7x faster or slower from one run to the next, so one "
        "run within its budget is not a guarantee for the next, or for another machine. Older records carry no "
        "probe (–). diffusehigh's budget is 10 min when the committed base UNet is used, 30 when it is trained."
        "\n\n" + markdown_table(headers, rows)
    )


def render(results_dir: Path | None = None) -> str:
    results_dir = results_dir or results_root()
    counts: dict[str, int] = {}
    claims = _claims_rows(results_dir)
    rows = [row for row, _, _ in claims]
    for _, verdict, _ in claims:
        counts[verdict] = counts.get(verdict, 0) + 1
    summary = ", ".join(f"{v}: {n}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    disagree = sum(disagrees for _, _, disagrees in claims)
    if disagree:
        summary += f"; {disagree} of them with another verdict when re-run with other seeds (noted beside the verdict)"
    parts = [
        "# Every claim, every paper\n\n"
        "<!-- generated by `make report` (python -m common.overview) from the records under results/; do not edit -->"
        "\n\nOne row per claim of the `mini` (and, where run, `paper`) records. A claim's name (`nvit.C3`) is stable "
        "across runs and wording changes; cite it with the record's commit. The link opens the claim's row in its "
        "card, which has the paper's evidence, ours, the precondition and the verdict of each half of the seeds. "
        "How verdicts are decided: [common/stats.py](../common/stats.py) (the rules are printed under every card's "
        f"claims table).\n\n**{len(rows)} claims** — {summary or 'none recorded yet'}.",
        "## All claims\n\n"
        + (
            markdown_table(
                [
                    "Claim",
                    "What the paper claims",
                    "Preset",
                    "Verdict",
                    "Effect [95% CI]",
                    "n",
                    "Record (commit, date)",
                ],
                rows,
            )
            if rows
            else "_No records yet: run `make reproduce-all`._"
        ),
        _replication_section(results_dir),
        _time_section(results_dir),
        "## Methods side by side\n\nEach paper's main comparison at our scale, with the paper's number where it "
        "could be read from the paper (never estimated). Full tables, figures and deviations are in the cards.",
    ]
    for paper in PAPERS:
        for record in cited_records(results_dir, paper.package):
            table = _methods_table(record)
            if table:
                parts.append(f"### {paper.title} ({paper.venue}) — [`{paper.package}`](../{paper.package}/README.md), "
                             f"preset `{record.preset}`\n\nCommand: `{record.command}`\n\n{table}")  # fmt: skip
    return "\n\n".join(parts) + "\n"


def check(results_dir: Path | None = None) -> str:
    """A unified diff between the committed overview and the records ('' when they agree)."""
    results_dir = results_dir or results_root()
    path = results_dir / OVERVIEW_FILE
    current = path.read_text() if path.exists() else ""
    fresh = render(results_dir)
    if current == fresh:
        return ""
    return "".join(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True), str(path), "from records"))


def write(results_dir: Path | None = None) -> Path:
    results_dir = results_dir or results_root()
    path = results_dir / OVERVIEW_FILE
    atomic_write_bytes(path, render(results_dir).encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.overview",
        description="Write results/README.md, the overview of every claim, from the saved records (no re-running).",
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the page differs from the records"
    )
    parser.add_argument("--results-dir", type=Path, default=None, help="default: $PRUNE_REPRO_RESULTS or results/")
    args = parser.parse_args(argv)
    if args.check:
        diff = check(args.results_dir)
        if diff:
            sys.stderr.write(diff + "\noverview: results/README.md is stale; run `make report`\n")
            return 1
        print("overview: up to date")
        return 0
    print(f"overview: wrote {write(args.results_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
