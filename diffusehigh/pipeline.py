"""``DiffuseHighSDXLPipeline``: DiffuseHigh on Stable Diffusion XL with current diffusers (paper preset).

A subclass of diffusers' ``StableDiffusionXLPipeline``: the base image is the stock SDXL sampler; every higher
stage is :func:`diffusehigh.core.diffusehigh_stage` with SDXL's VAE as encoder/decoder and its UNet (with
classifier-free guidance) as denoiser, on the last ``noising_steps`` of the Euler grid. Defaults are the
released pipeline's (notes 2.9), with its quirks fixed (notes 2.11): the stage guidance scale is a documented
argument, the base height/width can be set, the sharpening sigma comes from ``generator`` (reproducible),
``sharpening_alpha`` is the sharpening knob, diffusers is called by keyword only, and nothing is downloaded:
load it with ``DiffuseHighSDXLPipeline.from_pretrained(local_dir, local_files_only=True)``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, StableDiffusionXLPipeline
from diffusers.utils import BaseOutput

from . import core
from .config import README_NEGATIVE_PROMPT, StageConfig

DEFAULT_PROMPTS = ("Cinematic photo of delicious chocolate icecream.",)
"""The official pipeline's demo prompt (notes 4); the paper preset's prompts when no prompt file is given."""


@dataclass
class DiffuseHighSDXLPipelineOutput(BaseOutput):
    """``images``: the last stage's output; ``guidance_images``: the base (native-resolution) images;
    ``stage_images``: every stage's output, in stage order (the last is ``images``)."""

    images: object
    guidance_images: object
    stage_images: list | None = None


