"""`make lint` passes: CI runs only `make test`, so the lint gate lives here too."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.runtime import REPO_ROOT


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(args):
    out = subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"ruff {' '.join(args)} failed (run `make format`):\n{out.stdout}{out.stderr}"
