"""2-D discrete wavelet transform and the low-pass (LL) swap of DiffuseHigh's structure guidance.

The transforms are ptwt's (PyTorch, differentiable, GPU-capable), with PyWavelets' filter banks; the tests
check them against ``pywt.wavedec2`` / ``pywt.waverec2``. With db4, level 1 and symmetric padding an N-pixel
side becomes (N + 7) // 2 coefficients (1027 at 2048, 35 at 64), as in the released pipeline.
"""

from __future__ import annotations

import ptwt
import pywt
import torch

BOUNDARY_MODES = ("symmetric", "reflect", "zero", "constant", "periodic")


def _check(wave: str, level: int, mode: str) -> None:
    if wave not in pywt.wavelist(kind="discrete"):
        raise ValueError(f"unknown discrete wavelet {wave!r}; PyWavelets knows e.g. haar, db2, db4, sym4")
    if level < 1:
        raise ValueError(f"DWT level must be >= 1, got {level}")
    if mode not in BOUNDARY_MODES:
        raise ValueError(f"DWT mode must be one of {BOUNDARY_MODES}, got {mode!r}")


def dwt2(x: torch.Tensor, wave: str = "db4", level: int = 1, mode: str = "symmetric") -> list:
    """``[LL_J, (LH, HL, HH)_J, ..., (LH, HL, HH)_1]`` of images ``(..., H, W)``, computed in float32 (as released;
    half precision is upcast) or in float64 for float64 input (the tests' exact identities)."""
    _check(wave, level, mode)
    x = x if x.dtype == torch.float64 else x.float()
    coeffs = ptwt.wavedec2(x, pywt.Wavelet(wave), mode=mode, level=level)
    return [coeffs[0], *[tuple(d) for d in coeffs[1:]]]


def idwt2(coeffs: list, size: tuple[int, int], wave: str = "db4") -> torch.Tensor:
    """The inverse of :func:`dwt2`, cropped to the original ``size`` = (H, W)."""
    out = ptwt.waverec2(tuple([coeffs[0], *[tuple(d) for d in coeffs[1:]]]), pywt.Wavelet(wave))
    return out[..., : size[0], : size[1]]


def lowpass(x: torch.Tensor, wave: str = "db4", level: int = 1, mode: str = "symmetric") -> torch.Tensor:
    """The coarsest low-pass subband LL_J of ``x``."""
    return dwt2(x, wave, level, mode)[0]


def lowpass_swap(
    pred: torch.Tensor,
    guide_ll: torch.Tensor,
    wave: str = "db4",
    level: int = 1,
    mode: str = "symmetric",
    factor: float = 1.0,
) -> torch.Tensor:
    """DWT structure guidance: replace the LL subband of ``pred`` by ``guide_ll``, keep pred's high bands.

    ``iDWT(LL_g, {LH, HL, HH}_pred)`` (paper Sec. "DWT-based structure guidance"; notes 2.7). ``factor`` < 1
    blends instead of replacing (1.0 = the paper's hard replacement). Returns ``pred``'s dtype.
    """
    coeffs = dwt2(pred, wave, level, mode)
    if coeffs[0].shape != guide_ll.shape:
        raise ValueError(f"guide LL {tuple(guide_ll.shape)} does not match the prediction's {tuple(coeffs[0].shape)}")
    coeffs[0] = coeffs[0] + factor * (guide_ll.to(coeffs[0]) - coeffs[0])
    return idwt2(coeffs, pred.shape[-2:], wave).to(pred.dtype)
