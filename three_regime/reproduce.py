"""The three-regime experiment for each preset: runs it, returns the results record (see common.cli)."""

from __future__ import annotations

from pathlib import Path

from common.cli import NotImplementedYet, RunContext, default_report
from common.results import RunRecord

from .config import ThreeRegimeConfig


def run(cfg: ThreeRegimeConfig, ctx: RunContext) -> RunRecord:
    raise NotImplementedYet("the three-regime reproduction is issue #5; nothing is computed yet")


def report(record: RunRecord, out_dir: Path) -> str:
    return default_report(record, out_dir)
