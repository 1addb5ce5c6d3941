"""The command line every paper package shares: ``python -m <paper> {reproduce,report,presets}``.

A paper's ``__main__.py`` is three lines::

    from common.cli import main
    from . import config
    raise SystemExit(main("nvit", presets=config.PRESETS, run="nvit.reproduce:run", report="nvit.reproduce:report"))

``run(cfg, ctx) -> RunRecord`` does the experiment; ``report(record, out_dir) -> str`` turns a saved
record into Markdown (and figures under ``out_dir``) without recomputing anything. Both, and an extra
command's ``configure`` and ``handler``, may be given as ``"module:attribute"``: imported only when used, so that
``--help`` and ``presets`` answer in a fraction of a second instead of first importing torch and the paper's
libraries (seconds; this module keeps its own heavy imports inside the functions that need them). This module
handles presets and overrides, runtime setup, provenance, writing the record atomically, and the
generated results block of the paper's README.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import logging
import os
import re
import shlex
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import errors, resume
from .config import ConfigError, Preset, config_hash, describe, get_preset, override, to_dict

if TYPE_CHECKING:
    import torch

    from . import runtime
    from .results import RunRecord

log = logging.getLogger(__name__)

PRESET_ORDER = ("mini", "smoke", "paper")
"""Order of the presets in a README's generated block: the default first."""

README_BLOCK = "results"

EXIT_NOT_IMPLEMENTED = 3


class NotImplementedYet(NotImplementedError):
    """Raised by a preset whose reproduction is not written yet; the CLI exits non-zero with the message."""


@dataclasses.dataclass
class RunContext:
    """What a paper's ``run`` gets besides its config: where to write, which device, and provenance."""

    paper: str
    preset: str
    out_dir: Path
    device: torch.device
    threads: int
    command: str
    cache: runtime.ArtifactCache
    config: Any
    started: float = dataclasses.field(default_factory=time.perf_counter)
    timer: runtime.PhaseTimer = dataclasses.field(default_factory=lambda: _runtime().PhaseTimer())

    def phase(self, name: str):
        """``with ctx.phase("fine-tuning"): ...``: the block's wall time goes to that phase of the record's
        breakdown (``provenance["phases_s"]``, shown under each card's provenance line)."""
        return self.timer.phase(name)

    def new_record(self, seeds: list[int] | tuple[int, ...] | None = None) -> RunRecord:
        """An empty record with the config, its hash and provenance filled in."""
        from .results import RunRecord, provenance

        if seeds is None:
            seeds = getattr(self.config, "seeds", ())
        return RunRecord(
            paper=self.paper,
            preset=self.preset,
            command=self.command,
            config=to_dict(self.config),
            config_hash=config_hash(self.config),
            seeds=list(seeds),
            provenance=provenance(
                device=str(self.device), device_name=_runtime().device_name(self.device), threads=self.threads
            ),
        )


RunFn = Callable[[Any, RunContext], "RunRecord"]


@dataclasses.dataclass(frozen=True)
class Command:
    """An extra sub-command of a paper's CLI (e.g. ``python -m darex prune``): its help, its arguments
    (``configure(parser)`` adds them) and ``handler(args) -> exit code``; either may be ``"module:function"``,
    imported only when this sub-command is the one run (or its ``--help`` asked for)."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None] | str
    handler: Callable[[argparse.Namespace], int] | str


def resolve(target: Any) -> Any:
    """``target`` itself, or for a ``"module:attribute"`` string that attribute (the module imported now)."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    if not name:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    return getattr(importlib.import_module(module), name)


def _runtime():
    from . import runtime  # imports torch: here rather than at the top, so that --help stays fast

    return runtime


ReportFn = Callable[["RunRecord", Path], str]
"""``report(record, out_dir) -> Markdown``; links in it (figures) are relative to ``out_dir``."""

_RELATIVE_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def rebase_links(markdown: str, source_dir: Path, target_dir: Path) -> str:
    """Rewrite relative Markdown links written for ``source_dir`` so they work from ``target_dir``."""

    def rebase(match: re.Match) -> str:
        link = match.group(2)
        if "://" in link or link.startswith(("/", "#")):
            return match.group(0)
        return match.group(1) + Path(os.path.relpath(source_dir / link, target_dir)).as_posix() + match.group(3)

    return _RELATIVE_LINK.sub(rebase, markdown)


