"""Run records with provenance, and the tables and README blocks derived from them.

One JSON record per run is the source of truth (``results/<paper>/<preset>/record.json``). Every table
a README shows is rendered from records by code, between markers, never typed by hand::

    record = ctx.new_record()                      # provenance filled in by common.cli
    record.add("Table 1 analogue", "NViT 50%", "top-1 (%)", [91.2, 90.8, 91.0], seeds=[0, 1, 2],
               paper=83.29, paper_source="Table 1")
    record.claim("global beats uniform", paper_evidence="Table 5", our_evidence="+1.3 pp", verdict=REPRODUCED)
    write_record(record, out_dir)                  # record.json + results.csv + results.md, atomically
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import dataclasses
import datetime as _dt
import importlib.metadata
import io
import json
import math
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import machine
from .runtime import REPO_ROOT, atomic_write_bytes
from .stats import (  # noqa: F401 (the verdict vocabulary lives in common.stats; re-exported for old imports)
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
    RULES_MARKDOWN,
    VERDICTS,
    Judgement,
)

SCHEMA_VERSION = 1
RECORD_FILE = "record.json"

TRACKED_PACKAGES = (
    "torch", "torchvision", "timm", "diffusers", "transformers", "accelerate",
    "numpy", "scipy", "scikit-learn", "matplotlib",
)  # fmt: skip


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value). NaNs propagate."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"91.03 ± 0.20"`` for several values, ``"91.03"`` for one."""
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass(frozen=True)
class PaperNumber:
    """A number read from the paper itself (never a secondary source, never a guess)."""

    source: str
    """Where it was read: ``"Table 1"``, ``"Abstract"``, ``"Fig. 3"``, with the arXiv version if it matters."""
    setting: str
    metric: str
    value: float
    unit: str = ""


@dataclass
class Measurement:
    """One cell of a results table: a metric of one setting, one value per seed."""

    table: str
    setting: str
    metric: str
    values: list[float]
    seeds: list[int] | None = None
    unit: str = ""
    paper: float | None = None
    paper_source: str = ""
    digits: int = 2
    note: str = ""

    def __post_init__(self) -> None:
        self.values = [float(v) for v in self.values]
        if not self.values:
            raise ValueError(f"measurement {self.setting!r}/{self.metric!r} has no values")
        if self.seeds is not None and len(self.seeds) != len(self.values):
            raise ValueError(f"{self.setting!r}/{self.metric!r}: {len(self.values)} values for {len(self.seeds)} seeds")
        if self.paper is not None and not self.paper_source:
            raise ValueError(f"{self.setting!r}/{self.metric!r}: a paper number needs its source (table/figure)")

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float:
        return mean_std(self.values)[1]

    @property
    def n(self) -> int:
        return len(self.values)

    def ours(self) -> str:
        return format_mean_std(self.values, self.digits)

    def at(self, seeds: Sequence[int]) -> list[float]:
        """The values of ``seeds`` (this measurement must have been recorded with its seeds)."""
        if self.seeds is None:
            raise ValueError(f"{self.setting!r}/{self.metric!r} has no seeds to select from")
        index = {s: i for i, s in enumerate(self.seeds)}
        missing = [s for s in seeds if s not in index]
        if missing:
            raise KeyError(f"{self.setting!r}/{self.metric!r}: seeds {missing} not among {self.seeds}")
        return [self.values[index[s]] for s in seeds]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(mean=self.mean, std=self.std, n=self.n)
        return out


@dataclass
class Claim:
    """A qualitative claim of the paper and our verdict on it, with the evidence on both sides.

    Claims judged with :func:`common.stats.replicate` also carry the effect with its interval, n, the
    precondition and its measured value, the verdicts of the two seed halves, and the tests as data (``stats``).
    """

    claim: str
    paper_evidence: str
    our_evidence: str
    verdict: str
    id: str = ""
    """A stable identifier ("C1", "C2a", ...), the same across presets and runs."""
    effect: str = ""
    n: int | None = None
    precondition: str = ""
    verdict_a: str = ""
    verdict_b: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for v in (self.verdict, self.verdict_a or self.verdict, self.verdict_b or self.verdict):
            if v not in VERDICTS:
                raise ValueError(f"verdict must be one of {VERDICTS}, got {v!r}")


@dataclass
class RunRecord:
    """Everything one `reproduce` run produced, with what is needed to reproduce it."""

    paper: str
    preset: str
    command: str
    config: dict[str, Any]
    config_hash: str
    seeds: list[int]
    provenance: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON data a paper's report needs for its figures (curves, per-block widths, ...)."""
    schema: int = SCHEMA_VERSION

    def add(self, table: str, setting: str, metric: str, values: Sequence[float] | float, **kwargs: Any) -> Measurement:
        """Append a measurement; a single number is stored as a one-value list."""
        if isinstance(values, (int, float)):
            values = [values]
        m = Measurement(table=table, setting=setting, metric=metric, values=list(values), **kwargs)
        self.measurements.append(m)
        return m

    def claim(
        self,
        claim: str,
        *,
        paper_evidence: str,
        our_evidence: str,
        verdict: str | None = None,
        judgement: Judgement | None = None,
        id: str = "",
    ) -> Claim:
        """Append a claim; its verdict comes from ``judgement`` (preferred) or is given as ``verdict``."""
        if (verdict is None) == (judgement is None):
            raise ValueError("give a claim either a judgement or a verdict")
        if judgement is None:
            c = Claim(claim=claim, paper_evidence=paper_evidence, our_evidence=our_evidence, verdict=verdict, id=id)
        else:
            pre = judgement.precondition
            c = Claim(
                claim=claim, paper_evidence=paper_evidence, our_evidence=our_evidence, verdict=judgement.verdict, id=id,
                effect=judgement.effect_text(), n=judgement.n, precondition=pre.describe() if pre else "",
                verdict_a=judgement.verdict_a, verdict_b=judgement.verdict_b, stats=judgement.to_json(),
            )  # fmt: skip
        if id and any(other.id == id for other in self.claims):
            raise ValueError(f"claim id {id!r} used twice")
        self.claims.append(c)
        return c

    def get(self, table: str, setting: str, metric: str) -> Measurement:
        for m in self.measurements:
            if (m.table, m.setting, m.metric) == (table, setting, metric):
                return m
        raise KeyError((table, setting, metric))

    def tables(self) -> dict[str, list[Measurement]]:
        """Measurements grouped by table name, in insertion order."""
        groups: dict[str, list[Measurement]] = {}
        for m in self.measurements:
            groups.setdefault(m.table, []).append(m)
        return groups

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "paper": self.paper,
            "preset": self.preset,
            "command": self.command,
            "config": self.config,
            "config_hash": self.config_hash,
            "seeds": self.seeds,
            "provenance": self.provenance,
            "measurements": [m.to_json() for m in self.measurements],
            "claims": [dataclasses.asdict(c) for c in self.claims],
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"record schema {data.get('schema')!r} is not {SCHEMA_VERSION}; re-run the preset")
        derived = {"mean", "std", "n"}
        return cls(
            paper=data["paper"],
            preset=data["preset"],
            command=data["command"],
            config=data["config"],
            config_hash=data["config_hash"],
            seeds=list(data["seeds"]),
            provenance=data["provenance"],
            measurements=[
                Measurement(**{k: v for k, v in m.items() if k not in derived}) for m in data["measurements"]
            ],
            claims=[Claim(**c) for c in data["claims"]],
            extra=data.get("extra", {}),
        )


