"""The backbone-agnostic core: noise levels, sharpening, the stage loop, SDEdit equivalence, oracle guidance."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, UNet2DModel

from diffusehigh import core, dwt
from diffusehigh.config import BaseModelConfig, StageConfig
from diffusehigh.models import PixelDenoiser, build_scheduler

from .numerics import NET_OPS, rounding_tolerance

F64 = torch.float64


def sdxl_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )


def test_last_15_of_50_sdxl_euler_steps_start_at_t281_sigma_0779():
    levels = core.euler_stage_levels(sdxl_scheduler(), 50, 15)
    assert levels.timesteps == tuple(range(281, 0, -20))
    # The notes give 4 decimals, so half a unit of the 4th (5e-5) is the tolerance; rounding in diffusers' float32
    # schedule is ~1e-7.
    assert levels.sigmas[0] == pytest.approx(0.7789, abs=5e-5)
    assert 1 / (1 + levels.sigmas[0] ** 2) == pytest.approx(0.6224, abs=5e-5)  # alpha_bar(281)
    assert levels.sigmas[-1] == 0 and len(levels) == 15


def test_sigma_matched_level_on_ddpm_linear_is_near_t215_not_281():
    alphas = build_scheduler(BaseModelConfig()).alphas_cumprod
    levels = core.levels_from_sigma(alphas, 0.7789, 15)
    t0 = levels.timesteps[0]
    assert 208 <= t0 <= 218 and levels.timesteps[-1] == 0 and len(levels) == 15
    # The nearest discrete level: within half the local spacing of the training sigmas (~0.0045 per step here).
    sig = core.sigmas_from_alphas_cumprod(alphas)
    assert abs(levels.sigmas[0] - 0.7789) <= float(sig[t0 + 1] - sig[t0 - 1]) / 4


def test_ddim_levels_match_diffusers_ddim_timesteps():
    sched = DDIMScheduler(beta_schedule="linear")
    sched.set_timesteps(50)
    assert core.ddim_levels(sched.alphas_cumprod, 50).timesteps == tuple(int(t) for t in sched.timesteps)


def test_sharpening_is_identity_at_alpha_0_and_deterministic_with_a_seeded_generator():
    x = torch.rand(2, 3, 16, 16, dtype=F64)
    y, _ = core.sharpen(x, 0.0, 3, (0.1, 2.0), torch.Generator().manual_seed(0))
    assert torch.equal(x, y)
    a, sa = core.sharpen(x, 1.0, 3, (0.1, 2.0), torch.Generator().manual_seed(1))
    b, sb = core.sharpen(x, 1.0, 3, (0.1, 2.0), torch.Generator().manual_seed(1))
    _, sc = core.sharpen(x, 1.0, 3, (0.1, 2.0), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and sa == sb and sa != sc and 0.1 <= sa <= 2.0
    const = torch.full((1, 3, 8, 8), 0.3, dtype=F64)
    # A constant is a fixed point of the unsharp mask: 2x - blur(x) with normalised taps; 2 x 3 taps plus the mask's
    # 2 operations, each rounding once in float64.
    assert (core.sharpen(const, 1.0, 3, 1.0)[0] - const).abs().max() <= rounding_tolerance(F64, ops=8)
    blur = lambda im: core.gaussian_blur(im, 5, 1.5)  # noqa: E731
    assert ((a - blur(a)) ** 2).mean() > ((x - blur(x)) ** 2).mean()


def test_gaussian_blur_matches_torchvision():
    tv = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(1, 3, 12, 12, dtype=F64)  # torchvision builds its kernel in the image's dtype
    # Separable (ours) vs one 3x3 convolution (torchvision): 9 products + their sums, values <= 1, in float64.
    tol = rounding_tolerance(F64, ops=2 * 9)
    assert (core.gaussian_blur(x, 3, 0.8) - tv.gaussian_blur(x, [3, 3], [0.8, 0.8])).abs().max() <= tol


def tiny_pixel_model(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4,
    )  # fmt: skip
    return unet.to(dtype).eval()


def float64_ddim(**kwargs) -> DDIMScheduler:
    """diffusers' DDIMScheduler computing its step coefficients in float64 (its alphas_cumprod are float32 by
    default; the float32 values are kept, only the arithmetic on them is float64)."""
    sched = DDIMScheduler(beta_schedule="linear", clip_sample=True, set_alpha_to_one=True, **kwargs)
    sched.alphas_cumprod = sched.alphas_cumprod.to(F64)
    return sched


def sampler_tolerance(levels: core.NoiseLevels) -> float:
    """Rounding bound for a float64 DDIM run over ``levels``: NET_OPS per step, amplified at most by
    1 / sqrt(alpha_bar) = sqrt(1 + sigma^2) (x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)) at the noisiest level.
    ~1e-10 here, while a different formula (clipped eps, another timestep) differs by >= 1e-3."""
    return rounding_tolerance(F64, ops=NET_OPS * len(levels), scale=math.sqrt(1 + levels.sigmas[0] ** 2))


def test_dwt_steps_0_equals_sdedit_with_diffusers_ddim():
    """Core with dwt_steps=0 == upsample + sharpen + add_noise(t=280) + diffusers DDIM(eta=0) over t=280..0,
    with DDIMScheduler's default step (clip_sample=True, use_clipped_model_output=False); both in float64, so the
    identity is checked to rounding, whatever CPU kernels torch picks."""
    unet = tiny_pixel_model(F64)
    sched = float64_ddim()
    alphas = sched.alphas_cumprod
    sigma_280 = math.sqrt((1 - alphas[280]) / alphas[280])
    levels = core.levels_from_sigma(alphas, sigma_280, 15)
    assert levels.timesteps == tuple(range(280, -1, -20))
    stage = StageConfig(dwt_steps=0, noise_sigma=sigma_280, stage_steps=15)
    low = torch.rand(2, 3, 8, 8, dtype=F64) * 2 - 1
    denoise = PixelDenoiser(unet, alphas, "epsilon", clip_x0=True)
    ours, info = core.diffusehigh_stage(low, (16, 16), denoise, levels, stage, torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)
    guide, _ = core.sharpen(core.upsample(low, (16, 16)), 1.0, 3, (0.1, 2.0), g)
    noise = torch.randn(guide.shape, generator=g).to(F64)  # the core draws its noise in float32 too
    sched.set_timesteps(50)
    x = sched.add_noise(guide, noise, torch.tensor([280]))
    with torch.no_grad():
        for t in sched.timesteps[-15:]:
            eps = unet(sample=x, timestep=t).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    assert info.guided_steps == 0 and denoise.calls == 15 and ours.dtype == x.dtype == F64
    assert (ours - x).abs().max() <= sampler_tolerance(levels), (ours - x).abs().max()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_base_sampling_equals_diffusers_ddim_default_with_clipping(prediction_type):
    """core.sample == diffusers DDIM(clip_sample=True) default loop, and differs from the clipped-eps variant.

    In float64 on both sides: in float32 the 10 steps amplify rounding by up to 1/sqrt(alpha_bar) ~ 65, and the
    difference (~1e-4) depended on which CPU kernels torch picked (it failed on AVX-512 at atol=1e-4)."""
    unet = tiny_pixel_model(F64)
    sched = float64_ddim(prediction_type=prediction_type)
    levels = core.ddim_levels(sched.alphas_cumprod, 10)
    denoise = PixelDenoiser(unet, sched.alphas_cumprod, prediction_type, clip_x0=True)
    ours = core.sample(denoise, (2, 3, 16, 16), levels, torch.Generator().manual_seed(5), dtype=F64)

    def diffusers_loop(clipped_eps: bool) -> torch.Tensor:
        x = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(5)).to(F64)  # core's float32 draws
        sched.set_timesteps(10)
        with torch.no_grad():
            for t in sched.timesteps:
                out = unet(sample=x, timestep=t).sample
                x = sched.step(out, t, x, eta=0.0, use_clipped_model_output=clipped_eps).prev_sample
        return x

    ref = diffusers_loop(False)
    assert ours.dtype == ref.dtype == F64
    assert (ours - ref).abs().max() <= sampler_tolerance(levels), (ours - ref).abs().max()
    # the old (clipped-eps) sampler is a different one: it differs at O(0.1), 10^8 times the rounding bound
    assert (ours - diffusers_loop(True)).abs().max() > 1e-3


def test_oracle_denoiser_output_low_band_is_the_guides_with_full_guidance_only():
    wrong = torch.rand(1, 3, 16, 16, dtype=F64) * 2 - 1
    oracle = lambda z, sigma, t: wrong  # noqa: E731  (predicts the same wrong layout at every level)
    levels = core.NoiseLevels((3, 2, 1), (0.8, 0.5, 0.2, 0.0))
    low = torch.rand(1, 3, 8, 8, dtype=F64) * 2 - 1
    full = StageConfig(dwt_steps=3, dwt_wave="haar", sharpening_alpha=0.0)
    out, _ = core.diffusehigh_stage(low, (16, 16), oracle, levels, full, torch.Generator().manual_seed(0))
    guide_ll = dwt.lowpass(core.upsample(low, (16, 16)), "haar")
    # The last step ends at sigma 0 on the guided x0, whose haar LL is the guide's up to one DWT + iDWT + DWT in
    # float64 (2 taps per axis and level: ~12 rounded operations on values <= 2).
    assert out.dtype == F64 and (dwt.lowpass(out, "haar") - guide_ll).abs().max() <= rounding_tolerance(F64, 12, 2)
    none, _ = core.diffusehigh_stage(
        low, (16, 16), oracle, levels, StageConfig(dwt_steps=0), torch.Generator().manual_seed(0)
    )
    # Unguided, the last DDIM step to sigma 0 returns the prediction itself (exactly); its LL is far from the guide's.
    assert torch.equal(none, wrong) and (dwt.lowpass(none, "haar") - guide_ll).abs().max() > 0.1


class Recorder:
    """A fake denoiser that records what it sees: x0 = z/2 clamped, eps = (z - x0) / sigma."""

    def __init__(self):
        self.z = []

    def __call__(self, z, sigma, t):
        self.z.append(z.clone())
        return (z * 0.5).clamp(-1, 1)


def test_guided_steps_are_the_first_dwt_steps(monkeypatch):
    """The LL swap is applied exactly at steps 0 .. dwt_steps-1 (recorded through a wrapped lowpass_swap)."""
    calls = []
    swap = dwt.lowpass_swap

    def recording_swap(*args, **kwargs):
        calls.append(len(rec.z) - 1)  # index of the step whose x0 is being guided
        return swap(*args, **kwargs)

    monkeypatch.setattr(core.dwt_lib, "lowpass_swap", recording_swap)
    levels = core.NoiseLevels((5, 4, 3, 2, 1), (0.9, 0.7, 0.5, 0.3, 0.1, 0.0))
    low = torch.rand(1, 3, 8, 8) * 2 - 1
    for k in (0, 2, 5, 9):
        calls.clear()
        rec = Recorder()
        _, info = core.diffusehigh_stage(
            low, (16, 16), rec, levels, StageConfig(dwt_steps=k, dwt_wave="haar"), torch.Generator().manual_seed(0)
        )
        assert calls == list(range(min(k, 5))) and info.guided_steps == min(k, 5) and len(rec.z) == 5


def test_fresh_renoise_only_renoises_the_guided_steps():
    levels = core.NoiseLevels((4, 3, 2, 1), (0.9, 0.6, 0.4, 0.2, 0.0))
    low = torch.rand(1, 3, 8, 8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    det, fresh = Recorder(), Recorder()
    out_det, _ = core.diffusehigh_stage(low, (16, 16), det, levels, StageConfig(dwt_steps=2), g())
    out_fresh, _ = core.diffusehigh_stage(low, (16, 16), fresh, levels, StageConfig(dwt_steps=2, renoise="fresh"), g())
    assert torch.equal(det.z[0], fresh.z[0])  # same start
    assert (det.z[1] - fresh.z[1]).abs().max() > 1e-2  # guided step 0 re-noised with fresh noise
    assert (out_det - out_fresh).abs().max() > 1e-2  # fresh noise, not rounding
    # unguided steps are deterministic: with dwt_steps=0, "fresh" changes nothing at all
    a, _ = core.diffusehigh_stage(low, (16, 16), Recorder(), levels, StageConfig(dwt_steps=0), g())
    b, _ = core.diffusehigh_stage(low, (16, 16), Recorder(), levels, StageConfig(dwt_steps=0, renoise="fresh"), g())
    assert torch.equal(a, b)
    # and after the last guided step, the fresh run follows the deterministic DDIM step from its own state
    r = Recorder()
    core.diffusehigh_stage(low.to(F64), (16, 16), r, levels, StageConfig(dwt_steps=1, renoise="fresh"), g())
    x0 = (r.z[1] * 0.5).clamp(-1, 1)
    eps = (r.z[1] - x0) / 0.6
    # the same 4 float64 operations on values <= ~5 in another arrangement
    assert (r.z[2] - (x0 + 0.4 * eps)).abs().max() <= rounding_tolerance(F64, ops=4, scale=5)


def test_progressive_sizes():
    denoise = lambda z, sigma, t: z.clamp(-1, 1) * 0.5  # noqa: E731
    levels = core.NoiseLevels((3, 2, 1), (0.8, 0.5, 0.2, 0.0))
    low = torch.rand(1, 3, 8, 8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    images, infos = core.diffusehigh(low, denoise, levels, StageConfig(scale_factors=(2.0, 3.0)), g())
    assert [im.shape[-1] for im in images] == [16, 24] and [i.size for i in infos] == [(16, 16), (24, 24)]
    with pytest.raises(ValueError, match="increasing"):
        core.stage_sizes((8, 8), (2.0, 1.5))


class Counting:
    """A denoiser/codec pair that counts its calls (the "network" of the validation tests)."""

    def __init__(self):
        self.denoise_calls = self.encode_calls = self.decode_calls = 0

    def denoise(self, z, sigma, t):
        self.denoise_calls += 1
        return z.clamp(-1, 1) * 0.5

    def encode(self, x):
        self.encode_calls += 1
        return x

    def decode(self, z):
        self.decode_calls += 1
        return z

    @property
    def calls(self) -> int:
        return self.denoise_calls + self.encode_calls + self.decode_calls


LEVELS = core.NoiseLevels((3, 2, 1), (0.8, 0.5, 0.2, 0.0))


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"size": (16, 41), "size_multiple": 8}, "width 41 is not a multiple of the VAE factor 8"),
        ({"size": (18, 16), "size_multiple": 4}, "height 18 is not a multiple of the VAE factor 4"),
        ({"size": (8, 4)}, "must not be smaller than the base (8, 8)"),  # shrinks the 8x8 previous image
        ({"size": (16, 4)}, "must not be smaller"),
        ({"size": (16, 0)}, "size width"),
        ({"size": (16,)}, "size must be (height, width)"),
        ({"size_multiple": 0}, "size_multiple"),
        ({"stage": {"dwt_steps": -1}}, "dwt_steps"),
        ({"stage": {"dwt_steps": 1.5}}, "dwt_steps"),
        ({"stage": {"stage_steps": 0}}, "stage_steps"),
        ({"stage": {"noise_sigma": 0.0}}, "noise_sigma"),
        ({"stage": {"noise_sigma": float("nan")}}, "noise_sigma"),
        ({"stage": {"sharpening_alpha": -1.0}}, "sharpening_alpha"),
        ({"stage": {"sharpening_kernel_size": 4}}, "sharpening_kernel_size"),
        ({"stage": {"sharpening_sigma": (2.0, 1.0)}}, "sharpening_sigma"),
        ({"stage": {"sharpening_sigma": (0.0, 1.0)}}, "sharpening_sigma[0]"),
        ({"stage": {"dwt_wave": "db99"}}, "dwt_wave"),
        ({"stage": {"dwt_level": 0}}, "dwt_level"),
        ({"stage": {"dwt_mode": "wrap"}}, "dwt_mode"),
        ({"stage": {"renoise": "sometimes"}}, "renoise"),
        ({"stage": {"upsample_mode": "lanczos"}}, "upsample_mode"),
        ({"stage": {"diffusehigh_guidance_scale": float("inf")}}, "diffusehigh_guidance_scale"),
        ({"stage": {"scale_factors": ()}}, "scale_factors"),
        ({"stage": {"scale_factors": (2.0, 1.5)}}, "scale_factors must be increasing"),
        ({"levels": core.NoiseLevels((), (0.0,))}, "levels"),
        ({"levels": core.NoiseLevels((1,), (0.0, 0.0))}, "levels"),
        ({"clip_range": (1.0, -1.0)}, "clip_range"),
        ({"guidance_factor": 1.5}, "guidance_factor"),
        ({"previous": torch.rand(3, 8, 8)}, "previous"),
    ],
)
def test_a_bad_stage_argument_is_refused_before_any_network_call(changes, name):
    """Every argument of the stage loop is checked first: the error names it and the denoiser, encoder and decoder
    are never called (before, a bad ``renoise`` was found after the VAE encode)."""
    net = Counting()
    stage = StageConfig(**changes.get("stage", {}))
    kwargs = {"clip_range": changes.get("clip_range"), "guidance_factor": changes.get("guidance_factor", 1.0),
              "size_multiple": changes.get("size_multiple", 1)}  # fmt: skip
    previous = changes.get("previous", torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=re.escape(name)):
        core.diffusehigh_stage(
            previous, changes.get("size", (16, 16)), net.denoise, changes.get("levels", LEVELS), stage,
            torch.Generator().manual_seed(0), net.encode, net.decode, **kwargs,
        )  # fmt: skip
    assert net.calls == 0


def test_the_progressive_loop_checks_every_stage_before_the_first():
    """A size that only the last stage gets wrong (base 8 x 1.5 = 12 is fine, x 2.6 = 20.8 -> 21 is not a multiple
    of 4) stops the loop before the first stage runs."""
    net = Counting()
    stage = StageConfig(scale_factors=(1.5, 2.6), dwt_wave="haar")
    with pytest.raises(ValueError, match="not a multiple of the VAE factor 4"):
        core.diffusehigh(torch.rand(1, 3, 8, 8), net.denoise, LEVELS, stage, None, net.encode, net.decode,
                         size_multiple=4)  # fmt: skip
    assert net.calls == 0
    images, _ = core.diffusehigh(torch.rand(1, 3, 8, 8), net.denoise, LEVELS, replace(stage, scale_factors=(1.5, 2.5)),
                                 None, net.encode, net.decode, size_multiple=4)  # fmt: skip
    assert [im.shape[-1] for im in images] == [12, 20] and net.denoise_calls == 2 * len(LEVELS)


def test_a_bad_sampling_argument_is_refused_before_any_network_call():
    net = Counting()
    with pytest.raises(ValueError, match="levels"):
        core.sample(net.denoise, (1, 3, 8, 8), core.NoiseLevels((), (0.0,)), None)
    with pytest.raises(ValueError, match="shape"):
        core.sample(net.denoise, (1, 3, 0, 8), LEVELS, None)
    assert net.calls == 0


def test_a_stage_the_same_size_as_the_previous_one_is_a_refinement_pass():
    """Stage sizes may stay the same (re-noise and denoise without upsampling), in one stage call and in the
    progressive loop (factors 1.0: the base size; 1.05 rounds to it too); only shrinking is refused."""
    net = Counting()
    previous = torch.rand(1, 3, 8, 8)
    out, info = core.diffusehigh_stage(previous, (8, 8), net.denoise, LEVELS, StageConfig(dwt_wave="haar"),
                                       torch.Generator().manual_seed(0), net.encode, net.decode)  # fmt: skip
    assert out.shape == previous.shape and info.size == (8, 8) and net.denoise_calls == len(LEVELS)
    images, _ = core.diffusehigh(previous, net.denoise, LEVELS, StageConfig(scale_factors=(1.0, 1.05, 2.0)),
                                 torch.Generator().manual_seed(0), net.encode, net.decode)  # fmt: skip
    assert [tuple(im.shape[-2:]) for im in images] == [(8, 8), (8, 8), (16, 16)]
    assert core.check_stage_sizes((8, 8), [(8, 8), (16, 8), (16, 16), (16, 16)]) == [(8, 8), (16, 8), (16, 16),
                                                                                    (16, 16)]  # fmt: skip
    with pytest.raises(ValueError, match=re.escape("size[1] (16, 8) must not be smaller than stage 0 (16, 16)")):
        core.check_stage_sizes((8, 8), [(16, 16), (16, 8)])
    before = net.calls
    with pytest.raises(ValueError, match="must not be smaller"):
        core.diffusehigh(previous, net.denoise, LEVELS, StageConfig(scale_factors=(0.5, 2.0)), None, net.encode,
                         net.decode)  # fmt: skip
    assert net.calls == before


def test_checks_raise_the_error_class_they_are_given():
    """reproduce.validate_config passes ConfigError (a user error); direct calls get ValueError. A ``names`` key that
    is no StageConfig field is the caller's bug, so it stays a plain ValueError whatever ``error`` is."""
    from common.config import ConfigError
    from common.errors import UserError

    with pytest.raises(ConfigError, match=re.escape("stages.dwt_steps must be >= 0")):
        core.validate_stage_config(StageConfig(dwt_steps=-1), {"dwt_steps": "stages.dwt_steps"}, error=ConfigError)
    with pytest.raises(ValueError, match="dwt_steps must be >= 0") as plain:
        core.validate_stage_config(StageConfig(dwt_steps=-1))
    assert not isinstance(plain.value, UserError)
    with pytest.raises(ValueError, match="names maps fields") as bug:
        core.validate_stage_config(StageConfig(), {"no_such_field": "x"}, error=ConfigError)
    assert not isinstance(bug.value, UserError)
    for call in (
        lambda: core.check_int(1.5, "n", error=ConfigError),
        lambda: core.check_real(float("nan"), "x", error=ConfigError),
        lambda: core.check_sharpening_sigma((2.0, 1.0), error=ConfigError),
        lambda: core.check_stage_sizes((8, 8), [(4, 4)], error=ConfigError),
        lambda: core.check_stage_sizes((8, 8), [(12, 12)], 8, error=ConfigError),
    ):
        with pytest.raises(ConfigError):
            call()


