"""DiffuseHighSDXLPipeline on tiny random SDXL components, offline: sizes, call counts, reload, determinism."""

from __future__ import annotations

import re

import pytest
import torch

from diffusehigh import core
from diffusehigh.pipeline import DiffuseHighSDXLPipeline, load_local_pipeline

from .numerics import EPS32
from .tiny_sdxl import prompt_embeds, tiny_pipeline

STEPS, NOISING, DWT = 10, 4, 2
KW = dict(height=32, width=32, num_inference_steps=STEPS, noising_steps=NOISING, dwt_steps=DWT,
          target_height=[48, 64], target_width=[48, 64], output_type="pt")  # fmt: skip


def spy(pipe):
    counts = {"unet": 0, "unet_batch": set(), "encode": 0, "decode": 0}

    def hook(module, args, kwargs, output):
        counts["unet"] += 1
        counts["unet_batch"].add(kwargs["sample"].shape[0] if "sample" in kwargs else args[0].shape[0])

    pipe.unet.register_forward_hook(hook, with_kwargs=True)
    encode, decode = pipe.vae.encode, pipe.vae.decode

    def counted_encode(*a, **k):
        counts["encode"] += 1
        return encode(*a, **k)

    def counted_decode(*a, **k):
        counts["decode"] += 1
        return decode(*a, **k)

    pipe.vae.encode, pipe.vae.decode = counted_encode, counted_decode
    return counts


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_two_stages_right_sizes_and_call_counts():
    p = tiny_pipeline()
    counts = spy(p)
    out = p(generator=torch.Generator().manual_seed(0), **KW, **prompt_embeds())
    assert out.images.shape == (1, 3, 64, 64) and out.guidance_images.shape == (1, 3, 32, 32)
    assert out.images.min() >= 0 and out.images.max() <= 1
    stages = 2
    assert counts["unet"] == STEPS + stages * NOISING  # CFG batched: one UNet call per step
    assert counts["unet_batch"] == {2}
    assert counts["decode"] == 1 + stages * (DWT + 1)  # base; per stage: DWT-guided x0 + final
    assert counts["encode"] == stages * (1 + DWT)  # per stage: the guide + each guided x0


def test_without_dwt_only_the_sdedit_vae_calls_remain():
    p = tiny_pipeline()
    counts = spy(p)
    p(generator=torch.Generator().manual_seed(0), enable_dwt=False, **KW, **prompt_embeds())
    assert counts["decode"] == 1 + 2 and counts["encode"] == 2


def test_same_generator_same_image_and_sharpening_follows_the_generator(pipe):
    a = pipe(generator=torch.Generator().manual_seed(5), **KW, **prompt_embeds()).images
    torch.manual_seed(123)  # the global RNG must not matter (the released code drew sharpening sigma from it)
    b = pipe(generator=torch.Generator().manual_seed(5), **KW, **prompt_embeds()).images
    c = pipe(generator=torch.Generator().manual_seed(6), **KW, **prompt_embeds()).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_image_path_and_bad_inputs(pipe):
    low = torch.rand(1, 3, 24, 24)
    kw = {**KW, "target_height": [48], "target_width": [40]}
    out = pipe(guidance_image=low, generator=torch.Generator().manual_seed(0), **kw, **prompt_embeds())
    assert out.images.shape == (1, 3, 48, 40) and torch.equal(out.guidance_images, low)
    with pytest.raises(ValueError, match="same, non-zero number"):
        pipe(guidance_image=low, **{**kw, "target_width": [40, 48]}, **prompt_embeds())


