"""What users of DiffuseHigh's peers expect, on tiny random pipelines with real (tiny) text encoders, offline: guide
images of every kind (upscale mode), arguments reaching the stages, the stages' CFG rule, callbacks and progress,
memory options, other schedulers, SD 1.5-style backbones and SDXL derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusehigh import core
from diffusehigh.pipeline import DiffuseHighSDPipeline, DiffuseHighSDXLPipeline, image_tensors

from .numerics import EPS32, NET_OPS, rounding_tolerance
from .tiny_models import sd_pipeline, sdxl_pipeline

STEPS, NOISING, DWT = 6, 3, 1
KW = dict(num_inference_steps=STEPS, noising_steps=NOISING, dwt_steps=DWT, output_type="pt")
F64 = torch.float64


def record_unet(pipe) -> list[dict]:
    """Every UNet call's keywords (sample shape, timestep, conditioning), in order."""
    calls = []

    def hook(module, args, kwargs, output):
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        added = kwargs.get("added_cond_kwargs") or {}
        calls.append(dict(batch=sample.shape[0], size=tuple(sample.shape[-2:]), time_ids=added.get("time_ids"),
                          cross_attention_kwargs=kwargs.get("cross_attention_kwargs"),
                          timestep_cond=kwargs.get("timestep_cond")))  # fmt: skip

    pipe.unet.register_forward_hook(hook, with_kwargs=True)
    return calls


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def xl():
    return sdxl_pipeline()


# ----------------------------------------------------------------------------------------------------
# Guide images (upscale mode)


