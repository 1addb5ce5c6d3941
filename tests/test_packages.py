"""Every paper package has the same skeleton, so a reader who knows one knows all (../README.md)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys

import pytest

from common.cli import EXIT_NOT_IMPLEMENTED, NotImplementedYet, default_report, main
from common.config import config_hash, describe, to_dict
from common.results import PaperNumber, read_block
from common.runtime import REPO_ROOT

PAPERS = ("nvit", "three_regime", "diffusehigh", "darex", "masksparsity")
ISSUES = {"nvit": 3, "masksparsity": 4, "three_regime": 5, "darex": 6, "diffusehigh": 7}


@pytest.mark.parametrize("paper", PAPERS)
def test_skeleton_files(paper):
    folder = REPO_ROOT / paper
    for name in ("__init__.py", "__main__.py", "config.py", "paper.py", "reproduce.py", "README.md"):
        assert (folder / name).is_file(), f"{paper}/{name} missing"


@pytest.mark.parametrize("paper", PAPERS)
def test_presets_are_documented_frozen_configs(paper):
    presets = importlib.import_module(f"{paper}.config").PRESETS
    assert list(presets) == ["smoke", "mini", "paper"]
    hashes = set()
    for name, preset in presets.items():
        doc = preset.__doc__ or ""
        assert "Command:" in doc and f"reproduce-{paper}" in doc, f"{paper}.{name}: docstring must give the command"
        cfg = preset()
        assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen
        assert all(help_text for _, _, help_text in describe(cfg)), f"{paper}.{name}: a field lacks help text"
        json.dumps(to_dict(cfg))  # records must be able to hold it
        assert config_hash(cfg) == config_hash(preset()), "a preset is deterministic"
        hashes.add(config_hash(cfg))
    assert len(hashes) == 3, "the three presets differ"


@pytest.mark.parametrize("paper", PAPERS)
def test_paper_numbers_cite_their_source(paper):
    numbers = importlib.import_module(f"{paper}.paper").PAPER_NUMBERS
    assert isinstance(numbers, tuple)
    for number in numbers:
        assert isinstance(number, PaperNumber) and number.source and number.metric and number.setting


@pytest.mark.parametrize("paper", PAPERS)
def test_card_has_generated_block_and_names_its_issue(paper):
    text = (REPO_ROOT / paper / "README.md").read_text()
    read_block(text, "results")  # exactly one pair of markers
    assert f"issue #{ISSUES[paper]}" in text
    assert f"make reproduce-{paper}" in text


def test_unimplemented_run_says_so_and_fails(tmp_results, capsys):
    """A preset whose reproduction is not written yet exits with code 3 and a message, and records nothing."""

    def run(cfg, ctx):
        raise NotImplementedYet("the X reproduction is issue #0; nothing is computed yet")

    presets = importlib.import_module("darex.config").PRESETS
    argv = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_results)]
    code = main("darex", presets=presets, run=run, report=default_report, argv=argv)
    assert code == EXIT_NOT_IMPLEMENTED
    assert "not implemented yet" in capsys.readouterr().err
    assert not (tmp_results / "darex").exists(), "nothing is recorded for a run that did not happen"


def test_module_entry_points():
    """`python -m <paper>` of every paper is wired to the shared CLI (real subprocesses, as a user runs them), and
    its `presets` and `--help` answer without importing torch (the CLI imports a paper's code only for a command
    that runs it; torch alone takes seconds)."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
        "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'transformers', 'diffusers', 'timm') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy)\n"
    )
    for args in (["presets", "smoke"], ["--help"]):
        procs = {paper: subprocess.Popen([sys.executable, "-c", probe, paper, *args], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
                 for paper in PAPERS}  # fmt: skip
        for paper, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (paper, err)
            assert "EXIT 0 HEAVY []" in out, (paper, args, out[-500:], err[-2000:])
            if args[0] == "presets":
                assert "config hash:" in out and "seeds" in out, (paper, out)
            else:
                assert f"python -m {paper}" in out and "reproduce" in out, (paper, out)