def default_report(record: RunRecord, out_dir: Path) -> str:
    from .results import render_record

    return render_record(record, heading_level=4)


def readme_path(paper: str) -> Path:
    return Path(importlib.import_module(paper).__file__).parent / "README.md"


def make_command(paper: str, preset: str, sets: list[str]) -> str:
    """The shortest command that re-runs this configuration (shown next to every reported number)."""
    parts = ["python", "-m", paper, "reproduce", "--preset", preset]
    for s in sets:
        parts += ["--set", s]
    return shlex.join(parts)


def saved_presets(paper_dir: Path) -> list[str]:
    """Presets with a saved record under ``paper_dir``, the default preset first."""
    from .results import RECORD_FILE

    if not paper_dir.exists():
        return []
    names = [p.name for p in paper_dir.iterdir() if (p / RECORD_FILE).exists()]
    rank = {name: i for i, name in enumerate(PRESET_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def report_all(
    paper: str,
    results_dir: Path,
    report: ReportFn,
    readme: Path | None,
    presets: list[str] | None = None,
    link_base: Path | None = None,
) -> str:
    """Re-derive tables and figures from saved records; optionally rewrite the README's results block.

    Each record's ``results.md``/``results.csv`` (and whatever figures ``report`` draws) are rewritten;
    the README block gets one section per preset with a record (``presets`` limits which are re-derived
    when no README is updated). Links in the block are made relative to ``link_base`` (default: the
    README's folder). Returns the block's Markdown.
    """
    from . import replication
    from .results import claim_anchors, load_record, update_readme_block, write_record

    link_base = link_base or (readme.parent if readme is not None else None)
    paper_dir = results_dir / paper
    sections = []
    for preset in saved_presets(paper_dir):
        if readme is None and presets is not None and preset not in presets:
            continue
        record = load_record(paper_dir / preset)
        with claim_anchors(f"{paper}-{preset}"):
            body = report(record, paper_dir / preset)
        write_record(record, paper_dir / preset, markdown=body, derived_only=True)  # the record stays as run
        replica = replication.load_replica(paper_dir / preset)
        if replica is not None:  # the same preset re-run with another seed set, compared claim by claim
            body = f"{body.rstrip()}\n\n{replication.markdown(record, replica)}\n"
        if link_base is not None:
            body = rebase_links(body, paper_dir / preset, link_base)
        make_hint = f"make reproduce-{paper}" + ("" if preset == "mini" else f" PRESET={preset}")
        sections.append(f"### Preset `{preset}` (`{make_hint}`)\n\n{body.strip()}")
    content = "\n\n".join(sections) or f"_No results recorded yet: run `make reproduce-{paper}`._"
    cite = cite_line(paper, results_dir)
    if cite:
        content = f"{cite}\n\n{content}"
    if readme is not None:
        changed = update_readme_block(readme, README_BLOCK, content)
        log.info("%s: README results block %s", paper, "updated" if changed else "unchanged")
    return content


def cite_line(paper: str, results_dir: Path) -> str:
    """'How to cite this reproduction': the paper, the claim ids of the default record, its commit."""
    from .overview import PAPERS  # the titles; imported here to keep the CLI's import light
    from .results import RECORD_FILE, load_record

    titles = {p.package: p for p in PAPERS}
    path = results_dir / paper / "mini"
    if paper not in titles or not (path / RECORD_FILE).exists():
        return ""
    record = load_record(path)
    ids = [c.id for c in record.claims if c.id]
    named = f"claims `{paper}.{ids[0]}`–`{paper}.{ids[-1]}`" if len(ids) > 1 else (
        f"claim `{paper}.{ids[0]}`" if ids else "the claims table")  # fmt: skip
    commit = (record.provenance.get("git_commit") or "unknown")[:10]
    p = titles[paper]
    return (f"**How to cite this reproduction:** {p.title} ({p.venue}), reproduced in this repository's `{paper}` "
            f"package: {named} of the `mini` record (commit `{commit}`); cite the repository with its "
            "`CITATION.cff`. All claims of the five papers: [results/README.md](../results/README.md).")  # fmt: skip


def _build_parser(
    paper: str,
    presets: Mapping[str, Preset],
    description: str,
    commands: Mapping[str, Command],
    chosen: str | None = None,
) -> argparse.ArgumentParser:
    """The parser; an extra command whose ``configure`` is a ``"module:function"`` gets its arguments only when it
    is ``chosen`` (the first word of the command line), so the others' modules are not imported."""
    preset_lines = "\n".join(
        f"  {name:<6} {(fn.__doc__ or '').strip().splitlines()[0]}" for name, fn in presets.items()
    )
    parser = argparse.ArgumentParser(
        prog=f"python -m {paper}",
        description=f"{description}\n\npresets:\n{preset_lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser(
        "reproduce",
        help="run a preset, write results/<paper>/<preset>/record.json and update the README",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Run a preset end to end. `python -m {paper} presets` lists presets and their fields.",
    )
    rep.add_argument("--preset", default="mini", choices=list(presets), help="which preset to run (default: mini)")
    rep.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, type-checked (repeatable), e.g. --set seeds='(0,1)' --set data.root=/data",
    )  # fmt: skip
    rep.add_argument("--results-dir", type=Path, default=None, help="where records go (default: results/)")
    rep.add_argument("--no-readme", action="store_true", help="do not rewrite the README's generated block")
    rep.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    rep.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: all cores; capped by a preset's max_threads, as in nvit)",
    )
    rep.add_argument(
        "--save-every", type=int, default=None, metavar="EPOCHS",
        help="save a running training loop's state every EPOCHS epochs, so a killed run continues from there when "
             "started again (default: 1 for the paper preset, 0 = never for the others, which take minutes; or "
             f"${resume.SAVE_EVERY_ENV})",
    )  # fmt: skip
    rep.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")

    rpt = sub.add_parser("report", help="re-render tables, figures and the README block from saved records")
    rpt.add_argument("--results-dir", type=Path, default=None, help="where records are (default: results/)")
    rpt.add_argument("--no-readme", action="store_true", help="do not rewrite the README's generated block")

    pre = sub.add_parser("presets", help="list the presets, or show every field of one with its help")
    pre.add_argument("name", nargs="?", choices=list(presets), help="show this preset's fields")

    for name, command in commands.items():
        extra = sub.add_parser(name, help=command.help, description=command.help)
        if name == chosen or not isinstance(command.configure, str):
            resolve(command.configure)(extra)
    for subparser in sub.choices.values():
        _add_debug_flag(subparser, default=argparse.SUPPRESS)  # also accepted after the sub-command
    return parser