def test_guide_images_of_every_kind_become_the_same_tensor():
    """PIL, numpy (uint8, uint16, float, grey), tensors in [0, 1], [-1, 1] or uint8, and lists of them: one
    (1, 3, h, w) tensor in [0, 1] per image. Values on the uint8 grid, so every conversion is exact up to the
    float32 rounding of x / 255 and of (2x - 1 + 1) / 2."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    ref = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    unit = pixels.astype(np.float32) / 255
    forms = {
        "PIL": Image.fromarray(pixels),
        "numpy uint8": pixels,
        "numpy uint16": pixels.astype(np.uint16) * 257,  # 65535 / 255
        "numpy float": unit,
        "numpy batch": unit[None],
        "tensor [0, 1]": ref[0],
        "tensor [-1, 1]": ref * 2 - 1,
        "tensor uint8": torch.from_numpy(pixels).permute(2, 0, 1).contiguous(),
        "float16 tensor": ref.half(),
    }
    for name, image in forms.items():
        (out,) = image_tensors(image)
        tol = 1e-3 if name == "float16 tensor" else 4 * EPS32  # fp16 keeps 11 bits
        assert out.shape == (1, 3, 12, 10) and (out - ref).abs().max() <= tol, name
    grey = image_tensors(pixels[..., 0])[0]
    assert torch.equal(grey[0, 0], grey[0, 2]) and (grey[0, 1] - ref[0, 0]).abs().max() <= 4 * EPS32
    both = image_tensors([Image.fromarray(pixels), Image.fromarray(pixels[:8])])
    assert [tuple(x.shape) for x in both] == [(1, 3, 12, 10), (1, 3, 8, 10)]
    (signed,) = image_tensors(ref * 0.5 + 0.5, value_range=(-1, 1))  # [0.5, 1] read as the top of [-1, 1]
    assert (signed - (ref * 0.25 + 0.75)).abs().max() <= 4 * EPS32


def test_upscale_a_pil_image_resized_to_the_base_size_with_base_time_ids(xl):
    """The released pipeline resizes the guide to the base size and keeps SDXL's time ids at the base size: a
    20 x 20 PIL image becomes the 32 x 32 base, the stages condition on (32, 32), and the output has the target size.
    The PIL image and the same pixels as a tensor give the same image."""
    pixels = np.random.default_rng(1).integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    calls = record_unet(xl)
    kw = {**KW, "prompt": "a cat", "height": 32, "width": 32, "target_height": [48, 64]}
    out = xl(guidance_image=Image.fromarray(pixels), generator=seeded(), **kw)
    assert out.images.shape == (1, 3, 64, 64) and out.guidance_images.shape == (1, 3, 32, 32)
    assert [tuple(x.shape[-2:]) for x in out.stage_images] == [(48, 48), (64, 64)]
    assert len(calls) == 2 * NOISING  # no base generation
    base_ids = torch.tensor([32.0, 32.0, 0.0, 0.0, 32.0, 32.0])
    assert all(torch.equal(c["time_ids"], base_ids.expand(2, 6)) for c in calls)
    as_tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    again = xl(guidance_image=as_tensor, generator=seeded(), **kw)
    assert torch.equal(out.images, again.images)
    pil = xl(guidance_image=Image.fromarray(pixels), generator=seeded(), **{**kw, "output_type": "pil"}).images
    assert pil[0].size == (64, 64)


def test_one_guide_per_prompt_serves_every_image_of_that_prompt(xl):
    guide = torch.rand(1, 3, 32, 32)
    out = xl(prompt="a cat", guidance_image=guide, num_images_per_prompt=2, target_height=48, generator=seeded(),
             **KW)  # fmt: skip
    assert out.images.shape == (2, 3, 48, 48) and torch.equal(out.guidance_images, guide.expand(2, -1, -1, -1))


def test_an_int_target_is_one_square_stage_and_one_side_mirrors_the_other(xl):
    guide = torch.rand(1, 3, 32, 32)
    a = xl(prompt="a cat", guidance_image=guide, target_height=48, generator=seeded(), **KW)
    b = xl(prompt="a cat", guidance_image=guide, target_width=[48], generator=seeded(), **KW)
    assert a.images.shape == (1, 3, 48, 48) and len(a.stage_images) == 1 and torch.equal(a.images, b.images)


# ----------------------------------------------------------------------------------------------------
# Arguments that reach the stages, and the stages' CFG rule


def test_prompt_lora_clip_skip_and_micro_conditioning_reach_base_and_stages(monkeypatch):
    p = sdxl_pipeline()
    calls = record_unet(p)
    encoded = []
    encode_prompt = p.encode_prompt

    def spy(**kwargs):
        encoded.append(kwargs)
        return encode_prompt(**kwargs)

    monkeypatch.setattr(p, "encode_prompt", spy)
    micro = dict(original_size=(64, 64), crops_coords_top_left=(4, 2), target_size=(48, 48),
                 negative_original_size=(16, 16), negative_crops_coords_top_left=(1, 1),
                 negative_target_size=(24, 24))  # fmt: skip
    out = p(prompt="a cat", prompt_2="a dog", negative_prompt="blurry", negative_prompt_2="dark", clip_skip=1,
            cross_attention_kwargs={"scale": 0.5}, target_height=[48], generator=seeded(), **micro, **KW)  # fmt: skip
    assert out.images.shape == (1, 3, 48, 48)
    assert len(encoded) == 2  # the base, then the stages
    for kwargs in encoded:
        assert kwargs["clip_skip"] == 1 and kwargs["lora_scale"] == 0.5
        assert (kwargs["prompt"], kwargs["prompt_2"]) == ("a cat", "a dog")
        assert (kwargs["negative_prompt"], kwargs["negative_prompt_2"]) == ("blurry", "dark")
    assert len(calls) == STEPS + NOISING
    negative, positive = torch.tensor([16.0, 16, 1, 1, 24, 24]), torch.tensor([64.0, 64, 4, 2, 48, 48])
    for c in calls:  # the base's steps and the stage's
        assert c["cross_attention_kwargs"] == {"scale": 0.5}
        assert torch.equal(c["time_ids"], torch.stack([negative, positive]))


def test_clip_skip_changes_the_stage_conditioning(xl):
    """clip_skip reaches the stages' text encoding (in upscale mode only the stages encode the prompt)."""
    guide = torch.rand(1, 3, 32, 32)
    kw = {**KW, "prompt": "a cat", "guidance_image": guide, "target_height": 48}
    plain = xl(generator=seeded(), **kw).images
    skipped = xl(generator=seeded(), clip_skip=2, **kw).images
    assert (plain - skipped).abs().max() > 1e-4


def test_stage_cfg_follows_the_base_guidance_scale_and_guidance_distilled_unets():
    """As released: CFG in the stages when guidance_scale > 1 and the UNet has no time_cond_proj_dim; a
    guidance-distilled UNet gets the w-embedding of guidance_scale instead (no CFG batch)."""
    p = sdxl_pipeline()
    calls = record_unet(p)
    p(prompt="a cat", guidance_scale=1.0, diffusehigh_guidance_scale=10.0, target_height=48, generator=seeded(), **KW)
    assert [c["batch"] for c in calls] == [1] * (STEPS + NOISING)

    distilled = sdxl_pipeline(time_cond_proj_dim=8)
    calls = record_unet(distilled)
    distilled(prompt="a cat", guidance_scale=4.0, target_height=48, generator=seeded(), **KW)
    assert [c["batch"] for c in calls] == [1] * (STEPS + NOISING)
    w = distilled.get_guidance_scale_embedding(w=torch.tensor([3.0]), embedding_dim=8)
    assert all(torch.allclose(c["timestep_cond"], w, rtol=0, atol=4 * EPS32) for c in calls)


# ----------------------------------------------------------------------------------------------------
# Callbacks and progress


def test_callbacks_run_in_every_stage_and_see_each_stage_image(xl, monkeypatch):
    steps, stages = [], []
    levels = core.euler_stage_levels(xl.stage_scheduler(), STEPS, NOISING)

    def on_step(pipe, i, t, tensors):
        steps.append((pipe.stage_index, i, int(t), tuple(tensors["latents"].shape[-2:])))
        return {}

    totals = []
    progress_bar = xl.progress_bar
    monkeypatch.setattr(xl, "progress_bar", lambda **kw: totals.append(kw.get("total")) or progress_bar(**kw))
    out = xl(prompt="a cat", target_height=[48, 64], callback_on_step_end=on_step, generator=seeded(),
             callback_on_stage_end=lambda pipe, k, image: stages.append((k, image)), **KW)  # fmt: skip
    base_steps = [s for s in steps if s[0] == 0]
    assert [s[1] for s in base_steps] == list(range(STEPS)) and base_steps[0][3] == (16, 16)
    for k, size in ((1, (24, 24)), (2, (32, 32))):  # latents of 48^2 and 64^2 with the VAE factor 2
        assert [s[1:] for s in steps if s[0] == k] == [(i, t, size) for i, t in enumerate(levels.timesteps)]
    assert [k for k, _ in stages] == [0, 1, 2] and totals == [STEPS, NOISING, NOISING]
    assert torch.equal(stages[0][1], out.guidance_images)
    assert all(torch.equal(image, ref) for (_, image), ref in zip(stages[1:], out.stage_images, strict=True))


def test_a_callback_can_replace_the_stage_latents_and_interrupt(xl):
    guide = torch.rand(1, 3, 32, 32)
    kw = {**KW, "prompt": "a cat", "guidance_image": guide, "target_height": [48, 64]}

    def zero_last(pipe, i, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if pipe.stage_index == 2 and i == NOISING - 1 else {}

    out = xl(callback_on_step_end=zero_last, generator=seeded(), **kw)
    assert torch.equal(out.images, xl._decode_vae_latent(torch.zeros(1, 4, 32, 32)))

    def stop(pipe, i, t, tensors):
        pipe._interrupt = pipe.stage_index == 1
        return {}

    out = xl(callback_on_step_end=stop, generator=seeded(), **kw)
    assert len(out.stage_images) == 1 and out.images.shape == (1, 3, 48, 48)


# ----------------------------------------------------------------------------------------------------
# Memory options


def test_vae_slicing_attention_slicing_and_cpu_offload_leave_the_images_unchanged():
    """Slicing splits a computation into pieces with the same arithmetic; offload only moves weights. In float64
    the images agree to a rounding bound: a pass through the tiny nets (NET_OPS) for each UNet/VAE call, x10 for
    what the later steps can amplify. A real difference (a wrong image in the batch) would be >= 1e-3."""
    p = sdxl_pipeline().to(F64)
    kw = {**KW, "prompt": ["a cat", "a dog"], "target_height": [48], "generator": seeded()}
    reference = p(**kw).images
    calls = STEPS + NOISING + 2 * (DWT + 2)
    tol = 10 * rounding_tolerance(F64, NET_OPS * calls)

    p.vae.enable_slicing()
    p.enable_attention_slicing(slice_size=1)
    sliced = p(**{**kw, "generator": seeded()}).images
    assert (sliced - reference).abs().max() <= tol
    p.vae.disable_slicing()
    p.disable_attention_slicing()

    p.enable_model_cpu_offload(device="cpu")
    offloaded = p(**{**kw, "generator": seeded()}).images
    assert (offloaded - reference).abs().max() <= tol


def test_tiled_vae_runs_the_stages_at_tiles_smaller_than_the_image(xl):
    """Tiled decoding blends tile seams, so it is not exact; the stages run with tiles of a quarter of the image and
    the VAE's own setting comes back."""
    xl.vae.tile_sample_min_size, xl.vae.tile_latent_min_size = 32, 16
    try:
        out = xl(prompt="a cat", guidance_image=torch.rand(1, 3, 32, 32), target_height=64, generator=seeded(), **KW)
    finally:
        xl.vae.tile_sample_min_size, xl.vae.tile_latent_min_size = 128, 64
    assert out.images.shape == (1, 3, 64, 64) and not xl.vae.use_tiling


# ----------------------------------------------------------------------------------------------------
# Schedulers, backbones, derivatives


def test_another_base_scheduler_keeps_the_released_euler_stages(xl):
    """The base may use DPM-Solver++ (here with Karras sigmas); the stages run on the Euler grid of the same noise
    schedule without the sampler options, so in upscale mode the image is the Euler pipeline's, bit for bit."""
    from diffusers import DPMSolverMultistepScheduler

    dpm = DiffuseHighSDXLPipeline(**{**xl.components, "scheduler": DPMSolverMultistepScheduler.from_config(
        xl.scheduler.config, use_karras_sigmas=True)})  # fmt: skip
    dpm.set_progress_bar_config(disable=True)
    stage = core.euler_stage_levels(dpm.stage_scheduler(), 50, 15)
    assert stage.timesteps[0] == 281 and stage.sigmas[0] == pytest.approx(0.7789, abs=5e-5)
    kw = {**KW, "prompt": "a cat", "guidance_image": torch.rand(1, 3, 32, 32), "target_height": 48}
    assert torch.equal(dpm(generator=seeded(), **kw).images, xl(generator=seeded(), **kw).images)
    out = dpm(prompt="a cat", target_height=48, generator=seeded(), **KW)  # text-to-image: DPM-Solver base
    assert out.images.shape == (1, 3, 48, 48)


def test_an_sd15_style_pipeline_generates_and_upscales():
    """SD 1.5's layout (one text encoder, no added embeddings, PNDM): the base uses PNDM, the stages SD's Euler grid
    ("leading", t = 281 first for 15 of 50); the default is one stage at twice the base size."""
    p = sd_pipeline()
    calls = record_unet(p)
    stage = core.euler_stage_levels(p.stage_scheduler(), 50, 15)
    assert stage.timesteps[0] == 281 and stage.sigmas[0] == pytest.approx(0.7789, abs=5e-5)
    out = p(prompt="a cat", negative_prompt="blurry", generator=seeded(), **KW)
    assert out.images.shape == (1, 3, 64, 64) and out.guidance_images.shape == (1, 3, 32, 32)
    assert [c["size"] for c in calls[-NOISING:]] == [(32, 32)] * NOISING and calls[-1]["batch"] == 2
    pixels = np.random.default_rng(2).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    up = p(prompt="a cat", guidance_image=Image.fromarray(pixels), target_height=[48, 64], generator=seeded(), **KW)
    assert up.images.shape == (1, 3, 64, 64) and up.nsfw_content_detected is None


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_an_sd_stage_equals_a_manual_diffusers_euler_loop(prediction_type):
    """SD 1.5 (epsilon) and SD 2.x-768 (v-prediction) stages, as the SDXL test in test_pipeline.py: bicubic
    upsample -> VAE encode (mode) -> sigma_0 noise -> the last NOISING steps of diffusers' Euler loop with CFG ->
    decode, in float64. Tolerance: EulerDiscreteScheduler.step's float32 cast of the sample (eps32/2 * |z| per
    step), x4 for what the later steps and the decode carry."""
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    p = sd_pipeline().to(F64)
    p.scheduler = PNDMScheduler.from_config(p.scheduler.config, prediction_type=prediction_type)
    low = torch.rand(1, 3, 32, 32, dtype=F64)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 77, 32, generator=g, dtype=F64)
    negative = torch.randn(1, 77, 32, generator=g, dtype=F64)
    kw = {**KW, "dwt_steps": 0, "enable_sharpening": False, "target_height": 64}
    ours = p(guidance_image=low, prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=7.5,
             diffusehigh_guidance_scale=7.5, generator=seeded(4), **kw).images  # fmt: skip

    g = seeded(4)
    torch.rand((), generator=g)  # the sharpening sigma is drawn even at alpha = 0
    with torch.no_grad():
        latent = p.vae.encode(core.upsample(low, (64, 64)) * 2 - 1).latent_dist.mode() * p.vae.config.scaling_factor
        noise = torch.randn(latent.shape, generator=g).to(F64)
        # SD 1.5's noise schedule with its "leading" spacing (EulerDiscreteScheduler.from_config(pndm.config) would
        # fall back to Euler's default "linspace": diffusers does not carry a default value across classes)
        sd15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
        sched = EulerDiscreteScheduler(**sd15, timestep_spacing="leading", prediction_type=prediction_type)
        sched.set_timesteps(STEPS)
        sched.sigmas = sched.sigmas.to(F64)
        sched.set_begin_index(STEPS - NOISING)
        z = latent + sched.sigmas[STEPS - NOISING] * noise
        z_max = 0.0
        for t in sched.timesteps[-NOISING:]:
            z_max = max(z_max, float(z.abs().max()))
            out = p.unet(sched.scale_model_input(torch.cat([z, z]), t), t,
                         encoder_hidden_states=torch.cat([negative, embeds])).sample  # fmt: skip
            uncond, cond = out.chunk(2)
            z = sched.step(uncond + 7.5 * (cond - uncond), t, z).prev_sample
        ref = (p.vae.decode(z / p.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert (ours - ref).abs().max() <= 4 * NOISING * (EPS32 / 2) * z_max


def test_the_sd_safety_checker_checks_the_returned_images():
    """An SD pipeline with a safety checker (here one that flags everything) blanks flagged images, as diffusers."""
    from transformers import BatchFeature

    class FlagAll(torch.nn.Module):
        device, dtype = torch.device("cpu"), torch.float32  # what diffusers reads of a component

        def forward(self, images, clip_input):
            return torch.zeros_like(images), [True] * len(images)

    class Features:
        def __call__(self, images, return_tensors):
            return BatchFeature({"pixel_values": torch.zeros(len(images), 3, 4, 4)})

    p = sd_pipeline(safety_checker=FlagAll(), feature_extractor=Features(), requires_safety_checker=True)
    out = p(prompt="a cat", target_height=48, generator=seeded(), **KW)
    assert out.nsfw_content_detected == [True]
    assert torch.equal(out.images, torch.full_like(out.images, 0.5))
    assert torch.equal(out.guidance_images, torch.full_like(out.guidance_images, 0.5))


def test_sdxl_derivatives_latent_statistics_and_from_pipe(xl):
    """SDXL-architecture checkpoints load as they are; a VAE with per-channel latents_mean/std (Playground v2.5) is
    normalised as diffusers' SDXL pipeline decodes; a loaded StableDiffusionXLPipeline converts with from_pipe."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    torch.manual_seed(0)
    mean, std = [0.1, -0.2, 0.3, 0.0], [0.5, 1.5, 1.0, 2.0]
    vae = AutoencoderKL.from_config(xl.vae.config, latents_mean=mean, latents_std=std)
    p = DiffuseHighSDXLPipeline(**{**xl.components, "vae": vae})
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        mode = vae.encode(image * 2 - 1).latent_dist.mode()
        m, s = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
        latent = p._encode_vae_image(image)
        assert torch.allclose(latent, (mode - m) * vae.config.scaling_factor / s, rtol=0, atol=16 * EPS32)
        decoded = (vae.decode(latent * s / vae.config.scaling_factor + m).sample / 2 + 0.5).clamp(0, 1)
        assert torch.allclose(p._decode_vae_latent(latent), decoded, rtol=0, atol=16 * EPS32)
    stock = StableDiffusionXLPipeline(**xl.components)
    assert type(DiffuseHighSDXLPipeline.from_pipe(stock)) is DiffuseHighSDXLPipeline
    assert isinstance(sd_pipeline(), DiffuseHighSDPipeline)
