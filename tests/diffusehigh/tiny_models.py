"""Tiny random pipelines with real text encoders, built offline: SDXL with its two CLIP text encoders and SD 1.5-style
(one CLIP text encoder, PNDM scheduler as SD 1.5 ships), both with a byte-level CLIP tokenizer whose vocabulary is
built in memory (the 256 byte characters, the same with "</w>", and the two special tokens; no merges)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from diffusehigh.pipeline import DiffuseHighSDPipeline, DiffuseHighSDXLPipeline

from .tiny_sdxl import tiny_components

BOS, EOS = 512, 513
MAX_LENGTH = 77


def _byte_characters() -> list[str]:
    """GPT-2's byte -> printable character table (what CLIP's BPE vocabulary is made of)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for _, c in sorted(zip(printable, codes, strict=True))]


def byte_tokenizer() -> CLIPTokenizer:
    chars = _byte_characters()
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": BOS, "<|endoftext|>": EOS}
    try:  # transformers 5: the vocabulary itself
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_LENGTH)
    except TypeError:  # transformers 4: files
        folder = Path(tempfile.mkdtemp(prefix="byte-tokenizer-"))
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH)


def text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=EOS + 1, hidden_act="gelu", projection_dim=32,
        max_position_embeddings=MAX_LENGTH,
    )  # fmt: skip


def sdxl_components(**unet_overrides) -> dict:
    """The tiny SDXL of tiny_sdxl.py with two text encoders (hidden 32 + 32 = the UNet's cross-attention width 64;
    projection 32 + 6 time ids x 8 = its 80 added-embedding inputs) and their tokenizers."""
    components = tiny_components()
    if unet_overrides:
        torch.manual_seed(0)
        components["unet"] = UNet2DConditionModel.from_config(components["unet"].config, **unet_overrides)
    torch.manual_seed(1)
    components["text_encoder"] = CLIPTextModel(text_config())
    components["text_encoder_2"] = CLIPTextModelWithProjection(text_config())
    components["tokenizer"] = components["tokenizer_2"] = byte_tokenizer()
    return components


def sdxl_pipeline(**unet_overrides) -> DiffuseHighSDXLPipeline:
    pipe = DiffuseHighSDXLPipeline(**sdxl_components(**unet_overrides))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_components() -> dict:
    """SD 1.5's layout: one CLIP text encoder (hidden 32 = the UNet's cross-attention width), no added
    embeddings, PNDM with SD 1.5's scheduler config; no safety checker."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), cross_attention_dim=32, norm_num_groups=1,
    )  # fmt: skip
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
        set_alpha_to_one=False,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4, sample_size=128, norm_num_groups=8,
    )  # fmt: skip
    torch.manual_seed(1)
    return dict(unet=unet, vae=vae, scheduler=scheduler, text_encoder=CLIPTextModel(text_config()),
                tokenizer=byte_tokenizer(), safety_checker=None, feature_extractor=None, image_encoder=None,
                requires_safety_checker=False)  # fmt: skip


def sd_pipeline(**overrides) -> DiffuseHighSDPipeline:
    pipe = DiffuseHighSDPipeline(**{**sd_components(), **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe
