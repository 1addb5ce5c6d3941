"""DiffuseHighSDXLPipeline on tiny random SDXL components, offline: sizes, call counts, reload, determinism."""

from __future__ import annotations

import pytest
import torch

from diffusehigh import core
from diffusehigh.pipeline import DiffuseHighSDXLPipeline, load_local_pipeline

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
    a = pipe(generator=torch.Generator().manual_seed(1), **KW, **prompt_embeds()).images
    b = loaded(generator=torch.Generator().manual_seed(1), **KW, **prompt_embeds()).images
    assert torch.allclose(a, b, atol=1e-5)
    reloaded = load_local_pipeline(str(tmp_path / "tiny-sdxl"), "float32")
    levels = core.euler_stage_levels(reloaded.scheduler, 50, 15)
    assert levels.timesteps[0] == 281 and levels.sigmas[0] == pytest.approx(0.7789, abs=1e-3)


def test_missing_local_directory_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="sdxl_path"):
        load_local_pipeline(str(tmp_path / "nothing"))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_stage_equals_a_manual_diffusers_euler_loop(prediction_type):
    """Without DWT and sharpening, a stage is: bicubic upsample -> VAE encode (mode) -> add sigma_0 noise -> the
    last NOISING steps of diffusers' Euler loop (scale_model_input + step) with CFG at diffusehigh_guidance_scale
    and SDXL time ids at the base (guidance image) size -> decode."""
    from diffusers import EulerDiscreteScheduler

    p = tiny_pipeline()
    p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config, prediction_type=prediction_type)
    low = torch.rand(1, 3, 32, 32)
    emb = prompt_embeds()
    kw = {**KW, "target_height": [64], "target_width": [64], "enable_dwt": False, "enable_sharpening": False}
    ours = p(guidance_image=low, guidance_scale=5.0, diffusehigh_guidance_scale=10.0,
             generator=torch.Generator().manual_seed(4), **kw, **emb).images  # fmt: skip

    g = torch.Generator().manual_seed(4)
    torch.rand((), generator=g)  # the sharpening sigma is drawn even at alpha = 0 (stream independent of alpha)
    with torch.no_grad():
        guide = core.upsample(low, (64, 64))
        latent = p.vae.encode(guide * 2 - 1).latent_dist.mode() * p.vae.config.scaling_factor
        noise = torch.randn(latent.shape, generator=g)
        sched = EulerDiscreteScheduler.from_config(p.scheduler.config)
        sched.set_timesteps(STEPS)
        sched.set_begin_index(STEPS - NOISING)
        z = latent + sched.sigmas[STEPS - NOISING] * noise
        embeds = torch.cat([emb["negative_prompt_embeds"], emb["prompt_embeds"]])
        pooled = torch.cat([emb["negative_pooled_prompt_embeds"], emb["pooled_prompt_embeds"]])
        time_ids = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]).repeat(2, 1)  # base size, not 64
        for t in sched.timesteps[-NOISING:]:
            x_in = sched.scale_model_input(torch.cat([z, z]), t)
            out = p.unet(x_in, t, encoder_hidden_states=embeds,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample  # fmt: skip
            uncond, cond = out.chunk(2)
            z = sched.step(uncond + 10.0 * (cond - uncond), t, z).prev_sample
        ref = (p.vae.decode(z / p.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


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