class DiffuseHighSDXLPipeline(StableDiffusionXLPipeline):
    """SDXL with DiffuseHigh's progressive, structure-guided high-resolution stages."""

    def _encode_vae_image(self, image: torch.Tensor) -> torch.Tensor:
        """Pixel image in [0, 1] -> scaled latent (the posterior's mode, as the released code)."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(dtype=torch.float32)
        x = (image * 2 - 1).to(device=vae.device, dtype=vae.dtype)
        latent = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
        if upcast:
            vae.to(dtype=torch.float16)
        return latent.to(self.unet.dtype)

    def _decode_vae_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> pixel image in [0, 1] (clamped, as diffusers' postprocessing)."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(dtype=torch.float32)
        image = vae.decode(latent.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def _tiling_enabled(self) -> bool:
        return bool(getattr(self.vae, "use_tiling", False))

    def _set_tiling(self, enabled: bool) -> None:
        if enabled:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()

    def _to_output(self, images: torch.Tensor, output_type: str):
        if output_type == "pt":
            return images
        return self.image_processor.postprocess(images * 2 - 1, output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        prompt_2: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        diffusehigh_guidance_scale: float = 10.0,
        target_height: list[int] | tuple[int, ...] = (2048, 3072, 4096),
        target_width: list[int] | tuple[int, ...] = (2048, 3072, 4096),
        guidance_image: torch.Tensor | None = None,
        noising_steps: int = 15,
        enable_dwt: bool = True,
        dwt_level: int = 1,
        dwt_wave: str = "db4",
        dwt_mode: str = "symmetric",
        dwt_steps: int = 5,
        enable_sharpening: bool = True,
        sharpening_kernel_size: int = 3,
        sharpening_sigma: float | tuple[float, float] = (0.1, 2.0),
        sharpening_alpha: float = 1.0,
        upsample_mode: str = "bicubic",
        renoise: str = "deterministic",
        enable_vae_tiling: bool = True,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **base_kwargs,
    ):
        """Generate the base image (or take ``guidance_image``), then one DiffuseHigh stage per target size.

        Args (beyond StableDiffusionXLPipeline's): ``diffusehigh_guidance_scale`` CFG in the stages (released 10.0,
        vs 5.0 for the base); ``target_height``/``target_width`` one entry per progressive stage;
        ``guidance_image`` (B, 3, h, w) in [0, 1] replaces the base generation; ``noising_steps`` the last steps of
        the ``num_inference_steps`` Euler grid run per stage (15 of 50: t = 281, sigma 0.7789); ``dwt_*`` the
        structure guidance (LL swap on the decoded x0 for the first ``dwt_steps`` steps); ``sharpening_*`` the
        unsharp mask (sigma fixed or drawn from ``generator``); ``renoise`` deterministic Euler (released) or
        fresh noise after the guided steps (old research code); ``enable_vae_tiling`` True switches the tiled VAE on
        for the stages, False leaves the VAE's own setting (its previous state is restored afterwards, also on
        error). ``output_type`` "pil", "np" or "pt" ([0, 1] tensors); "latent" is rejected (the stages end in
        pixel space).

        SDXL's micro-conditioning (``time_ids``) stays at the base size in every stage, as released; with
        ``guidance_image`` that base size is the guidance image's own (h, w), not ``height``/``width``.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(
                f"output_type must be 'pil', 'np' or 'pt', got {output_type!r} (DiffuseHigh's stages decode to pixels "
                "for the DWT guidance, so no latent output is returned)"
            )
        if not isinstance(self.scheduler, EulerDiscreteScheduler):
            raise ValueError(f"DiffuseHigh stages need an EulerDiscreteScheduler, got {type(self.scheduler).__name__}")
        if isinstance(generator, list):
            raise ValueError("pass one torch.Generator (lists of generators are not supported)")
        target_height, target_width = list(target_height), list(target_width)
        if len(target_height) != len(target_width) or not target_height:
            raise ValueError("target_height and target_width need the same, non-zero number of stages")
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        device = self._execution_device
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))

        prompt_kwargs = dict(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )  # fmt: skip
        if guidance_image is None:
            latents = super().__call__(
                prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
                height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                num_images_per_prompt=num_images_per_prompt, generator=generator, output_type="latent",
                return_dict=False, **prompt_kwargs, **base_kwargs,
            )[0]  # fmt: skip
            base = self._decode_vae_latent(latents)
        else:
            base = guidance_image.to(device=device, dtype=torch.float32)
            if base.dim() != 4 or base.shape[1] != 3:
                raise ValueError(f"guidance_image must be (B, 3, h, w) in [0, 1], got {tuple(base.shape)}")
            height, width = base.shape[-2:]
        batch = base.shape[0]

        do_cfg = diffusehigh_guidance_scale > 1.0
        embeds, neg_embeds, pooled, neg_pooled = self.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, device=device, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_cfg, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            **prompt_kwargs,
        )  # fmt: skip
        if embeds.shape[0] != batch:
            raise ValueError(f"{embeds.shape[0]} prompt embeddings for {batch} base images")
        projection_dim = (
            int(pooled.shape[-1]) if self.text_encoder_2 is None else self.text_encoder_2.config.projection_dim
        )
        # Micro-conditioning kept at the base size at every stage, as released (notes 2.8).
        time_ids = self._get_add_time_ids(
            original_size=(height, width), crops_coords_top_left=(0, 0), target_size=(height, width),
            dtype=embeds.dtype, text_encoder_projection_dim=projection_dim,
        ).to(device).repeat(batch, 1)  # fmt: skip
        if do_cfg:
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        timestep_cond = None
        if getattr(self.unet.config, "time_cond_proj_dim", None) is not None:
            w = torch.tensor(diffusehigh_guidance_scale - 1).repeat(batch)
            timestep_cond = self.get_guidance_scale_embedding(
                w=w, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=embeds.dtype)
        prediction_type = self.scheduler.config.prediction_type

        def denoise(z: torch.Tensor, sigma: float, t: int) -> torch.Tensor:
            x_in = z / math.sqrt(sigma**2 + 1)
            x_in = torch.cat([x_in, x_in]) if do_cfg else x_in
            timestep = torch.full((x_in.shape[0],), t, device=device)
            out = self.unet(
                sample=x_in.to(self.unet.dtype), timestep=timestep, encoder_hidden_states=embeds,
                timestep_cond=timestep_cond, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                return_dict=False,
            )[0].float()  # fmt: skip
            if do_cfg:
                uncond, cond = out.chunk(2)
                out = uncond + diffusehigh_guidance_scale * (cond - uncond)
            z = z.float()
            if prediction_type == "epsilon":
                return z - sigma * out
            if prediction_type == "v_prediction":
                return out * (-sigma / math.sqrt(sigma**2 + 1)) + z / (sigma**2 + 1)
            if prediction_type == "sample":
                return out
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")

        stage = StageConfig(
            upsample_mode=upsample_mode,
            sharpening_alpha=sharpening_alpha if enable_sharpening else 0.0,
            sharpening_kernel_size=sharpening_kernel_size,
            sharpening_sigma=(
                (float(sharpening_sigma),) * 2
                if isinstance(sharpening_sigma, (int, float))
                else tuple(sharpening_sigma)
            ),
            stage_steps=noising_steps,
            dwt_steps=dwt_steps if enable_dwt else 0,
            dwt_wave=dwt_wave,
            dwt_level=dwt_level,
            dwt_mode=dwt_mode,
            renoise=renoise,
            diffusehigh_guidance_scale=diffusehigh_guidance_scale,
        )
        levels = core.euler_stage_levels(self.scheduler, num_inference_steps, noising_steps)
        tiling_before = self._tiling_enabled()
        self._set_tiling(enable_vae_tiling or tiling_before)
        current, stage_outputs = base, []
        try:
            for h, w in zip(target_height, target_width, strict=True):
                current, _ = core.diffusehigh_stage(
                    current, (int(h), int(w)), denoise, levels, stage, generator,
                    encode=self._encode_vae_image, decode=self._decode_vae_latent,
                )  # fmt: skip
                stage_outputs.append(current)
        finally:
            self._set_tiling(tiling_before)
            self.maybe_free_model_hooks()
        images, guides = self._to_output(current, output_type), self._to_output(base, output_type)
        if not return_dict:
            return images, guides
        stages_out = [self._to_output(x, output_type) for x in stage_outputs[:-1]] + [images]
        return DiffuseHighSDXLPipelineOutput(images=images, guidance_images=guides, stage_images=stages_out)

    @torch.no_grad()
    def sample_direct(self, **kwargs):
        """The "direct" baseline: the stock SDXL sampler at the given height/width (keywords as the base
        pipeline's ``__call__``), e.g. at the DiffuseHigh target size."""
        return StableDiffusionXLPipeline.__call__(self, **kwargs)


