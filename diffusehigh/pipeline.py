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
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, StableDiffusionXLPipeline
from diffusers.utils import BaseOutput

from common.errors import PathNotFoundError, UserError, require_path

from . import core
from .config import README_NEGATIVE_PROMPT, StageConfig

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
GUIDANCE_IMAGE_TOLERANCE = 1e-3
"""How far a guidance image may leave [0, 1] and still be accepted (then clamped): fp16 rounding and the overshoot
of a bicubic/Lanczos resize. Larger excursions mean another value range ([-1, 1], [0, 255]) and are refused."""
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
        return (image.to(self._stage_dtype()) / 2 + 0.5).clamp(0, 1)

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

    def _stage_dtype(self) -> torch.dtype:
        """What the stages compute in (x0, the DWT, the Euler update): float32, as released (fp16 models are
        upcast), or float64 for a float64 model (the tests' tight equivalence checks)."""
        return torch.float64 if self.unet.dtype == torch.float64 else torch.float32

    def _check_arguments(self, *, base_kwargs: dict, **kw) -> tuple[StageConfig, list[tuple[int, int]]]:
        """Check every argument of :meth:`__call__` before any network runs (the base image alone takes minutes on
        SDXL); a ValueError (TypeError for an unknown keyword) names the argument. Returns the stages' config and
        the stage sizes (height, width) as ints."""
        if kw["output_type"] not in ("pil", "np", "pt"):
            raise ValueError(
                f"output_type must be 'pil', 'np' or 'pt', got {kw['output_type']!r} (DiffuseHigh's stages decode to "
                "pixels for the DWT guidance, so no latent output is returned)"
            )
        if not isinstance(self.scheduler, EulerDiscreteScheduler):
            raise ValueError(f"DiffuseHigh stages need an EulerDiscreteScheduler, got {type(self.scheduler).__name__}")
        if self.scheduler.config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler.config.prediction_type must be one of {PREDICTION_TYPES}, got "
                f"{self.scheduler.config.prediction_type!r}"
            )
        generator = kw["generator"]
        if isinstance(generator, list):
            raise ValueError("generator: pass one torch.Generator (lists of generators are not supported)")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        for name in ("enable_dwt", "enable_sharpening", "enable_vae_tiling", "return_dict"):
            if not isinstance(kw[name], (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {kw[name]!r}")
        unknown = sorted(set(base_kwargs) - _base_keywords())
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}: neither DiffuseHigh's nor SDXL's")
        # The prompts and their embeddings, as the base pipeline checks them (the sizes are checked below with the
        # VAE factor; check_inputs would hard-code 8, so it gets 0 x 0 here).
        self.check_inputs(
            prompt=kw["prompt"], prompt_2=kw["prompt_2"], height=0, width=0,
            callback_steps=base_kwargs.get("callback_steps"), negative_prompt=kw["negative_prompt"],
            negative_prompt_2=kw["negative_prompt_2"], prompt_embeds=kw["prompt_embeds"],
            negative_prompt_embeds=kw["negative_prompt_embeds"], pooled_prompt_embeds=kw["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=kw["negative_pooled_prompt_embeds"],
            ip_adapter_image=base_kwargs.get("ip_adapter_image"),
            ip_adapter_image_embeds=base_kwargs.get("ip_adapter_image_embeds"),
            callback_on_step_end_tensor_inputs=base_kwargs.get("callback_on_step_end_tensor_inputs"),
        )  # fmt: skip
        steps = core.check_int(kw["num_inference_steps"], "num_inference_steps", 1)
        core.check_int(kw["noising_steps"], "noising_steps", 1, steps)
        per_prompt = core.check_int(kw["num_images_per_prompt"], "num_images_per_prompt", 1)
        core.check_real(kw["guidance_scale"], "guidance_scale", 0.0)
        factor = self.vae_scale_factor
        guidance_image = kw["guidance_image"]
        if guidance_image is None:
            base = []
            for name in ("height", "width"):
                value = kw[name] or self.default_sample_size * factor
                value = core.check_int(value, name, 1)
                if value % factor:
                    raise ValueError(f"{name} must be a multiple of the VAE factor {factor}, got {value}")
                base.append(value)
        else:
            core.check_image(guidance_image, "guidance_image")
            if guidance_image.shape[1] != 3:
                raise ValueError(f"guidance_image must be (B, 3, h, w) in [0, 1], got {tuple(guidance_image.shape)}")
            low, high = float(guidance_image.min()), float(guidance_image.max())
            tol = GUIDANCE_IMAGE_TOLERANCE
            if not torch.isfinite(guidance_image).all() or low < -tol or high > 1.0 + tol:
                raise ValueError(
                    f"guidance_image values must be in [0, 1] (up to {tol:g}, then clamped), got [{low:g}, {high:g}]"
                )
            prompt, embeds = kw["prompt"], kw["prompt_embeds"]
            prompts = embeds.shape[0] if embeds is not None else 1 if isinstance(prompt, str) else len(prompt or ())
            if guidance_image.shape[0] != prompts * per_prompt:
                raise ValueError(
                    f"guidance_image holds {guidance_image.shape[0]} images for {prompts} prompt(s) x "
                    f"num_images_per_prompt={per_prompt}; they must match"
                )
            base = list(guidance_image.shape[-2:])
        heights = _size_list(kw["target_height"], "target_height")
        widths = _size_list(kw["target_width"], "target_width")
        if len(heights) != len(widths):
            raise ValueError(
                f"target_height and target_width need the same, non-zero number of stages, got {len(heights)} and "
                f"{len(widths)}"
            )
        sizes = core.check_stage_sizes(
            tuple(base), list(zip(heights, widths, strict=True)), factor, name="target_height/target_width: target size"
        )
        sigma = kw["sharpening_sigma"]
        core.check_sharpening_sigma(sigma, "sharpening_sigma")
        stage = StageConfig(
            upsample_mode=kw["upsample_mode"],
            sharpening_alpha=kw["sharpening_alpha"] if kw["enable_sharpening"] else 0.0,
            sharpening_kernel_size=kw["sharpening_kernel_size"],
            sharpening_sigma=(float(sigma),) * 2 if isinstance(sigma, numbers.Real) else tuple(sigma),
            stage_steps=kw["noising_steps"],
            dwt_steps=kw["dwt_steps"] if kw["enable_dwt"] else 0,
            dwt_wave=kw["dwt_wave"],
            dwt_level=kw["dwt_level"],
            dwt_mode=kw["dwt_mode"],
            renoise=kw["renoise"],
            diffusehigh_guidance_scale=kw["diffusehigh_guidance_scale"],
        )
        core.check_real(kw["sharpening_alpha"], "sharpening_alpha", 0.0)  # also when sharpening is off
        core.check_int(kw["dwt_steps"], "dwt_steps", 0)  # also when the DWT guidance is off
        core.validate_stage_config(stage, names={"stage_steps": "noising_steps"})
        return stage, sizes

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
        vs 5.0 for the base); ``target_height``/``target_width`` one entry per progressive stage (a sequence, range
        or 1-D array of integers or whole-number floats; a size may repeat, a refinement pass, but never shrink);
        ``guidance_image`` (B, 3, h, w) in [0, 1] replaces the base generation (values up to 1e-3 outside are
        clamped); ``noising_steps`` the last steps of
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
        stage, target_sizes = self._check_arguments(
            prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            diffusehigh_guidance_scale=diffusehigh_guidance_scale, target_height=target_height,
            target_width=target_width, guidance_image=guidance_image, noising_steps=noising_steps,
            enable_dwt=enable_dwt, dwt_level=dwt_level, dwt_wave=dwt_wave, dwt_mode=dwt_mode, dwt_steps=dwt_steps,
            enable_sharpening=enable_sharpening, sharpening_kernel_size=sharpening_kernel_size,
            sharpening_sigma=sharpening_sigma, sharpening_alpha=sharpening_alpha, upsample_mode=upsample_mode,
            renoise=renoise, enable_vae_tiling=enable_vae_tiling, num_images_per_prompt=num_images_per_prompt,
            generator=generator, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            output_type=output_type, return_dict=return_dict, base_kwargs=base_kwargs,
        )  # fmt: skip
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        enable_vae_tiling, return_dict = bool(enable_vae_tiling), bool(return_dict)  # numpy bools too
        levels = core.euler_stage_levels(self.scheduler, num_inference_steps, noising_steps)
        device, work_dtype = self._execution_device, self._stage_dtype()
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
            base = guidance_image.to(device=device, dtype=work_dtype).clamp(0, 1)  # within the tolerance: checked
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
            )[0].to(work_dtype)  # fmt: skip
            if do_cfg:
                uncond, cond = out.chunk(2)
                out = uncond + diffusehigh_guidance_scale * (cond - uncond)
            z = z.to(work_dtype)
            if prediction_type == "epsilon":
                return z - sigma * out
            if prediction_type == "v_prediction":
                return out * (-sigma / math.sqrt(sigma**2 + 1)) + z / (sigma**2 + 1)
            return out  # "sample" (the prediction type was checked before the first UNet call)

        tiling_before = self._tiling_enabled()
        self._set_tiling(enable_vae_tiling or tiling_before)
        current, stage_outputs = base, []
        try:
            for size in target_sizes:
                current, _ = core.diffusehigh_stage(
                    current, size, denoise, levels, stage, generator, encode=self._encode_vae_image,
                    decode=self._decode_vae_latent, size_multiple=self.vae_scale_factor,
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


def _size_list(value, name: str) -> list[int]:
    """Stage sizes from any non-string sequence, range, or 1-D numpy array / tensor of integers; whole-number floats
    (``1024 * 1.5 = 1536.0``) count as integers. Returns Python ints."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of sizes, one per stage, got {value!r}")
    return [core.check_int(v, f"{name}[{k}]", 1, integral_float=True) for k, v in enumerate(value)]


def _base_keywords() -> set[str]:
    """Keywords that ``**base_kwargs`` may pass on to StableDiffusionXLPipeline.__call__ (the base image)."""
    own = set(inspect.signature(DiffuseHighSDXLPipeline.__call__).parameters)
    base = set(inspect.signature(StableDiffusionXLPipeline.__call__).parameters)
    return (base - own - {"self", "kwargs"}) | {"callback", "callback_steps"}  # the last two: deprecated, still read


SDXL_HINT = (
    "Put stable-diffusion-xl-base-1.0 in diffusers layout (model_index.json, unet/, vae/, text_encoder/, "
    "text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/) in a local directory and pass --set sdxl_path=/that/dir "
    "(nothing is downloaded)."
)


def check_sdxl_dir(path: str | Path | None) -> Path:
    """``path`` as a Path if it is a diffusers pipeline directory (has model_index.json); else a one-line
    :class:`~common.errors.PathNotFoundError` that names ``sdxl_path`` and says what to put there."""
    root = require_path(path, "sdxl_path (a local SDXL pipeline directory)", kind="dir", hint=SDXL_HINT)
    if not (root / "model_index.json").is_file():
        raise PathNotFoundError(
            f"sdxl_path: {root} has no model_index.json, so it is no diffusers pipeline. {SDXL_HINT}"
        )
    return root


def load_local_pipeline(path: str, dtype: str = "float16", device: torch.device | str = "cpu"):
    """``DiffuseHighSDXLPipeline`` from a local diffusers directory (never the hub); a clear error if missing."""
    root = check_sdxl_dir(path)
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
    hint = "Pass --set prompts_path=/a/file.txt, or leave it empty for the official demo prompt."
    file = require_path(path, "prompts_path (a text file, one prompt per line)", kind="file", hint=hint)
    prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts_path: {file} holds no prompts (one prompt per non-empty line)")
    return prompts


__all__ = ["README_NEGATIVE_PROMPT", "DiffuseHighSDXLPipeline", "DiffuseHighSDXLPipelineOutput", "load_local_pipeline"]
