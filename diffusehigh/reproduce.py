"""The DiffuseHigh experiment for each preset: runs it, returns the results record (see common.cli)."""

from __future__ import annotations

from pathlib import Path

from common.cli import NotImplementedYet, RunContext, default_report
from common.results import RunRecord

from .config import DiffuseHighConfig


def run(cfg: DiffuseHighConfig, ctx: RunContext) -> RunRecord:
    raise NotImplementedYet("the DiffuseHigh reproduction is issue #7; nothing is computed yet")


def report(record: RunRecord, out_dir: Path) -> str:
    return default_report(record, out_dir)
