"""A tiny random-weight SDXL pipeline built offline (diffusers' dummy-component recipe, no tokenizer/text encoder:
prompts are passed as embeddings)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

from diffusehigh.pipeline import DiffuseHighSDXLPipeline


def tiny_components() -> dict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4, sample_size=128, norm_num_groups=8,
    )  # fmt: skip
    return dict(unet=unet, vae=vae, scheduler=scheduler, text_encoder=None, text_encoder_2=None, tokenizer=None,
                tokenizer_2=None)  # fmt: skip


def tiny_pipeline() -> DiffuseHighSDXLPipeline:
    pipe = DiffuseHighSDXLPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeds(batch: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        prompt_embeds=torch.randn(batch, 77, 64, generator=g),
        negative_prompt_embeds=torch.randn(batch, 77, 64, generator=g),
        pooled_prompt_embeds=torch.randn(batch, 32, generator=g),
        negative_pooled_prompt_embeds=torch.randn(batch, 32, generator=g),
    )


class WithEmbeddings:
    """What ``run_sdxl`` calls as its pipeline, on the tiny SDXL: prompts become fixed random embeddings (no text
    encoder offline); every call's keywords are recorded in ``calls``."""

    def __init__(self):
        self.pipe, self.calls = tiny_pipeline(), []

    def __call__(self, prompt, negative_prompt, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs, **prompt_embeds())

    def sample_direct(self, prompt, negative_prompt, **kwargs):
        self.calls.append({"direct": True, **kwargs})
        return self.pipe.sample_direct(**kwargs, **prompt_embeds())