def load_local_pipeline(path: str, dtype: str = "float16", device: torch.device | str = "cpu"):
    """``DiffuseHighSDXLPipeline`` from a local diffusers directory (never the hub); a clear error if missing."""
    root = Path(path) if path else None
    if root is None or not (root / "model_index.json").exists():
        raise FileNotFoundError(
            f"no SDXL pipeline at {path!r}: put stable-diffusion-xl-base-1.0 in diffusers layout (model_index.json, "
            "unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/) in a local "
            "directory and pass --set sdxl_path=/that/dir (nothing is downloaded)"
        )
    kwargs = {dtype_keyword(): getattr(torch, dtype)}
    pipe = DiffuseHighSDXLPipeline.from_pretrained(str(root), local_files_only=True, **kwargs)
    return pipe.to(device)


def dtype_keyword() -> str:
    """``"dtype"`` on diffusers releases whose ``from_pretrained`` reads it (0.42 here; there ``torch_dtype``
    still works but warns it is deprecated), else ``"torch_dtype"`` (older releases, e.g. 0.30, which would
    silently ignore ``dtype=``)."""
    try:
        source = inspect.getsource(DiffusionPipeline.from_pretrained)
    except (OSError, TypeError):  # no source available: the keyword every release >= 0.30 accepts
        return "torch_dtype"
    return "dtype" if 'kwargs.pop("dtype"' in source else "torch_dtype"


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of ``path``; the official demo prompt when ``path`` is empty."""
    if not path:
        return list(DEFAULT_PROMPTS)
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


__all__ = ["README_NEGATIVE_PROMPT", "DiffuseHighSDXLPipeline", "DiffuseHighSDXLPipelineOutput", "load_local_pipeline"]
