"""User mistakes are one clear line on stderr and exit status 2; ``--debug`` brings the traceback back."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from common import errors
from common.cli import main
from common.config import ConfigError
from common.data import DatasetNotFoundError
from common.runtime import REPO_ROOT


def run_cli(paper: str, *argv: str) -> int:
    config = importlib.import_module(f"{paper}.config")
    reproduce = importlib.import_module(f"{paper}.reproduce")
    return main(paper, presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=list(argv))


def error_lines(stderr: str) -> list[str]:
    """The lines the CLI printed about the error (log lines carry a timestamp and a logger name)."""
    return [line for line in stderr.splitlines() if line.strip() and not line[:2].isdigit()]


@pytest.mark.parametrize(
    ("paper", "option"),
    [("nvit", "data.root"), ("masksparsity", "data.root"), ("three_regime", "data.root")],
)
def test_missing_paper_data_is_one_line_and_exit_2(paper, option, tmp_results, capsys):
    assert run_cli(paper, "reproduce", "--preset", "paper", "--no-readme") == errors.EXIT_USER_ERROR
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{paper}: error: ") and option in lines[0] and "--set" in lines[0]
    assert not (tmp_results / paper / "paper").exists(), "a failed run writes no record"


def test_a_path_that_does_not_exist_names_the_option(tmp_results, tmp_path, capsys):
    missing = tmp_path / "no-such-imagenet"
    argv = ["reproduce", "--preset", "paper", "--no-readme", "--set", f"data.root={missing}"]
    assert run_cli("nvit", *argv) == errors.EXIT_USER_ERROR
    (line,) = error_lines(capsys.readouterr().err)
    assert str(missing) in line and "data.root" in line


def test_debug_flag_and_environment_bring_the_traceback_back(tmp_results, monkeypatch):
    with pytest.raises(DatasetNotFoundError):
        run_cli("nvit", "reproduce", "--preset", "paper", "--no-readme", "--debug")
    with pytest.raises(DatasetNotFoundError):
        run_cli("nvit", "--debug", "reproduce", "--preset", "paper", "--no-readme")
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(DatasetNotFoundError):
        run_cli("nvit", "reproduce", "--preset", "paper", "--no-readme")


def test_bad_config_values_are_user_errors(tmp_results, capsys):
    # Caught by the preset's own checks before any work: a baseline target that is not a pruning target.
    argv = ["reproduce", "--preset", "smoke", "--no-readme", "--set", "prune.baseline_targets=(0.123,)"]
    assert run_cli("nvit", *argv) == errors.EXIT_USER_ERROR
    (line,) = error_lines(capsys.readouterr().err)
    assert "prune.baseline_targets" in line
    # Caught by the override parser (argparse's own error: usage line + message, exit 2).
    with pytest.raises(SystemExit) as exc:
        run_cli("nvit", "reproduce", "--preset", "smoke", "--set", "no.such.key=1")
    assert exc.value.code == 2 and "unknown config key" in capsys.readouterr().err


def test_three_regime_grid_command_refuses_a_bad_shard(tmp_path, capsys):
    from three_regime.__main__ import COMMANDS
    from three_regime.config import PRESETS
    from three_regime.reproduce import report, run

    argv = ["grid", "--preset", "smoke", "--shard", "3/3", "--cache-dir", str(tmp_path)]
    assert main("three_regime", presets=PRESETS, run=run, report=report, commands=COMMANDS, argv=argv) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "--shard 3/3" in line
    assert issubclass(ConfigError, errors.UserError)


def test_end_to_end_in_a_fresh_process_no_traceback(tmp_path):
    """What a user sees: the real entry point, a fresh interpreter, stderr as printed."""
    env = {**os.environ, "PRUNE_REPRO_RESULTS": str(tmp_path / "r"), "PRUNE_REPRO_CACHE": str(tmp_path / "c")}
    env.pop(errors.DEBUG_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-m", "nvit", "reproduce", "--preset", "paper", "--no-readme"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and "data.root" in proc.stderr


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug"), FileNotFoundError("a bug")])
def test_a_bug_keeps_its_traceback(bug, tmp_results):
    """Only user errors become one line: anything else a run raises reaches the caller unchanged."""
    from nvit import config

    def run(cfg, ctx):
        raise bug

    with pytest.raises(type(bug), match="a bug"):
        main("nvit", presets=config.PRESETS, run=run, argv=["reproduce", "--preset", "smoke", "--no-readme"])
