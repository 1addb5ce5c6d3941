"""The backbone-agnostic core: noise levels, sharpening, the stage loop, SDEdit equivalence, oracle guidance."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, UNet2DModel

from diffusehigh import core, dwt
from diffusehigh.config import BaseModelConfig, StageConfig
from diffusehigh.models import PixelDenoiser, build_scheduler


def sdxl_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )


def test_last_15_of_50_sdxl_euler_steps_start_at_t281_sigma_0779():
    levels = core.euler_stage_levels(sdxl_scheduler(), 50, 15)
    assert levels.timesteps == tuple(range(281, 0, -20))
    assert levels.sigmas[0] == pytest.approx(0.7789, abs=1e-3)
    assert 1 / (1 + levels.sigmas[0] ** 2) == pytest.approx(0.6224, abs=1e-3)  # alpha_bar(281)
    assert levels.sigmas[-1] == 0 and len(levels) == 15


def test_sigma_matched_level_on_ddpm_linear_is_near_t215_not_281():
    alphas = build_scheduler(BaseModelConfig()).alphas_cumprod
    levels = core.levels_from_sigma(alphas, 0.7789, 15)
    assert 208 <= levels.timesteps[0] <= 218 and levels.sigmas[0] == pytest.approx(0.7789, abs=0.01)
    assert levels.timesteps[-1] == 0 and len(levels) == 15


def test_ddim_levels_match_diffusers_ddim_timesteps():
    sched = DDIMScheduler(beta_schedule="linear")
    sched.set_timesteps(50)
    assert core.ddim_levels(sched.alphas_cumprod, 50).timesteps == tuple(int(t) for t in sched.timesteps)


def test_sharpening_is_identity_at_alpha_0_and_deterministic_with_a_seeded_generator():
    x = torch.rand(2, 3, 16, 16)
    y, _ = core.sharpen(x, 0.0, 3, (0.1, 2.0), torch.Generator().manual_seed(0))
    assert torch.equal(x, y)
    a, sa = core.sharpen(x, 1.0, 3, (0.1, 2.0), torch.Generator().manual_seed(1))
    b, sb = core.sharpen(x, 1.0, 3, (0.1, 2.0), torch.Generator().manual_seed(1))
    _, sc = core.sharpen(x, 1.0, 3, (0.1, 2.0), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and sa == sb and sa != sc and 0.1 <= sa <= 2.0
    const = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(core.sharpen(const, 1.0, 3, 1.0)[0], const, atol=1e-6)
    blur = lambda im: core.gaussian_blur(im, 5, 1.5)  # noqa: E731
    assert ((a - blur(a)) ** 2).mean() > ((x - blur(x)) ** 2).mean()


def test_gaussian_blur_matches_torchvision():
    tv = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(1, 3, 12, 12)
    assert torch.allclose(core.gaussian_blur(x, 3, 0.8), tv.gaussian_blur(x, [3, 3], [0.8, 0.8]), atol=1e-6)


def tiny_pixel_model():
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4,
    )  # fmt: skip
    return unet.eval()


def test_dwt_steps_0_equals_sdedit_with_diffusers_ddim():
    """Core with dwt_steps=0 == upsample + sharpen + add_noise(t=280) + diffusers DDIM(eta=0) over t=280..0,
    with DDIMScheduler's default step (clip_sample=True, use_clipped_model_output=False)."""
    unet = tiny_pixel_model()
    sched = DDIMScheduler(beta_schedule="linear", clip_sample=True, set_alpha_to_one=True)
    alphas = sched.alphas_cumprod
    sigma_280 = math.sqrt((1 - alphas[280]) / alphas[280])
    levels = core.levels_from_sigma(alphas, sigma_280, 15)
    assert levels.timesteps == tuple(range(280, -1, -20))
    stage = StageConfig(dwt_steps=0, noise_sigma=sigma_280, stage_steps=15)
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    denoise = PixelDenoiser(unet, alphas, "epsilon", clip_x0=True)
    ours, info = core.diffusehigh_stage(low, (16, 16), denoise, levels, stage, torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)
    guide, _ = core.sharpen(core.upsample(low, (16, 16)), 1.0, 3, (0.1, 2.0), g)
    noise = torch.randn(guide.shape, generator=g)
    sched.set_timesteps(50)
    x = sched.add_noise(guide, noise, torch.tensor([280]))
    with torch.no_grad():
        for t in sched.timesteps[-15:]:
            eps = unet(sample=x, timestep=t).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    assert info.guided_steps == 0 and denoise.calls == 15
    assert torch.allclose(ours, x, atol=1e-4), (ours - x).abs().max()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_base_sampling_equals_diffusers_ddim_default_with_clipping(prediction_type):
    """core.sample == diffusers DDIM(clip_sample=True) default loop, and differs from the clipped-eps variant."""
    unet = tiny_pixel_model()
    sched = DDIMScheduler(
        beta_schedule="linear", clip_sample=True, set_alpha_to_one=True, prediction_type=prediction_type
    )
    levels = core.ddim_levels(sched.alphas_cumprod, 10)
    denoise = PixelDenoiser(unet, sched.alphas_cumprod, prediction_type, clip_x0=True)
    ours = core.sample(denoise, (2, 3, 16, 16), levels, torch.Generator().manual_seed(5))

    def diffusers_loop(clipped_eps: bool) -> torch.Tensor:
        x = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(5))
        sched.set_timesteps(10)
        with torch.no_grad():
            for t in sched.timesteps:
                out = unet(sample=x, timestep=t).sample
                x = sched.step(out, t, x, eta=0.0, use_clipped_model_output=clipped_eps).prev_sample
        return x

    ref = diffusers_loop(False)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert (ours - diffusers_loop(True)).abs().max() > 1e-3  # the old (clipped-eps) sampler is a different one


