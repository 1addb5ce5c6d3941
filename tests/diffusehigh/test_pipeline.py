"""DiffuseHighSDXLPipeline on tiny random SDXL components, offline: sizes, call counts, reload, determinism."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from diffusehigh import core
from diffusehigh.pipeline import DiffuseHighSDXLPipeline, load_local_pipeline, resize_to

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
    """A guide is resized to the base size (height x width = 32 x 32 here), as released: a 24 x 24 guide becomes the
    32 x 32 base image (bicubic), and the stages start from it."""
    low = torch.rand(1, 3, 24, 24)
    kw = {**KW, "target_height": [48], "target_width": [40]}
    out = pipe(guidance_image=low, generator=torch.Generator().manual_seed(0), **kw, **prompt_embeds())
    assert out.images.shape == (1, 3, 48, 40)
    assert torch.equal(out.guidance_images, resize_to([low], (32, 32), torch.float32, "cpu"))
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


def _image_with(value: float) -> torch.Tensor:
    """A 24 x 24 guidance image in [0, 0.9] with one pixel set to ``value``: a fixed ramp, not random numbers,
    whose last bits differ between CPU kernel paths (so is the minimum printed in the message)."""
    image = torch.linspace(0.0, 0.9, 3 * 24 * 24).reshape(1, 3, 24, 24)
    image[0, -1, -1, -1] = value  # the ramp's maximum; its minimum stays exactly 0
    return image


DROP = object()
"""A value in a test case that removes the keyword from the call."""

BAD_ARGUMENTS = {
    "target not a multiple of the VAE factor": ({"target_height": [49, 64]}, "not a multiple of the VAE factor 2"),
    "... also without the DWT": (
        {"target_width": [48, 63], "enable_dwt": False}, "target_width: target size[1] width 63 is not a multiple",
    ),
    "shrinking stage": (
        {"target_height": [64, 48], "target_width": [64, 48]},
        "target size[1] (48, 48) must not be smaller than stage 0 (64, 64)",
    ),
    "shrinking on one side": ({"target_height": [64, 64], "target_width": [64, 48]}, "not be smaller than stage 0"),
    "first stage below the base": ({"target_height": [30], "target_width": [32]}, "must not be smaller than the base"),
    "a fractional float size": ({"target_width": [48.5, 64.0]}, "target_width[0] must be an integer"),
    "a 2-D array of sizes": ({"target_height": np.array([[48, 64]])}, "target_height must be a size or a non-empty"),
    "a numpy int for a flag": ({"return_dict": np.int64(1)}, "return_dict must be True or False"),
    "no stages": ({"target_height": [], "target_width": []}, "target_height must be a size or a non-empty list"),
    "stage lists of different lengths": ({"target_width": [48]}, "same, non-zero number of stages"),
    "a bool for a size": ({"target_height": True}, "target_height must be a size or a non-empty list"),
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
    "guidance image just past the tolerance": (
        {"guidance_image": _image_with(1 + 2e-3)},
        "values must be in [0, 1] or [-1, 1] (up to 0.001, then clamped), got [0, 1.002]",
    ),
    "guidance image in [0, 255]": ({"guidance_image": _image_with(255.0)}, "guidance_image values"),
    "guidance image below -1": ({"guidance_image": _image_with(-1.5)}, "guidance_image values"),
    "negative values said to be in [0, 1]": (
        {"guidance_image": _image_with(-0.5), "guidance_image_range": (0, 1)}, "values must be in [0, 1] (up to",
    ),
    "an unknown value range": ({"guidance_image": _image_with(0.5), "guidance_image_range": (0, 255)}, "_range must"),
    "a guidance image of another type": ({"guidance_image": "image.png"}, "guidance_image must be a PIL image"),
    "a 4-channel numpy guide": ({"guidance_image": np.zeros((24, 24, 4), np.uint8)}, "must be (h, w), (h, w, 3)"),
    "an int64 numpy guide": ({"guidance_image": np.zeros((24, 24, 3), np.int64)}, "must be uint8, uint16 or floating"),
    "a list with a bad image": ({"guidance_image": [_image_with(0.5), "x"]}, "guidance_image[1] must be a PIL image"),
    "an empty list of guides": ({"guidance_image": []}, "guidance_image must not be an empty list"),
    "a callback that is not callable": ({"callback_on_step_end": 3}, "callback_on_step_end must be callable"),
    "a stage callback that is not callable": ({"callback_on_stage_end": "x"}, "callback_on_stage_end must be"),
    "guidance image with a NaN": (
        {"guidance_image": _image_with(float("nan"))}, "guidance_image values",
    ),
    "guidance images for another batch": ({"guidance_image": torch.rand(2, 3, 24, 24)}, "guidance_image holds 2"),
    "stage below the guidance image": (
        {"guidance_image": torch.rand(1, 3, 24, 24), "target_height": [20], "target_width": [48]},
        "must not be smaller than the base (32, 32)",  # the guide is resized to the base size, 32 x 32
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


def test_a_scheduler_without_betas_is_refused_before_the_first_unet_call():
    """The stages need an Euler grid built from the scheduler's noise schedule; flow matching has none (other
    discrete-time schedulers work: test_pipeline_modes.py)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    p = tiny_pipeline()
    counts = spy(p)
    p.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler has none"):
        p(generator=torch.Generator().manual_seed(0), **KW, **prompt_embeds())
    assert counts["unet"] == 0


