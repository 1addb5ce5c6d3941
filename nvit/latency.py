"""The latency lookup table of NViT (paper §3.2.2, App. A.3): lat(EMB, H, QK, V, MLP) of one block, interpolated.

A table holds one value per point of a 5-D grid and is interpolated multilinearly (scipy's
``RegularGridInterpolator``, extrapolating linearly outside the grid). Two ways to fill it:

* ``analytic``: MACs of the block + ``head_cost``·H + ``block_cost`` (deterministic; tests and CPU runs);
* ``measured``: the median time of a real block forward on this device at a given batch size.

The latency of a model is the sum over its blocks (patch embedding and classifier are not included, as in the
official table). :meth:`LatencyTable.saving` is the Lat(W) − Lat(W∖S) term of Eq. 7 for removing ``n`` units of
one layer, with the official guards (no bonus once a dimension is at or below its floor).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import RegularGridInterpolator

from common.latency import measure_latency
from common.runtime import progress

from .models import Block, ViTDims, block_macs

GRID_NAMES = ("emb", "heads", "qk", "v", "mlp")


@dataclass
class LatencyTable:
    """Per-block latency on a grid over (EMB, H, QK, V, MLP); ``values`` has one axis per grid."""

    grid: tuple[tuple[int, ...], ...]
    values: np.ndarray
    unit: str = "MACs"
    description: str = ""

    def __post_init__(self) -> None:
        self.grid = tuple(tuple(int(x) for x in g) for g in self.grid)
        self.values = np.asarray(self.values, dtype=np.float64)
        if len(self.grid) != 5 or self.values.shape != tuple(len(g) for g in self.grid):
            raise ValueError(f"values of shape {self.values.shape} do not match the grid {[len(g) for g in self.grid]}")
        for g in self.grid:
            if list(g) != sorted(set(g)):
                raise ValueError(f"grid axis {g} must be strictly increasing")
        axes = [np.asarray(g, dtype=np.float64) if len(g) > 1 else np.asarray([g[0], g[0] + 1.0]) for g in self.grid]
        vals = self.values
        for ax, g in enumerate(self.grid):  # a single-point axis is treated as constant along it
            if len(g) == 1:
                vals = np.concatenate([vals, vals], axis=ax)
        self._interp = RegularGridInterpolator(axes, vals, method="linear", bounds_error=False, fill_value=None)

    def __call__(self, emb: float, heads: float, qk: float, v: float, mlp: float) -> float:
        """Interpolated latency of one block."""
        return float(self._interp(np.array([[emb, heads, qk, v, mlp]], dtype=np.float64))[0])

    def model_latency(self, dims: ViTDims) -> float:
        """Σ over blocks of the table (the official Lat(W))."""
        return float(sum(self(*dims.block(i)) for i in range(dims.depth)))

    def saving(self, dims: ViTDims, layer: tuple[str, int | None], n: int, floor: tuple[int, ...] = (0,) * 4) -> float:
        """Lat(dims) − Lat(dims with ``n`` fewer units of ``layer``); 0 once H/QK/V/MLP is at or below ``floor``."""
        structure, i = layer
        if structure == "EMB":
            return sum(self(*dims.block(b)) - self(dims.emb - n, *dims.block(b)[1:]) for b in range(dims.depth))
        pos = {"H": 1, "QK": 2, "V": 3, "MLP": 4}[structure]
        key = list(dims.block(i))
        if key[pos] <= floor[pos - 1]:
            return 0.0
        smaller = key.copy()
        smaller[pos] -= n
        return self(*key) - self(*smaller)

    # ---------------------------------------------------------------- io
    def to_json(self) -> dict:
        return {"grid": dict(zip(GRID_NAMES, self.grid, strict=True)), "values": self.values.tolist(),
                "unit": self.unit, "description": self.description}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> LatencyTable:
        return cls(grid=tuple(data["grid"][n] for n in GRID_NAMES), values=np.asarray(data["values"]),
                   unit=data.get("unit", ""), description=data.get("description", ""))  # fmt: skip

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency table {path} does not exist (write one with LatencyTable.save)")
        return cls.from_json(json.loads(path.read_text()))


def analytic_table(
    grid: tuple[tuple[int, ...], ...], *, tokens: int, head_cost: float, block_cost: float
) -> LatencyTable:
    """lat = block MACs + head_cost·H + block_cost at every grid point (a stand-in for a device's table)."""
    shape = tuple(len(g) for g in grid)
    values = np.zeros(shape)
    for idx in itertools.product(*(range(n) for n in shape)):
        e, h, q, v, m = (grid[a][i] for a, i in enumerate(idx))
        values[idx] = block_macs(e, h, q, v, m, tokens) + head_cost * h + block_cost
    return LatencyTable(grid=grid, values=values, unit="MAC-equivalents",
                        description=f"analytic: MACs + {head_cost:g}*H + {block_cost:g}, {tokens} tokens")  # fmt: skip


def measured_table(
    grid: tuple[tuple[int, ...], ...],
    *,
    tokens: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    repeats: int = 20,
    warmup: int = 3,
    dtype: torch.dtype = torch.float32,
) -> LatencyTable:
    """Time one block (median of ``repeats`` forwards, no grad) at every grid point on ``device``."""
    device = torch.device(device)
    shape = tuple(len(g) for g in grid)
    values = np.zeros(shape)
    points = list(itertools.product(*(range(n) for n in shape)))
    for idx in progress(points, desc="latency table", unit="block"):
        e, h, q, v, m = (grid[a][i] for a, i in enumerate(idx))
        block = Block(e, h, q, v, m, scale=q**-0.5, eps=1e-6).to(device=device, dtype=dtype).eval()
        x = torch.randn(batch_size, tokens, e, device=device, dtype=dtype)
        values[idx] = measure_latency(_BlockOnly(block), x, warmup=warmup, repeats=repeats).median_s
    return LatencyTable(grid=grid, values=values, unit="s",
                        description=f"measured on {device}, batch {batch_size}, {tokens} tokens, "
                        f"{torch.get_num_threads()} threads, median of {repeats}")  # fmt: skip


class _BlockOnly(torch.nn.Module):
    def __init__(self, block: Block):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, None)
