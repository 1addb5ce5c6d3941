"""Tolerances of the float comparisons in these tests, derived from the dtype and the length of the computation.

House rule (../../shared/CONVENTIONS.md, "Results"): a tolerance is the dtype's machine epsilon times a bound on
the number of rounded operations behind one output element and on how much later steps amplify them, never what
one machine happened to give. torch picks CPU kernels per machine (AVX-512, AVX2 or plain; 1 or 2 threads), and
their last bits differ; so equivalences are checked in float64, where such a bound is ~1e-10 or less, and a real
difference in a formula (1e-3 or more in these tests) still fails by many orders of magnitude.
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
EPS64 = torch.finfo(torch.float64).eps  # 2.22e-16

NET_OPS = 1e3
"""Rounded operations per output element of one pass through the tiny UNets/VAEs here, as an upper bound: about
ten layers, each a convolution or a normalisation summing at most ~10^2 products (3x3x16 taps, group statistics)."""


def rounding_tolerance(dtype: torch.dtype, ops: float, scale: float = 1.0) -> float:
    """A bound on the rounding error of a result after ``ops`` rounded operations in ``dtype`` on values of size
    ``scale`` (each operation adds at most one epsilon relative to the values it combines)."""
    return ops * scale * torch.finfo(dtype).eps
