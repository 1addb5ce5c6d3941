"""2-D discrete wavelet transform and the low-pass (LL) swap of DiffuseHigh's structure guidance.

The transforms are ptwt's (PyTorch, differentiable, GPU-capable), with PyWavelets' filter banks; the tests
check them against ``pywt.wavedec2`` / ``pywt.waverec2``. With db4, level 1 and symmetric padding an N-pixel
side becomes (N + 7) // 2 coefficients (1027 at 2048, 35 at 64), as in the released pipeline.

``mode="periodization"`` (which ptwt's padded transforms do not offer) is written here: a circular convolution
kept at every second sample, so an N-pixel side becomes ceil(N / 2) coefficients (an odd side is first extended
by its last sample, as PyWavelets does); the tests check it against PyWavelets too.
"""

from __future__ import annotations

import ptwt
import pywt
import torch

BOUNDARY_MODES = ("symmetric", "reflect", "zero", "constant", "periodic", "periodization")
PERIODIZATION = "periodization"


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
    if mode == PERIODIZATION:
        return _periodization_wavedec2(x, pywt.Wavelet(wave), level)
    coeffs = ptwt.wavedec2(x, pywt.Wavelet(wave), mode=mode, level=level)
    return [coeffs[0], *[tuple(d) for d in coeffs[1:]]]


def idwt2(coeffs: list, size: tuple[int, int], wave: str = "db4", mode: str = "symmetric") -> torch.Tensor:
    """The inverse of :func:`dwt2` (with the same ``mode``), cropped to the original ``size`` = (H, W).

    Only periodization needs the mode: the padded modes all invert by the same full convolution and crop."""
    if mode == PERIODIZATION:
        return _periodization_waverec2(coeffs, size, pywt.Wavelet(wave))
    out = ptwt.waverec2(tuple([coeffs[0], *[tuple(d) for d in coeffs[1:]]]), pywt.Wavelet(wave))
    return out[..., : size[0], : size[1]]


def _every_other(ndim: int, dim: int) -> tuple:
    """The index of samples 0, 2, 4, ... along ``dim``."""
    index = [slice(None)] * ndim
    index[dim] = slice(0, None, 2)
    return tuple(index)


def _filter(taps, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(taps, dtype=like.dtype, device=like.device)


def _periodization_analysis(x: torch.Tensor, dim: int, wavelet: pywt.Wavelet) -> tuple[torch.Tensor, torch.Tensor]:
    """One level along ``dim``: c[k] = sum_j f[j] x[(2k + L/2 - j) mod N] for the low- and high-pass decomposition
    filters f of even length L (PyWavelets' periodization); an odd N is first extended by its last sample."""
    if x.shape[dim] % 2:
        x = torch.cat([x, x.narrow(dim, x.shape[dim] - 1, 1)], dim=dim)
    half = wavelet.dec_len // 2
    shifted = [torch.roll(x, shifts=j - half, dims=dim) for j in range(wavelet.dec_len)]
    outputs = []
    for taps in (wavelet.dec_lo, wavelet.dec_hi):
        f = _filter(taps, x)
        full = sum(f[j] * shifted[j] for j in range(wavelet.dec_len))
        outputs.append(full[_every_other(full.dim(), dim)])
    return outputs[0], outputs[1]


def _periodization_synthesis(low: torch.Tensor, high: torch.Tensor, dim: int, wavelet: pywt.Wavelet) -> torch.Tensor:
    """The inverse of :func:`_periodization_analysis` (length 2K): x[n] = sum_j r[j] c_up[(n - j + L/2 - 1) mod 2K]
    summed over the low and high bands, with c_up the band with zeros between its samples."""
    half = wavelet.rec_len // 2
    out = None
    for band, taps in ((low, wavelet.rec_lo), (high, wavelet.rec_hi)):
        shape = list(band.shape)
        shape[dim] *= 2
        up = band.new_zeros(shape)
        up[_every_other(band.dim(), dim)] = band
        f = _filter(taps, band)
        part = sum(f[j] * torch.roll(up, shifts=j - half + 1, dims=dim) for j in range(wavelet.rec_len))
        out = part if out is None else out + part
    return out


def _periodization_wavedec2(x: torch.Tensor, wavelet: pywt.Wavelet, level: int) -> list:
    """``[LL_J, (LH, HL, HH)_J, ..., (LH, HL, HH)_1]`` in PyWavelets' order (rows = dim -2, columns = dim -1)."""
    details, ll = [], x
    for _ in range(level):
        low, high = _periodization_analysis(ll, -1, wavelet)  # along the columns (width)
        ll, lh = _periodization_analysis(low, -2, wavelet)  # then along the rows (height)
        hl, hh = _periodization_analysis(high, -2, wavelet)
        details.append((lh, hl, hh))
    return [ll, *reversed(details)]


def _periodization_waverec2(coeffs: list, size: tuple[int, int], wavelet: pywt.Wavelet) -> torch.Tensor:
    ll = coeffs[0]
    for lh, hl, hh in coeffs[1:]:
        ll = ll[..., : lh.shape[-2], : lh.shape[-1]]  # an odd side's extension, one coefficient too many
        low = _periodization_synthesis(ll, lh, -2, wavelet)
        high = _periodization_synthesis(hl, hh, -2, wavelet)
        ll = _periodization_synthesis(low, high, -1, wavelet)
    return ll[..., : size[0], : size[1]]


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
    return idwt2(coeffs, pred.shape[-2:], wave, mode).to(pred.dtype)