# ----------------------------------------------------------------------------------------------------
# Provenance


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit and whether tracked *code* differs from it; None outside git.

    Outputs do not count: ``results/`` and Markdown files, whose generated blocks every run rewrites
    (otherwise each run of ``make reproduce-all`` after the first would be marked dirty by the one before).
    """

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", ":(exclude)*.md")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(*, device: str, device_name: str, threads: int, extra_packages: Iterable[str] = ()) -> dict[str, Any]:
    """What a reader needs to know to trust or re-run a number: code, packages, hardware, time."""
    return {
        **git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions([*TRACKED_PACKAGES, *extra_packages]),
        "device": device,
        "device_name": device_name,
        "threads": threads,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": None,
    }


# ----------------------------------------------------------------------------------------------------
# Writing and reading


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, allow_nan=True) + "\n").encode())


def write_record(record: RunRecord, out_dir: Path, markdown: str | None = None, derived_only: bool = False) -> Path:
    """Write ``record.json``, ``results.csv`` and ``results.md`` (default rendering unless given).

    ``derived_only``: leave ``record.json`` as it is (``report`` re-derives tables from a saved record and must
    never change the record itself).
    """
    out_dir = Path(out_dir)
    path = out_dir / RECORD_FILE
    if not derived_only:
        write_json_atomic(path, record.to_json())
    atomic_write_bytes(out_dir / "results.csv", measurements_csv(record.measurements).encode())
    atomic_write_bytes(out_dir / "results.md", (markdown if markdown is not None else render_record(record)).encode())
    return path


def load_record(path: Path) -> RunRecord:
    """Read a record written by :func:`write_record` (a directory or the JSON file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_FILE
    return RunRecord.from_json(json.loads(path.read_text()))


# ----------------------------------------------------------------------------------------------------
# Rendering


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; ``|`` inside cells is escaped."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _paper_cell(m: Measurement) -> str:
    return "–" if m.paper is None else f"{m.paper:.{m.digits}f} ({m.paper_source})"


def paper_vs_ours_table(measurements: Sequence[Measurement]) -> str:
    """Setting | Metric | Paper | Ours (mean ± std) | Seeds, one row per measurement."""
    rows = []
    for m in measurements:
        metric = f"{m.metric} [{m.unit}]" if m.unit else m.metric
        ours = m.ours() + (f" ({m.note})" if m.note else "")
        rows.append((m.setting, metric, _paper_cell(m), ours, m.n))
    return markdown_table(["Setting", "Metric", "Paper", "Ours (mean ± std)", "n"], rows)


_ANCHOR_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("claim_anchor_prefix", default="")


@contextlib.contextmanager
def claim_anchors(prefix: str):
    """Claims tables rendered inside give each claim with an id an HTML anchor ``<prefix>-<id>`` (lower case),
    so the overview of all claims (``common.overview``) can link to the card's row."""
    token = _ANCHOR_PREFIX.set(prefix)
    try:
        yield
    finally:
        _ANCHOR_PREFIX.reset(token)


def claim_anchor(prefix: str, claim_id: str) -> str:
    return f"{prefix}-{claim_id}".lower()


def claims_table(claims: Sequence[Claim]) -> str:
    """One row per claim; claims judged with intervals get the effect, n, precondition and both halves."""
    prefix = _ANCHOR_PREFIX.get()

    def name(c: Claim) -> str:
        if not c.id:
            return c.claim
        anchor = f'<a id="{claim_anchor(prefix, c.id)}"></a>' if prefix else ""
        return f"{anchor}**{c.id}** {c.claim}"

    if not any(c.effect for c in claims):
        return markdown_table(
            ["Claim", "Paper's evidence", "Our evidence", "Verdict"],
            [(name(c), c.paper_evidence, c.our_evidence, f"**{c.verdict}**") for c in claims],
        )
    rows = []
    for c in claims:
        halves = f"{c.verdict_a or '–'} / {c.verdict_b or '–'}"
        rows.append((name(c), c.paper_evidence, c.our_evidence, c.effect or "–", "–" if c.n is None else c.n,
                     c.precondition or "–", halves, f"**{c.verdict}**"))  # fmt: skip
    return markdown_table(
        ["Claim", "Paper's evidence", "Our evidence", "Effect [95% CI]", "n", "Precondition", "Halves A / B",
         "Verdict"], rows)  # fmt: skip


def _describe_run(record: RunRecord) -> str:
    p = record.provenance
    commit = (p.get("git_commit") or "unknown")[:10] + (" (uncommitted changes)" if p.get("git_dirty") else "")
    wall = p.get("wall_time_s")
    wall_text = f"{wall / 60:.1f} min" if isinstance(wall, (int, float)) else "unknown time"
    torch_version = (p.get("packages") or {}).get("torch")
    line = (
        f"Command: `{record.command}` · seeds {', '.join(map(str, record.seeds)) or '–'} · "
        f"config `{record.config_hash}` · commit `{commit}` · {p.get('device_name')} ({p.get('device')}), "
        f"{p.get('threads')} threads, torch {torch_version} · {wall_text} · {p.get('started_at', '')[:10]}"
    )
    phases = p.get("phases_s")
    if phases and isinstance(wall, (int, float)) and wall > 0:
        shares = " · ".join(f"{name} {_duration(sec)} ({100 * sec / wall:.0f}%)" for name, sec in phases.items())
        line += f"<br>\nTime by phase: {shares}"
    usage = machine.describe(p.get("machine"))
    if usage:
        line += f"<br>\n{usage}"
    return line


def _duration(seconds: float) -> str:
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def render_record(record: RunRecord, heading_level: int = 3) -> str:
    """Default Markdown for a record: its provenance line, one table per group, and the claims."""
    h = "#" * heading_level
    parts = [_describe_run(record)]
    for table, measurements in record.tables().items():
        parts.append(f"{h} {table}\n\n{paper_vs_ours_table(measurements)}")
    if record.claims:
        rules = f"\n\n{RULES_MARKDOWN}" if any(c.effect for c in record.claims) else ""
        parts.append(f"{h} Claims\n\n{claims_table(record.claims)}{rules}")
    return "\n\n".join(parts) + "\n"


def measurements_csv(measurements: Sequence[Measurement]) -> str:
    buffer = io.StringIO()
    columns = [
        "table",
        "setting",
        "metric",
        "unit",
        "n",
        "mean",
        "std",
        "values",
        "seeds",
        "paper",
        "paper_source",
        "note",
    ]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for m in measurements:
        writer.writerow(
            {
                "table": m.table, "setting": m.setting, "metric": m.metric, "unit": m.unit, "n": m.n,
                "mean": repr(m.mean), "std": repr(m.std), "values": ";".join(repr(v) for v in m.values),
                "seeds": "" if m.seeds is None else ";".join(map(str, m.seeds)),
                "paper": "" if m.paper is None else repr(m.paper), "paper_source": m.paper_source, "note": m.note,
            }
        )  # fmt: skip
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------
# Generated blocks in READMEs


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"


def replace_block(text: str, name: str, content: str) -> str:
    """Replace what lies between the ``name`` markers in ``text`` with ``content``.

    Raises ValueError if the markers are missing, duplicated or out of order, so a README whose
    markers were edited away fails loudly instead of silently keeping stale numbers.
    """
    begin, end = _markers(name)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"expected exactly one pair of markers {begin!r} ... {end!r}")
    if text.index(end) < text.index(begin):
        raise ValueError(f"marker {end!r} comes before {begin!r}")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{content.strip()}\n{end}{tail}"


def read_block(text: str, name: str) -> str:
    """The content between the ``name`` markers (stripped)."""
    begin, end = _markers(name)
    match = re.search(re.escape(begin) + r"(.*?)" + re.escape(end), text, flags=re.S)
    if match is None:
        raise ValueError(f"no block {name!r} found")
    return match.group(1).strip()


def update_readme_block(path: Path, name: str, content: str) -> bool:
    """Rewrite the ``name`` block of the file at ``path``; return whether anything changed."""
    path = Path(path)
    old = path.read_text()
    new = replace_block(old, name, content)
    if new != old:
        atomic_write_bytes(path, new.encode())
    return new != old