def test_check_int_takes_whole_floats_only_when_asked():
    assert core.check_int(1024 * 1.5, "h", integral_float=True) == 1536
    assert type(core.check_int(np.float32(64.0), "h", integral_float=True)) is int
    assert core.check_int(np.int64(48), "h") == 48
    for value in (1536.5, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="h must be an integer"):
            core.check_int(value, "h", integral_float=True)
    with pytest.raises(ValueError, match="h must be an integer"):
        core.check_int(1536.0, "h")


def test_the_progressive_loop_validates_the_stage_config_once(monkeypatch):
    """Not once per stage on top of the up-front check; and PyWavelets' wavelet list is built once per process."""
    calls = []
    validate = core.validate_stage_config
    monkeypatch.setattr(core, "validate_stage_config", lambda *a, **k: calls.append(1) or validate(*a, **k))
    net = Counting()
    stage = StageConfig(scale_factors=(1.5, 2.0, 3.0))
    images, _ = core.diffusehigh(torch.rand(1, 3, 8, 8), net.denoise, LEVELS, stage, None, net.encode, net.decode)
    assert len(images) == 3 and len(calls) == 1
    core.diffusehigh_stage(torch.rand(1, 3, 8, 8), (16, 16), net.denoise, LEVELS, StageConfig())  # a direct call
    assert len(calls) == 2  # checks its own arguments

    wavelists = []
    wavelist = core.pywt.wavelist
    monkeypatch.setattr(core.pywt, "wavelist", lambda *a, **k: wavelists.append(1) or wavelist(*a, **k))
    core.discrete_wavelets.cache_clear()
    for wave in ("haar", "db4", "sym4"):
        core.validate_stage_config(StageConfig(dwt_wave=wave))
    assert len(wavelists) == 1
