"""One plot style for every paper: the Agg backend, a fixed colour per method, atomic PNG writes.

Figures are drawn from results records only (never by re-running an experiment), so
``make report`` can rebuild them::

    with style():
        fig, ax = plt.subplots()
        ax.plot(x, y, color=method_color("NViT"), marker=method_marker("NViT"), label="NViT")
        savefig(fig, out_dir / "figures" / "accuracy_vs_latency.png")
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on these machines; must precede pyplot
import matplotlib.pyplot as plt

from .runtime import atomic_write_bytes

# A method keeps its colour across every figure of the project (ShrinkBench's plot/plot.py idea).
METHOD_COLORS = {
    "dense": "#222222",
    "ours": "#d62728",
    "baseline": "#7f7f7f",
    "random": "#bcbd22",
    "magnitude": "#1f77b4",
    "taylor": "#ff7f0e",
    "uniform": "#8c564b",
}
_PALETTE = ("#2ca02c", "#9467bd", "#e377c2", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")

RC = {
    "figure.figsize": (5.0, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 5,
}


def _stable_index(name: str, n: int) -> int:
    return int(hashlib.sha256(name.lower().encode()).hexdigest(), 16) % n


def method_color(method: str) -> str:
    """The colour of ``method``: fixed for known names, otherwise stable per name across runs."""
    return METHOD_COLORS.get(method.lower(), _PALETTE[_stable_index(method, len(_PALETTE))])


def method_marker(method: str) -> str:
    return _MARKERS[_stable_index(method, len(_MARKERS))]


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The project's matplotlib style, applied only inside the block."""
    with matplotlib.rc_context(RC):
        yield


def savefig(fig: matplotlib.figure.Figure, path: Path) -> Path:
    """Save ``fig`` as PNG atomically (no half-written file if interrupted) and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
