"""DWT wrappers (ptwt) against PyWavelets, shapes, perfect reconstruction and the low-pass swap.

Identities are checked in float64 (the wrappers keep float64 input in float64), against a rounding bound: a level-J
transform of values <= 1 is ~2 x 8 multiply-adds per coefficient and level (db4 has 8 taps) on values that grow by
at most 2 per level, so ``rounding_tolerance(F64, ops=64 * J, scale=2**J)`` (~1e-13) bounds one transform, its
inverse or a swap, whatever CPU kernels torch picks; a wrong filter or boundary mode differs by >= 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from diffusehigh import dwt

from .numerics import rounding_tolerance

F64 = torch.float64


def dwt_tolerance(level: int = 1) -> float:
    return rounding_tolerance(F64, ops=64 * level, scale=2**level)


@pytest.mark.parametrize("n", [32, 64, 96, 128])
def test_db4_level1_symmetric_maps_n_to_n_plus_7_over_2(n):
    ll = dwt.lowpass(torch.rand(1, 3, n, n))
    assert ll.shape == (1, 3, (n + 7) // 2, (n + 7) // 2)


def test_sdxl_2048_gives_a_1027_low_band():
    assert dwt.lowpass(torch.rand(1, 1, 2048, 2048)).shape[-2:] == (1027, 1027)


@pytest.mark.parametrize("wave,level", [("db4", 1), ("db4", 2), ("haar", 1), ("sym4", 1)])
def test_coefficients_and_inverse_match_pywavelets(wave, level):
    x = torch.rand(2, 3, 40, 36, dtype=F64)
    ours = dwt.dwt2(x, wave, level, "symmetric")
    assert ours[0].dtype == F64
    ref = pywt.wavedec2(x.numpy(), wave, mode="symmetric", level=level, axes=(-2, -1))  # float64 as well
    tol = dwt_tolerance(level)
    np.testing.assert_allclose(ours[0].numpy(), ref[0], rtol=0, atol=tol)
    for bands, ref_bands in zip(ours[1:], ref[1:], strict=True):
        for a, b in zip(bands, ref_bands, strict=True):
            np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=tol)
    rec = dwt.idwt2(ours, x.shape[-2:], wave)
    ref_rec = pywt.waverec2(ref, wave, mode="symmetric", axes=(-2, -1))[..., :40, :36]
    np.testing.assert_allclose(rec.numpy(), ref_rec, rtol=0, atol=2 * tol)  # the inverse adds as much again


def test_float32_input_is_transformed_in_float32_as_released():
    x = torch.rand(1, 3, 16, 16)
    assert dwt.dwt2(x)[0].dtype == torch.float32 and dwt.dwt2(x.half())[0].dtype == torch.float32


@pytest.mark.parametrize("wave", ["db4", "haar"])
def test_perfect_reconstruction(wave):
    x = torch.rand(2, 3, 64, 48, dtype=F64)
    assert (dwt.idwt2(dwt.dwt2(x, wave), (64, 48), wave) - x).abs().max() <= 2 * dwt_tolerance()


def test_haar_swap_puts_the_guide_low_band_in_place_exactly_and_keeps_high_bands():
    guide, pred = torch.rand(2, 3, 32, 32, dtype=F64), torch.rand(2, 3, 32, 32, dtype=F64)
    ll = dwt.lowpass(guide, "haar")
    out = dwt.lowpass_swap(pred, ll, "haar")
    after, before = dwt.dwt2(out, "haar"), dwt.dwt2(pred, "haar")
    tol = 3 * dwt_tolerance()  # DWT, inverse, DWT
    assert (after[0] - ll).abs().max() <= tol
    for a, b in zip(after[1], before[1], strict=True):
        assert (a - b).abs().max() <= tol


def test_db4_swap_is_exact_away_from_the_boundary_and_equals_pywavelets_swap():
    guide, pred = torch.rand(1, 3, 64, 64, dtype=F64), torch.rand(1, 3, 64, 64, dtype=F64)
    ll = dwt.lowpass(guide)
    out = dwt.lowpass_swap(pred, ll)
    residual = dwt.lowpass(out) - ll
    tol = 3 * dwt_tolerance()  # DWT, inverse, DWT
    assert residual[..., 4:-4, 4:-4].abs().max() <= tol  # boundary coefficients are not idempotent for db4
    assert residual.abs().max() > 1e-3  # ... and at the boundary the residual is real, not rounding
    ref_pred = pywt.wavedec2(pred.numpy(), "db4", mode="symmetric", level=1, axes=(-2, -1))
    ref = pywt.waverec2([ll.numpy(), ref_pred[1]], "db4", mode="symmetric", axes=(-2, -1))
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=tol)


def test_partial_guidance_factor_and_shape_errors():
    guide, pred = torch.rand(1, 3, 32, 32, dtype=F64), torch.rand(1, 3, 32, 32, dtype=F64)
    ll = dwt.lowpass(guide, "haar")
    half = dwt.lowpass(dwt.lowpass_swap(pred, ll, "haar", factor=0.5), "haar")
    assert (half - 0.5 * (ll + dwt.lowpass(pred, "haar"))).abs().max() <= 4 * dwt_tolerance()
    with pytest.raises(ValueError, match="does not match"):
        dwt.lowpass_swap(pred, ll[..., :-1], "haar")
    with pytest.raises(ValueError, match="unknown discrete wavelet"):
        dwt.lowpass(pred, "nope")


@pytest.mark.parametrize("wave", ["db4", "haar", "bior2.2"])
@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("size", [(40, 36), (25, 21)], ids=["even", "odd"])
def test_periodization_matches_pywavelets(wave, level, size):
    """ptwt has no periodization mode; ours (a circular convolution kept at every second sample) gives PyWavelets'
    coefficients and inverse, also for odd sides (extended by their last sample) and two levels."""
    x = torch.rand(2, 3, *size, dtype=F64)
    ours = dwt.dwt2(x, wave, level, "periodization")
    ref = pywt.wavedec2(x.numpy(), wave, mode="periodization", level=level, axes=(-2, -1))
    tol = dwt_tolerance(level)
    assert ours[0].shape[-2:] == ref[0].shape[-2:]
    np.testing.assert_allclose(ours[0].numpy(), ref[0], rtol=0, atol=tol)
    for bands, ref_bands in zip(ours[1:], ref[1:], strict=True):
        for a, b in zip(bands, ref_bands, strict=True):
            np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=tol)
    rec = dwt.idwt2(ours, size, wave, "periodization")
    ref_rec = pywt.waverec2(ref, wave, mode="periodization", axes=(-2, -1))[..., : size[0], : size[1]]
    np.testing.assert_allclose(rec.numpy(), ref_rec, rtol=0, atol=2 * tol)
    assert (rec - x).abs().max() <= 2 * tol  # perfect reconstruction


def test_db4_periodization_halves_each_side_and_its_swap_is_exact_everywhere():
    """An orthogonal wavelet with periodization is an orthogonal transform of an even-sized image, so the LL swap is
    idempotent at the boundary too (with symmetric padding it is not: see the test above)."""
    guide, pred = torch.rand(1, 3, 64, 48, dtype=F64), torch.rand(1, 3, 64, 48, dtype=F64)
    ll = dwt.lowpass(guide, "db4", 1, "periodization")
    assert ll.shape[-2:] == (32, 24)
    out = dwt.lowpass_swap(pred, ll, "db4", 1, "periodization")
    assert (dwt.lowpass(out, "db4", 1, "periodization") - ll).abs().max() <= 3 * dwt_tolerance()