def test_oracle_denoiser_output_low_band_is_the_guides_with_full_guidance_only():
    wrong = torch.rand(1, 3, 16, 16) * 2 - 1
    oracle = lambda z, sigma, t: wrong  # noqa: E731  (predicts the same wrong layout at every level)
    levels = core.NoiseLevels((3, 2, 1), (0.8, 0.5, 0.2, 0.0))
    low = torch.rand(1, 3, 8, 8) * 2 - 1
    full = StageConfig(dwt_steps=3, dwt_wave="haar", sharpening_alpha=0.0)
    out, _ = core.diffusehigh_stage(low, (16, 16), oracle, levels, full, torch.Generator().manual_seed(0))
    guide_ll = dwt.lowpass(core.upsample(low, (16, 16)), "haar")
    assert (dwt.lowpass(out, "haar") - guide_ll).abs().max() < 1e-5
    none, _ = core.diffusehigh_stage(
        low, (16, 16), oracle, levels, StageConfig(dwt_steps=0), torch.Generator().manual_seed(0)
    )
    assert torch.allclose(none, wrong) and (dwt.lowpass(none, "haar") - guide_ll).abs().max() > 0.1


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
    assert not torch.allclose(out_det, out_fresh)
    # unguided steps are deterministic: with dwt_steps=0, "fresh" changes nothing at all
    a, _ = core.diffusehigh_stage(low, (16, 16), Recorder(), levels, StageConfig(dwt_steps=0), g())
    b, _ = core.diffusehigh_stage(low, (16, 16), Recorder(), levels, StageConfig(dwt_steps=0, renoise="fresh"), g())
    assert torch.equal(a, b)
    # and after the last guided step, the fresh run follows the deterministic DDIM step from its own state
    r = Recorder()
    core.diffusehigh_stage(low, (16, 16), r, levels, StageConfig(dwt_steps=1, renoise="fresh"), g())
    x0 = (r.z[1] * 0.5).clamp(-1, 1)
    eps = (r.z[1] - x0) / 0.6
    assert torch.allclose(r.z[2], x0 + 0.4 * eps, atol=1e-6)


def test_progressive_sizes():
    denoise = lambda z, sigma, t: z.clamp(-1, 1) * 0.5  # noqa: E731
    levels = core.NoiseLevels((3, 2, 1), (0.8, 0.5, 0.2, 0.0))
    low = torch.rand(1, 3, 8, 8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    images, infos = core.diffusehigh(low, denoise, levels, StageConfig(scale_factors=(2.0, 3.0)), g())
    assert [im.shape[-1] for im in images] == [16, 24] and [i.size for i in infos] == [(16, 16), (24, 24)]
    with pytest.raises(ValueError, match="increasing"):
        core.stage_sizes((8, 8), (2.0, 1.5))
