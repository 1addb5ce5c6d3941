from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from common import plotting

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


def test_method_colors_are_fixed_and_stable():
    assert plotting.method_color("dense") == plotting.METHOD_COLORS["dense"]
    assert plotting.method_color("Magnitude") == plotting.METHOD_COLORS["magnitude"]
    assert plotting.method_color("some new method") == plotting.method_color("some new method")
    assert plotting.method_marker("x") == plotting.method_marker("x")


def test_savefig_writes_png_atomically(tmp_path):
    with plotting.style():
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0], color=plotting.method_color("ours"))
        path = plotting.savefig(fig, tmp_path / "figures" / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]
    assert not plt.get_fignums(), "the figure is closed"