def _add_debug_flag(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help=f"show the traceback of a user error (missing data, bad path, ...) too; or set {errors.DEBUG_ENV}=1",
    )


def _print_presets(presets: Mapping[str, Preset], name: str | None) -> None:
    if name is None:
        for preset_name, fn in presets.items():
            print(f"{preset_name}:\n{textwrap.indent(inspect.cleandoc(fn.__doc__ or ''), '    ')}\n")
        return
    cfg = get_preset(presets, name)
    print(inspect.cleandoc(presets[name].__doc__ or ""), end="\n\n")
    width = max(len(k) for k, _, _ in describe(cfg))
    for key, value, help_text in describe(cfg):
        print(f"  {key:<{width}}  {value!r:<24} {help_text}")
    print(f"\nconfig hash: {config_hash(cfg)}")


def main(
    paper: str,
    *,
    presets: Mapping[str, Preset],
    run: RunFn | str,
    report: ReportFn | str = default_report,
    description: str = "",
    commands: Mapping[str, Command] | None = None,
    argv: list[str] | None = None,
    supports_distributed: bool = False,
) -> int:
    """Parse ``argv`` and run the sub-command; returns the process exit code.

    ``supports_distributed``: the paper's ``run`` splits its work across the processes of
    ``common.distributed`` (``make reproduce-<paper> NPROC=N``); others refuse to run under a launcher.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    commands = dict(commands or {})
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)  # the top-level parser has flags only
    parser = _build_parser(
        paper, presets, description or (importlib.import_module(paper).__doc__ or "").strip(), commands, chosen
    )
    args = parser.parse_args(argv)
    try:
        return _dispatch(paper, parser, args, presets=presets, run=run, report=report, commands=commands,
                         supports_distributed=supports_distributed)  # fmt: skip
    except errors.UserError as err:
        if args.debug or errors.debug_enabled():
            raise
        print(f"{paper}: error: {err}", file=sys.stderr)
        return errors.EXIT_USER_ERROR
    except errors.TrainingDivergedError as err:
        if args.debug or errors.debug_enabled():
            raise
        print(f"{paper}: run diverged: {err}", file=sys.stderr)
        return errors.EXIT_DIVERGED


def _dispatch(
    paper: str,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    presets: Mapping[str, Preset],
    run: RunFn,
    report: ReportFn,
    commands: Mapping[str, Command],
    supports_distributed: bool = False,
) -> int:
    if args.command == "presets":
        _print_presets(presets, args.name)
        return 0

    runtime = _runtime()
    if args.command in commands:
        runtime.enable_offline_mode()
        return resolve(commands[args.command].handler)(args)

    results_dir = args.results_dir or runtime.results_root()
    if args.command == "report":
        report_all(paper, results_dir, resolve(report), readme=None if args.no_readme else readme_path(paper))
        return 0

    try:
        cfg = override(get_preset(presets, args.preset), args.sets)
    except ConfigError as err:
        parser.error(str(err))
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        print(f"config hash: {config_hash(cfg)}")
        return 0

    from . import distributed, machine, parallel

    run = resolve(run)  # the paper's code is imported before the clock starts, as it was when imported at the top
    runtime.enable_offline_mode()
    if args.save_every is not None and args.save_every < 0:
        parser.error(f"--save-every must be 0 (never) or a number of epochs, got {args.save_every}")
    save_every = args.save_every
    if save_every is None:  # a malformed $PRUNE_REPRO_SAVE_EVERY is a user error now, not hours into the run
        save_every = resume.save_every() if resume.SAVE_EVERY_ENV in os.environ else int(args.preset == "paper")
    world = distributed.world_size()
    if world > 1 and not supports_distributed:
        raise errors.UserError(
            f"{world} processes were launched, but {paper}'s reproduce does not split its work across processes yet "
            f"(each would repeat the whole run). Run it without NPROC / the launcher."
        )
    device = distributed.device() if world > 1 else runtime.select_device(args.device)
    threads = runtime.set_threads(args.threads)
    cap = getattr(cfg, "max_threads", 0)  # a preset whose model is too small to split over threads says so
    if cap and threads > cap:
        log.info("using %d torch thread(s) instead of %d (the preset's max_threads; --set max_threads=0 lifts it)",
                 cap, threads)  # fmt: skip
        threads = runtime.set_threads(cap)
    out_dir = results_dir / paper / args.preset
    ctx = RunContext(
        paper=paper,
        preset=args.preset,
        out_dir=out_dir,
        device=device,
        threads=threads,
        command=make_command(paper, args.preset, args.sets),
        cache=runtime.ArtifactCache(paper),
        config=cfg,
    )
    log.info("%s preset %s (config %s) on %s, %d threads", paper, args.preset, config_hash(cfg), device, threads)
    # before the clock starts: the speed probe is not part of the run; rank 0 alone probes (it writes the record,
    # and N ranks probing every core at once would measure each other)
    meter = machine.UsageMeter(probe=None if distributed.is_main() else False)
    ctx.started = time.perf_counter()
    try:
        with resume.saving_every(save_every), parallel.shared_workers():  # one set of worker processes per run
            record = run(cfg, ctx)
    except errors.TrainingDivergedError as err:
        raise errors.TrainingDivergedError(
            f"{err} [preset {args.preset}, config {config_hash(cfg)}: {ctx.command}]"
        ) from err
    except NotImplementedYet as err:
        print(f"{paper}: preset {args.preset!r} is not implemented yet: {err}", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    wall = time.perf_counter() - ctx.started
    record.provenance["wall_time_s"] = round(wall, 2)
    if ctx.timer.seconds:
        record.provenance["phases_s"] = ctx.timer.breakdown(total_s=wall)
    record.provenance.update(distributed.describe(device))
    record.provenance["machine"] = meter.finish(wall)
    if not distributed.is_main():  # only rank 0 writes records, tables, figures and the README
        return 0
    from .results import RECORD_FILE, write_json_atomic

    write_json_atomic(out_dir / RECORD_FILE, record.to_json())
    log.info("wrote %s", out_dir / RECORD_FILE)
    readme = None if args.no_readme else readme_path(paper)
    report_all(paper, results_dir, resolve(report), readme=readme, presets=[args.preset])
    return 0
