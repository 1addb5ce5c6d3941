"""The latency lookup table: exact on grid points, interpolation, Eq. 7's saving, io, measured tables."""

from __future__ import annotations

import numpy as np
import pytest

from nvit.latency import LatencyTable, analytic_table, measured_table
from nvit.models import ViTDims, block_macs

GRID = ((8, 16, 32), (1, 2), (2, 4, 8), (2, 4, 8), (16, 32, 64))


def test_lut_is_exact_on_grid_points_and_multilinear_between():
    rng = np.random.default_rng(0)
    values = rng.random(tuple(len(g) for g in GRID))
    lut = LatencyTable(grid=GRID, values=values)
    for idx in [(0, 0, 0, 0, 0), (2, 1, 2, 2, 2), (1, 0, 2, 1, 0)]:
        point = [GRID[a][i] for a, i in enumerate(idx)]
        assert lut(*point) == pytest.approx(values[idx], abs=1e-12)  # float64 weights 0/1: a few roundings of v < 1
    mid = lut(12, 1, 2, 2, 16)  # halfway along EMB between grid points 8 and 16
    assert mid == pytest.approx((values[0, 0, 0, 0, 0] + values[1, 0, 0, 0, 0]) / 2)


def test_analytic_table_reproduces_its_formula_and_savings():
    lut = analytic_table(GRID, tokens=17, head_cost=100.0, block_cost=10.0)
    assert lut(16, 2, 4, 8, 32) == pytest.approx(block_macs(16, 2, 4, 8, 32, 17) + 200 + 10)
    dims = ViTDims.uniform(depth=2, emb=32, heads=2, qk=8, v=8, mlp=64, image_size=8, patch_size=2)
    assert lut.model_latency(dims) == pytest.approx(2 * lut(32, 2, 8, 8, 64))
    s = lut.saving(dims, ("MLP", 0), 16)
    assert s == pytest.approx(lut(32, 2, 8, 8, 64) - lut(32, 2, 8, 8, 48))
    assert lut.saving(dims, ("EMB", None), 8) == pytest.approx(2 * (lut(32, 2, 8, 8, 64) - lut(24, 2, 8, 8, 64)))
    assert lut.saving(dims, ("H", 1), 1, floor=(2, 2, 2, 16)) == 0.0  # at the floor: no latency bonus


def test_lut_save_load_roundtrip(tmp_path):
    lut = analytic_table(GRID, tokens=5, head_cost=1.0, block_cost=0.0)
    path = lut.save(tmp_path / "lut.json")
    again = LatencyTable.load(path)
    assert again(20, 1.5, 3, 5, 40) == pytest.approx(lut(20, 1.5, 3, 5, 40))
    with pytest.raises(FileNotFoundError):
        LatencyTable.load(tmp_path / "missing.json")
    with pytest.raises(ValueError):
        LatencyTable(grid=GRID, values=np.zeros((2, 2, 2, 2, 2)))


def test_measured_table_times_real_blocks():
    grid = ((8, 16), (1, 2), (4,), (4,), (16, 32))
    lut = measured_table(grid, tokens=5, batch_size=4, repeats=2, warmup=1)
    assert lut.unit == "s" and lut.values.shape == (2, 2, 1, 1, 2) and (lut.values > 0).all()
    assert lut(16, 2, 4, 4, 32) == pytest.approx(lut.values[1, 1, 0, 0, 1])