def test_reload_from_a_saved_local_directory(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "tiny-sdxl")
    loaded = DiffuseHighSDXLPipeline.from_pretrained(tmp_path / "tiny-sdxl", local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is DiffuseHighSDXLPipeline
    saved, reread = pipe.components, loaded.components
    for name in ("unet", "vae"):  # the weights come back bit for bit ...
        assert all(torch.equal(v, reread[name].state_dict()[k]) for k, v in saved[name].state_dict().items())
    a = pipe(generator=torch.Generator().manual_seed(1), **KW, **prompt_embeds()).images
    b = loaded(generator=torch.Generator().manual_seed(1), **KW, **prompt_embeds()).images
    assert torch.equal(a, b)  # ... so the same kernels in this process give the same image, bit for bit
    reloaded = load_local_pipeline(str(tmp_path / "tiny-sdxl"), "float32")
    levels = core.euler_stage_levels(reloaded.scheduler, 50, 15)
    # the notes' 4-decimal value: half a unit of the last decimal
    assert levels.timesteps[0] == 281 and levels.sigmas[0] == pytest.approx(0.7789, abs=5e-5)


def test_missing_local_directory_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="sdxl_path"):
        load_local_pipeline(str(tmp_path / "nothing"))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_stage_equals_a_manual_diffusers_euler_loop(prediction_type):
    """Without DWT and sharpening, a stage is: bicubic upsample -> VAE encode (mode) -> add sigma_0 noise -> the
    last NOISING steps of diffusers' Euler loop (scale_model_input + step) with CFG at diffusehigh_guidance_scale
    and SDXL time ids at the base (guidance image) size -> decode.

    Both sides run in float64 (a float64 pipeline computes its stages in float64), with the scheduler's float32
    sigmas used as float64 numbers, so the CPU kernels torch picks cannot decide the test. The one float32 step
    left is diffusers' own: EulerDiscreteScheduler.step casts the sample to float32 in every step ("upcast"), a
    rounding of at most eps32/2 * |z| per step; the tolerance is that bound over the NOISING steps, x4 for how
    the remaining steps and the VAE decode (then / 2 to [0, 1]) can carry it. A wrong sigma, timestep or CFG
    scale changes the image by >= 1e-3."""
    from diffusers import EulerDiscreteScheduler

    f64 = torch.float64
    p = tiny_pipeline().to(f64)
    p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config, prediction_type=prediction_type)
    low = torch.rand(1, 3, 32, 32, dtype=f64)
    emb = {k: v.to(f64) for k, v in prompt_embeds().items()}
    kw = {**KW, "target_height": [64], "target_width": [64], "enable_dwt": False, "enable_sharpening": False}
    ours = p(guidance_image=low, guidance_scale=5.0, diffusehigh_guidance_scale=10.0,
             generator=torch.Generator().manual_seed(4), **kw, **emb).images  # fmt: skip

    g = torch.Generator().manual_seed(4)
    torch.rand((), generator=g)  # the sharpening sigma is drawn even at alpha = 0 (stream independent of alpha)
    with torch.no_grad():
        guide = core.upsample(low, (64, 64))
        latent = p.vae.encode(guide * 2 - 1).latent_dist.mode() * p.vae.config.scaling_factor
        noise = torch.randn(latent.shape, generator=g).to(f64)  # the pipeline draws its noise in float32 too
        sched = EulerDiscreteScheduler.from_config(p.scheduler.config)
        sched.set_timesteps(STEPS)
        sched.sigmas = sched.sigmas.to(f64)  # the same (float32) values; arithmetic on them in float64
        sched.set_begin_index(STEPS - NOISING)
        z = latent + sched.sigmas[STEPS - NOISING] * noise
        embeds = torch.cat([emb["negative_prompt_embeds"], emb["prompt_embeds"]])
        pooled = torch.cat([emb["negative_pooled_prompt_embeds"], emb["pooled_prompt_embeds"]])
        time_ids = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]], dtype=f64).repeat(2, 1)  # base size, not 64
        z_max = 0.0
        for t in sched.timesteps[-NOISING:]:
            z_max = max(z_max, float(z.abs().max()))
            x_in = sched.scale_model_input(torch.cat([z, z]), t)
            out = p.unet(x_in, t, encoder_hidden_states=embeds,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample  # fmt: skip
            uncond, cond = out.chunk(2)
            z = sched.step(uncond + 10.0 * (cond - uncond), t, z).prev_sample
        ref = (p.vae.decode(z / p.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert ours.dtype == ref.dtype == f64
    tol = 4 * NOISING * (EPS32 / 2) * z_max  # ~5e-6; float64 rounding elsewhere is ~1e-14
    assert (ours - ref).abs().max() <= tol, (ours - ref).abs().max()


def test_vae_tiling_state_is_restored_and_latent_output_is_rejected(monkeypatch):
    p = tiny_pipeline()
    p.vae.enable_tiling()
    p(generator=torch.Generator().manual_seed(0), enable_vae_tiling=False, **KW, **prompt_embeds())
    assert p.vae.use_tiling  # the user's setting survives
    p.vae.disable_tiling()
    p(generator=torch.Generator().manual_seed(0), enable_vae_tiling=True, **KW, **prompt_embeds())
    assert not p.vae.use_tiling

    def boom(*args, **kwargs):
        assert p.vae.use_tiling  # switched on during the stages
        raise RuntimeError("stage failed")

    monkeypatch.setattr(core, "diffusehigh_stage", boom)
    with pytest.raises(RuntimeError, match="stage failed"):
        p(generator=torch.Generator().manual_seed(0), enable_vae_tiling=True, **KW, **prompt_embeds())
    assert not p.vae.use_tiling  # restored in `finally`
    with pytest.raises(ValueError, match="latent"):
        p(generator=torch.Generator().manual_seed(0), **{**KW, "output_type": "latent"}, **prompt_embeds())


def test_from_pretrained_dtype_keyword_is_accepted_without_a_deprecation_warning(pipe, tmp_path):
    import warnings

    from diffusehigh.pipeline import dtype_keyword

    pipe.save_pretrained(tmp_path / "tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_local_pipeline(str(tmp_path / "tiny"), "float16")
    assert loaded.unet.dtype == torch.float16 and dtype_keyword() in ("dtype", "torch_dtype")


@pytest.fixture(scope="module")
def spied():
    """A tiny pipeline whose UNet and VAE calls are counted (its VAE factor is 2, its default base 32 x 32)."""
    p = tiny_pipeline()
    return p, spy(p)


DROP = object()
"""A value in a test case that removes the keyword from the call."""

BAD_ARGUMENTS = {
    "target not a multiple of the VAE factor": ({"target_height": [49, 64]}, "not a multiple of the VAE factor 2"),
    "... also without the DWT": (
        {"target_width": [48, 63], "enable_dwt": False}, "target_width: target size[1] width 63 is not a multiple",
    ),
    "stage sizes not increasing": (
        {"target_height": [64, 48], "target_width": [64, 48]}, "target size[1] (48, 48) must be larger than stage 0",
    ),
    "first stage not above the base": ({"target_height": [32], "target_width": [32]}, "must be larger than the base"),
    "no stages": ({"target_height": [], "target_width": []}, "target_height must be a non-empty list"),
    "stage lists of different lengths": ({"target_width": [48]}, "same, non-zero number of stages"),
    "a size, not a list": ({"target_height": 64, "target_width": 64}, "target_height must be a non-empty list"),
    "a fractional size": ({"target_height": [48.5, 64]}, "target_height[0] must be an integer"),
    "negative dwt_steps": ({"dwt_steps": -1}, "dwt_steps must be >= 0"),
    "negative dwt_steps, DWT off": ({"dwt_steps": -1, "enable_dwt": False}, "dwt_steps must be >= 0"),
    "fractional dwt_steps": ({"dwt_steps": 2.5}, "dwt_steps must be an integer"),
    "no noising steps": ({"noising_steps": 0}, "noising_steps must be >= 1"),
    "more noising steps than steps": ({"noising_steps": STEPS + 1}, f"noising_steps must be <= {STEPS}"),
    "no inference steps": ({"num_inference_steps": 0}, "num_inference_steps must be >= 1"),
    "zero sharpening sigma": ({"sharpening_sigma": (0.0, 1.0)}, "sharpening_sigma[0] must be > 0"),
    "negative sharpening sigma": ({"sharpening_sigma": -1.0}, "sharpening_sigma must be > 0"),
    "sharpening sigma range reversed": ({"sharpening_sigma": (2.0, 1.0)}, "sharpening_sigma must be (low, high)"),
    "even sharpening kernel": ({"sharpening_kernel_size": 2}, "sharpening_kernel_size must be odd"),
    "negative sharpening alpha": ({"sharpening_alpha": -0.5}, "sharpening_alpha must be >= 0"),
    "negative alpha, sharpening off": ({"sharpening_alpha": -0.5, "enable_sharpening": False}, "sharpening_alpha"),
    "unknown wavelet": ({"dwt_wave": "db99"}, "dwt_wave must be a discrete PyWavelets wavelet"),
    "DWT level 0": ({"dwt_level": 0}, "dwt_level must be >= 1"),
    "unknown DWT mode": ({"dwt_mode": "wrap"}, "dwt_mode must be one of"),
    "unknown renoise": ({"renoise": "sometimes"}, "renoise must be one of"),
    "unknown upsampling": ({"upsample_mode": "area"}, "upsample_mode must be one of"),
    "NaN base guidance": ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
    "negative stage guidance": ({"diffusehigh_guidance_scale": -1.0}, "diffusehigh_guidance_scale must be >= 0"),
    "base height not a multiple of the VAE factor": ({"height": 33}, "height must be a multiple of the VAE factor 2"),
    "no images per prompt": ({"num_images_per_prompt": 0}, "num_images_per_prompt must be >= 1"),
    "a list of generators": ({"generator": [torch.Generator()]}, "generator: pass one torch.Generator"),
    "a seed for a generator": ({"generator": 5}, "generator must be a torch.Generator"),
    "a string for a flag": ({"enable_dwt": "yes"}, "enable_dwt must be True or False"),
    "an int for a flag": ({"enable_vae_tiling": 1}, "enable_vae_tiling must be True or False"),
    "latent output": ({"output_type": "latent"}, "output_type must be 'pil', 'np' or 'pt'"),
    "embeddings without pooled ones": ({"pooled_prompt_embeds": DROP}, "pooled_prompt_embeds"),
    "guidance image with 4 channels": ({"guidance_image": torch.rand(1, 4, 24, 24)}, "guidance_image must be (B, 3"),
    "guidance image out of [0, 1]": ({"guidance_image": torch.rand(1, 3, 24, 24) + 1}, "guidance_image values"),
    "guidance images for another batch": ({"guidance_image": torch.rand(2, 3, 24, 24)}, "guidance_image holds 2"),
    "stage below the guidance image": (
        {"guidance_image": torch.rand(1, 3, 24, 24), "target_height": [20], "target_width": [48]}, "must be larger",
    ),
    "stage not a multiple, guidance image": (
        {"guidance_image": torch.rand(1, 3, 24, 24), "target_height": [49], "target_width": [48]},
        "target_height/target_width: target size height 49 is not a multiple of the VAE factor 2",
    ),
}  # fmt: skip


@pytest.mark.parametrize("changes, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_a_bad_argument_is_refused_before_the_first_unet_call(spied, changes, message):
    """Before, stage arguments were checked only after the base image (minutes on SDXL), and a target that is not a
    multiple of the VAE factor came back smaller (without DWT) or failed on the LL shape (with DWT)."""
    p, counts = spied
    kwargs = {**KW, **prompt_embeds(), "generator": torch.Generator().manual_seed(0), **changes}
    kwargs = {k: v for k, v in kwargs.items() if v is not DROP}
    before = {k: counts[k] for k in ("unet", "encode", "decode")}
    with pytest.raises(ValueError, match=re.escape(message)):
        p(**kwargs)
    assert {k: counts[k] for k in before} == before  # no UNet call, no VAE call


def test_an_unknown_keyword_is_refused_before_the_first_unet_call(spied):
    """StableDiffusionXLPipeline.__call__ takes **kwargs and would silently ignore a misspelt keyword."""
    p, counts = spied
    before = counts["unet"]
    with pytest.raises(TypeError, match="guidance_rescal"):
        p(generator=torch.Generator().manual_seed(0), guidance_rescal=0.7, **KW, **prompt_embeds())
    assert counts["unet"] == before
    p(generator=torch.Generator().manual_seed(0), guidance_rescale=0.7, **KW, **prompt_embeds())  # a base keyword
    assert counts["unet"] == before + STEPS + 2 * NOISING


def test_a_scheduler_other_than_euler_is_refused_before_the_first_unet_call():
    from diffusers import DDIMScheduler

    p = tiny_pipeline()
    counts = spy(p)
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config)
    with pytest.raises(ValueError, match="EulerDiscreteScheduler"):
        p(generator=torch.Generator().manual_seed(0), **KW, **prompt_embeds())
    assert counts["unet"] == 0