SIZE_FORMS = {
    "tuple": ((48, 64), (48, 64)),
    "range": (range(48, 65, 16), range(48, 65, 16)),
    "numpy int array": (np.array([48, 64]), np.array([48, 64], dtype=np.int32)),
    "numpy scalars": ([np.int64(48), np.int32(64)], [np.int16(48), np.uint16(64)]),
    "whole floats": ([32 * 1.5, 32 * 2.0], [48.0, np.float32(64.0)]),
    "numpy float array": (np.array([48.0, 64.0]), np.array([48.0, 64.0], dtype=np.float32)),
    "1-D tensor": (torch.tensor([48, 64]), torch.tensor([48.0, 64.0])),
}


@pytest.mark.kernel_independent  # two runs compared in one process
@pytest.mark.parametrize("heights, widths", SIZE_FORMS.values(), ids=SIZE_FORMS.keys())
def test_target_sizes_in_any_integer_form_reach_the_unet(spied, heights, widths):
    """Sequences, ranges, numpy arrays and whole-number floats (1024 * 1.5 = 1536.0) are sizes, as before the
    checks were added; they give the same image as a list of ints."""
    p, counts = spied
    kw = {**KW, **prompt_embeds()}
    reference = p(generator=torch.Generator().manual_seed(0), **kw).images
    before = counts["unet"]
    out = p(generator=torch.Generator().manual_seed(0), **{**kw, "target_height": heights, "target_width": widths})
    assert counts["unet"] == before + STEPS + 2 * NOISING
    assert out.images.shape == (1, 3, 64, 64) and torch.equal(out.images, reference)


def test_a_stage_the_same_size_as_the_previous_one_is_a_refinement_pass(spied):
    """A repeated size (and a first stage at the base size) runs a stage without upsampling; shrinking is refused
    above (BAD_ARGUMENTS: "shrinking stage", no UNet call)."""
    p, counts = spied
    before = counts["unet"]
    out = p(generator=torch.Generator().manual_seed(0),
            **{**KW, "target_height": [32, 48, 48], "target_width": [32, 48, 48]}, **prompt_embeds())  # fmt: skip
    assert counts["unet"] == before + STEPS + 3 * NOISING
    assert [tuple(x.shape[-2:]) for x in out.stage_images] == [(32, 32), (48, 48), (48, 48)]


@pytest.mark.kernel_independent  # two runs compared in one process
def test_numpy_bools_are_flags(spied):
    p, counts = spied
    kw = {**KW, **prompt_embeds()}
    reference = p(generator=torch.Generator().manual_seed(0), enable_dwt=False, **kw).images
    before = counts["unet"]
    images, _ = p(generator=torch.Generator().manual_seed(0), enable_dwt=np.False_, enable_sharpening=np.True_,
                       enable_vae_tiling=np.bool_(True), return_dict=np.False_, **kw)  # fmt: skip
    assert counts["unet"] == before + STEPS + 2 * NOISING and torch.equal(images, reference)
    assert not p.vae.use_tiling  # the VAE's own setting is restored after the stages


def test_a_guidance_image_slightly_outside_0_1_is_clamped(spied):
    """fp16 rounding or a resize's overshoot (up to 1e-3) is accepted and clamped; the stages see the clamped image
    (the same result as passing it clamped)."""
    p, counts = spied
    low = torch.rand(1, 3, 24, 24)
    low[0, 0, 0, 0], low[0, 1, 0, 0] = -5e-4, 1 + 8e-4
    kw = {**KW, "height": 24, "width": 24, "target_height": [48], "target_width": [48], **prompt_embeds()}
    before = counts["unet"]
    out = p(guidance_image=low, generator=torch.Generator().manual_seed(0), **kw)  # at the base size: not resized
    assert counts["unet"] == before + NOISING
    clamped = p(guidance_image=low.clamp(0, 1), generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(out.guidance_images, low.clamp(0, 1)) and torch.equal(out.images, clamped.images)
    half = p(guidance_image=low.half(), generator=torch.Generator().manual_seed(0), **kw)  # fp16 input
    assert half.images.shape == (1, 3, 48, 48)
