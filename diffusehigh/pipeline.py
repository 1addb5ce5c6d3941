"""DiffuseHigh pipelines on current diffusers: ``DiffuseHighSDXLPipeline`` (SDXL and SDXL-architecture checkpoints,
the paper preset) and ``DiffuseHighSDPipeline`` (Stable Diffusion 1.x / 2.x).

Each is a subclass of the diffusers pipeline of its backbone: the base image is the stock sampler (with whatever
scheduler the pipeline has); every higher stage is :func:`diffusehigh.core.diffusehigh_stage` with the VAE as
encoder/decoder and the UNet (with classifier-free guidance) as denoiser, on the last ``noising_steps`` of an Euler
grid built from the scheduler's noise schedule. Defaults are the released pipeline's (notes 2.9), with its quirks
fixed (notes 2.11): the stage guidance scale is a documented argument, the base height/width can be set, the
sharpening sigma comes from ``generator`` (reproducible), ``sharpening_alpha`` is the sharpening knob, diffusers is
called by keyword only, callbacks and the progress bar run in the stages too, and nothing is downloaded: load a
pipeline with ``from_pretrained(local_dir, local_files_only=True)`` (or :func:`load_pipeline`).

Instead of generating the base image, both take a user's image (``guidance_image``: a PIL image, a numpy array or
a tensor in [0, 1] or [-1, 1]), resized to the base size as released: the upscale mode.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import BaseOutput
from PIL import Image

from common.errors import PathNotFoundError, UserError, require_path

from . import core
from .config import MODEL_DIR_HINT, README_NEGATIVE_PROMPT, StageConfig

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
GUIDANCE_IMAGE_TOLERANCE = 1e-3
"""How far a guidance image may leave its value range and still be accepted (then clamped): fp16 rounding and the
overshoot of a bicubic/Lanczos resize. Larger excursions mean another value range ([0, 255]) and are refused."""
VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))
"""The value ranges a floating guidance image may come in (``guidance_image_range``; None guesses, see
:func:`image_tensors`)."""
DEFAULT_PROMPTS = ("Cinematic photo of delicious chocolate icecream.",)
"""The official pipeline's demo prompt (notes 4); the paper preset's prompts when no prompt file is given."""
SDXL_DEFAULT_TARGETS = (2048, 3072, 4096)
"""The released pipeline's stages (notes 2.2): 1024 -> 2048 -> 3072 -> 4096."""
STAGE_SCHEDULER_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
)  # fmt: skip
"""What the stages' Euler grid takes from a non-Euler scheduler's config: its noise schedule, not its sampler
options (Karras/exponential sigmas would move the stages' noise level away from the released sigma 0.7789)."""


@dataclass
class DiffuseHighPipelineOutput(BaseOutput):
    """``images``: the last stage's output; ``guidance_images``: the base (native-resolution) images, generated or
    the user's image resized to the base size; ``stage_images``: every stage's output, in stage order (the last is
    ``images``); ``nsfw_content_detected``: the safety checker's flags for ``images`` (SD pipelines that have one)."""

    images: object
    guidance_images: object
    stage_images: list | None = None
    nsfw_content_detected: list[bool] | None = None


DiffuseHighSDXLPipelineOutput = DiffuseHighPipelineOutput
"""The output's earlier name (the SDXL pipeline was the only one)."""

StepCallback = Callable[[Any, int, Any, dict], dict]
StageCallback = Callable[[Any, int, torch.Tensor], None]


# ----------------------------------------------------------------------------------------------------
# Guidance images: PIL, numpy, tensors -> (1, 3, h, w) tensors in [0, 1]


def image_tensors(image, name: str = "guidance_image", value_range: tuple[float, float] | None = None) -> list:
    """``image`` as a list of (1, 3, h, w) floating tensors in [0, 1] (values up to the tolerance outside are
    clamped later), one per image; the images of a list may differ in size.

    Accepted: a PIL image; a numpy array (h, w), (h, w, 3) or (b, h, w, 3), uint8 (/255), uint16 (/65535) or
    floating; a tensor (3, h, w) or (b, 3, h, w), uint8 or floating; or a list of these. Floating values are in
    [0, 1] or [-1, 1] (``value_range``); None guesses [-1, 1] when the minimum is below -tolerance, else [0, 1]
    (diffusers' rule), so pass ``value_range=(-1, 1)`` for a [-1, 1] image that may have no negative value.
    Anything else raises a ValueError that names ``name``.
    """
    if value_range is not None and tuple(value_range) not in VALUE_RANGES:
        raise ValueError(f"{name}_range must be None, (0, 1) or (-1, 1), got {value_range!r}")
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError(f"{name} must not be an empty list")
        return [t for k, item in enumerate(image) for t in image_tensors(item, f"{name}[{k}]", value_range)]
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
        return [torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255]
    if isinstance(image, np.ndarray):
        return _from_numpy(image, name, value_range)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, name, value_range)
    raise ValueError(
        f"{name} must be a PIL image, a numpy array, a torch tensor or a list of them, got {type(image).__name__}"
    )


def _from_numpy(array: np.ndarray, name: str, value_range) -> list:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{name} as a numpy array must be (h, w), (h, w, 3) or (b, h, w, 3), got {array.shape}")
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        scaled = torch.from_numpy(array.astype(np.float32) / np.iinfo(array.dtype).max)
        return list(scaled.permute(0, 3, 1, 2).split(1))
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} as a numpy array must be uint8, uint16 or floating, got {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    return list(_to_unit_range(tensor, name, value_range).split(1))


def _from_tensor(tensor: torch.Tensor, name: str, value_range) -> list:
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tensor.shape[1] != 3 or min(tensor.shape) < 1:
        raise ValueError(f"{name} must be (B, 3, h, w) or (3, h, w), got {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        return list((tensor.float() / 255).split(1))
    if not tensor.is_floating_point():
        raise ValueError(f"{name} as a tensor must be uint8 or floating, got {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return list(_to_unit_range(tensor, name, value_range).split(1))


def _to_unit_range(x: torch.Tensor, name: str, value_range) -> torch.Tensor:
    """Floating ``x`` in [0, 1] or [-1, 1] (``value_range``, or guessed) mapped to [0, 1]; refused if outside."""
    tol = GUIDANCE_IMAGE_TOLERANCE
    low, high = float(x.min()), float(x.max())
    if not torch.isfinite(x).all() or high > 1.0 + tol or low < -1.0 - tol:
        raise ValueError(
            f"{name} values must be in [0, 1] or [-1, 1] (up to {tol:g}, then clamped), got [{low:g}, {high:g}]"
        )
    signed = low < -tol if value_range is None else tuple(value_range) == (-1.0, 1.0)
    if not signed and low < -tol:
        raise ValueError(f"{name} values must be in [0, 1] (up to {tol:g}, then clamped), got [{low:g}, {high:g}]")
    return (x + 1) / 2 if signed else x


def resize_to(images: list, size: tuple[int, int], dtype: torch.dtype, device) -> torch.Tensor:
    """(1, 3, h, w) images in [0, 1] -> one (B, 3, H, W) batch: clamped, resized (bicubic, antialiased when a side
    shrinks) where the size differs, clamped again (bicubic overshoots); an image of the right size is only
    clamped."""
    out = []
    for x in images:
        x = x.to(device=device, dtype=dtype).clamp(0, 1)
        if tuple(x.shape[-2:]) != tuple(size):
            shrinks = x.shape[-2] > size[0] or x.shape[-1] > size[1]
            x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=shrinks).clamp(0, 1)
        out.append(x)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------
# What both pipelines share: checks, the VAE codec, the stage scheduler, the stages with callbacks


class DiffuseHighMixin:
    """The DiffuseHigh stages on top of a diffusers text-to-image pipeline (listed before it in the bases).

    A subclass sets ``_base_pipeline`` (its diffusers parent) and ``_default_targets``, and implements ``__call__``
    with :meth:`_check_stage_arguments`, the base call, its own prompt conditioning and :meth:`_run_stages`."""

    _base_pipeline: ClassVar[type]
    _default_targets: ClassVar[tuple[int, ...] | None] = None
    """None: one stage at twice the base size."""

    # -- state the callbacks can read
    @property
    def stage_index(self) -> int:
        """0 while the base image is generated, k during the k-th DiffuseHigh stage (for ``callback_on_step_end``)."""
        return getattr(self, "_stage_index", 0)

    # -- the VAE
    def _vae_device(self) -> torch.device:
        """Where the VAE's inputs must be: its execution device under model CPU offload (its weights then sit on the
        CPU until its hook moves them), else its own device."""
        try:
            from diffusers.utils.torch_utils import get_module_execution_device
        except ImportError:  # diffusers < 0.36: no offload-aware helper
            return self._execution_device
        return get_module_execution_device(self.vae)

    def _latent_stats(self, like: torch.Tensor):
        """The VAE's per-channel latent mean/std (SDXL derivatives such as Playground v2.5), or None."""
        mean, std = getattr(self.vae.config, "latents_mean", None), getattr(self.vae.config, "latents_std", None)
        if mean is None or std is None:
            return None
        shape = (1, len(mean), 1, 1)
        as_tensor = lambda v: torch.tensor(v).view(shape).to(like.device, like.dtype)  # noqa: E731
        return as_tensor(mean), as_tensor(std)

    def _encode_vae_image(self, image: torch.Tensor) -> torch.Tensor:
        """Pixel image in [0, 1] -> scaled latent (the posterior's mode, as the released code; normalised by the
        VAE's latents_mean/std where it has them, as diffusers' SDXL pipelines decode)."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(dtype=torch.float32)
        x = (image * 2 - 1).to(device=self._vae_device(), dtype=vae.dtype)
        latent = vae.encode(x).latent_dist.mode()
        stats = self._latent_stats(latent)
        if stats is not None:
            latent = (latent - stats[0]) * vae.config.scaling_factor / stats[1]
        else:
            latent = latent * vae.config.scaling_factor
        if upcast:
            vae.to(dtype=torch.float16)
        return latent.to(self.unet.dtype)

    def _decode_vae_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> pixel image in [0, 1] (clamped, as diffusers' postprocessing)."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(dtype=torch.float32)
        latent = latent.to(device=self._vae_device(), dtype=vae.dtype)
        stats = self._latent_stats(latent)
        if stats is not None:
            latent = latent * stats[1] / vae.config.scaling_factor + stats[0]
        else:
            latent = latent / vae.config.scaling_factor
        image = vae.decode(latent, return_dict=False)[0]
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

    def _default_size(self) -> int:
        sample_size = getattr(self, "default_sample_size", None) or self.unet.config.sample_size
        return int(sample_size) * self.vae_scale_factor

    # -- the stage scheduler
    def stage_scheduler(self) -> EulerDiscreteScheduler:
        """The scheduler whose grid the stages run on: the pipeline's own if it is an EulerDiscreteScheduler (as
        released), else an EulerDiscreteScheduler with the pipeline scheduler's noise schedule
        (``STAGE_SCHEDULER_KEYS``), so the base may use any discrete-time scheduler (DDIM, PNDM, DPM-Solver,
        UniPC, ...). Schedulers without betas (flow matching, EDM) are refused with a ValueError."""
        scheduler = self.scheduler
        if isinstance(scheduler, EulerDiscreteScheduler):
            return scheduler
        config = dict(scheduler.config)
        if "beta_schedule" not in config or "num_train_timesteps" not in config:
            raise ValueError(
                f"DiffuseHigh's stages run on an Euler grid built from the scheduler's noise schedule (betas); "
                f"{type(scheduler).__name__} has none (flow-matching and EDM schedulers are not supported). Use a "
                "discrete-time scheduler such as EulerDiscreteScheduler, DDIMScheduler or DPMSolverMultistepScheduler"
            )
        return EulerDiscreteScheduler(**{k: config[k] for k in STAGE_SCHEDULER_KEYS if k in config})

    # -- argument checks
    def _check_stage_arguments(self, kw: dict, prompts: int) -> tuple[StageConfig, list[tuple[int, int]], Any]:
        """Check the stage arguments of ``__call__`` (``kw``) before any network runs (the base image alone takes
        minutes on SDXL); a ValueError names the argument. ``prompts``: the number of prompts (or embeddings).
        Returns the stages' config, the stage sizes (height, width) and the guidance image, converted to a
        (B, 3, H, W) batch at the base size (None without one)."""
        if kw["output_type"] not in ("pil", "np", "pt"):
            raise ValueError(
                f"output_type must be 'pil', 'np' or 'pt', got {kw['output_type']!r} (DiffuseHigh's stages decode to "
                "pixels for the DWT guidance, so no latent output is returned)"
            )
        stage_scheduler = self.stage_scheduler()
        if stage_scheduler.config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler.config.prediction_type must be one of {PREDICTION_TYPES}, got "
                f"{stage_scheduler.config.prediction_type!r}"
            )
        generator = kw["generator"]
        if isinstance(generator, list):
            raise ValueError("generator: pass one torch.Generator (lists of generators are not supported)")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        for name in ("enable_dwt", "enable_sharpening", "enable_vae_tiling", "return_dict"):
            if not isinstance(kw[name], (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {kw[name]!r}")
        for name in ("callback_on_step_end", "callback_on_stage_end"):
            if kw[name] is not None and not callable(kw[name]):
                raise ValueError(f"{name} must be callable or None, got {type(kw[name]).__name__}")
        steps = core.check_int(kw["num_inference_steps"], "num_inference_steps", 1)
        core.check_int(kw["noising_steps"], "noising_steps", 1, steps)
        per_prompt = core.check_int(kw["num_images_per_prompt"], "num_images_per_prompt", 1)
        core.check_real(kw["guidance_scale"], "guidance_scale", 0.0)
        factor = self.vae_scale_factor
        base = []
        for name in ("height", "width"):
            value = core.check_int(kw[name] or self._default_size(), name, 1)
            if value % factor:
                raise ValueError(f"{name} must be a multiple of the VAE factor {factor}, got {value}")
            base.append(value)
        guide = None
        if kw["guidance_image"] is not None:
            images = image_tensors(kw["guidance_image"], "guidance_image", kw["guidance_image_range"])
            if len(images) not in (prompts * per_prompt, prompts):
                raise ValueError(
                    f"guidance_image holds {len(images)} images for {prompts} prompt(s) x "
                    f"num_images_per_prompt={per_prompt}; they must match (or give one image per prompt)"
                )
            guide = resize_to(images, tuple(base), self._stage_dtype(), self._execution_device)
            if len(images) != prompts * per_prompt:
                guide = guide.repeat_interleave(per_prompt, dim=0)
            aspects = {round(x.shape[-1] / x.shape[-2], 2) for x in images}
            if aspects != {round(base[1] / base[0], 2)}:
                log.warning(
                    "guidance_image: aspect ratio %s resized to the base size %s x %s (height x width); pass "
                    "height/width with the image's aspect ratio to keep it", sorted(aspects), *base,
                )  # fmt: skip
        heights, widths = _target_lists(kw["target_height"], kw["target_width"], *self._target_default(base))
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
        return stage, sizes, guide

    def _target_default(self, base: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The stage heights and widths when neither is given."""
        if self._default_targets is not None:
            return self._default_targets, self._default_targets
        return (2 * base[0],), (2 * base[1],)

    @classmethod
    def _check_base_keywords(cls, base_kwargs: dict) -> None:
        """The parent's ``__call__`` takes ``**kwargs`` and would silently ignore a misspelt keyword."""
        own = set(inspect.signature(cls.__call__).parameters)
        base = set(inspect.signature(cls._base_pipeline.__call__).parameters)
        allowed = (base - own - {"self", "kwargs"}) | {"callback", "callback_steps"}  # deprecated, still read
        unknown = sorted(set(base_kwargs) - allowed)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}: neither DiffuseHigh's nor the base pipeline's")

    @staticmethod
    def _tensor_inputs(callback, names) -> list[str]:
        """The tensors a ``callback_on_step_end`` asks for: a diffusers PipelineCallback names its own."""
        try:
            from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
        except ImportError:  # pragma: no cover - diffusers < 0.29
            return list(names)
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            return list(callback.tensor_inputs)
        return list(names)

    # -- the stages
    def _generator(self, generator: torch.Generator | None, device) -> torch.Generator:
        if generator is None:
            return torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        return generator

    def _run_stages(
        self,
        base: torch.Tensor,
        sizes: list[tuple[int, int]],
        denoise: core.Denoise,
        levels: core.NoiseLevels,
        stage: StageConfig,
        generator: torch.Generator,
        *,
        enable_vae_tiling: bool,
        callback_on_step_end: StepCallback | None,
        callback_tensor_inputs: Sequence[str],
        callback_on_stage_end: StageCallback | None,
        tensors: dict,
    ) -> list[torch.Tensor]:
        """One DiffuseHigh stage per size, each from the previous one's image; returns every stage's image.

        Per step, ``callback_on_step_end(pipe, i, t, {name: tensor})`` gets the stage's step index and timestep,
        ``latents`` (the stage's sample) and the requested entries of ``tensors`` (the conditioning ``denoise``
        reads); latents and conditioning it returns replace them. ``pipe.stage_index`` says which stage runs.
        ``callback_on_stage_end(pipe, k, image)`` gets the base image (k = 0) and every stage's image ([0, 1]
        tensors) as soon as they exist. A callback that sets ``pipe._interrupt = True`` stops the pipeline after
        the current stage. The VAE's tiling setting is restored afterwards, also on error."""
        tiling_before = self._tiling_enabled()
        self._set_tiling(enable_vae_tiling or tiling_before)
        current, outputs = base, []
        try:
            self._stage_index = 0
            if callback_on_stage_end is not None:
                callback_on_stage_end(self, 0, base)
            for k, size in enumerate(sizes, start=1):
                if getattr(self, "_interrupt", False):
                    break
                self._stage_index, self._num_timesteps = k, len(levels)
                with self.progress_bar(total=len(levels)) as bar:

                    def step_callback(i: int, t: int, z: torch.Tensor, bar=bar):
                        replaced = None
                        if callback_on_step_end is not None:
                            available = {"latents": z, **tensors}
                            kwargs = {n: available[n] for n in callback_tensor_inputs if n in available}
                            returned = callback_on_step_end(self, i, torch.tensor(t), kwargs) or {}
                            replaced = returned.pop("latents", None)
                            tensors.update({n: v for n, v in returned.items() if n in tensors})
                        bar.update()
                        return replaced

                    current, _ = core.diffusehigh_stage(
                        current, size, denoise, levels, stage, generator, encode=self._encode_vae_image,
                        decode=self._decode_vae_latent, size_multiple=self.vae_scale_factor,
                        step_callback=step_callback,
                    )  # fmt: skip
                outputs.append(current)
                if callback_on_stage_end is not None:
                    callback_on_stage_end(self, k, current)
        finally:
            self._set_tiling(tiling_before)
            self.maybe_free_model_hooks()
        return outputs

    def _unet_output(
        self, out: torch.Tensor, z: torch.Tensor, sigma: float, do_cfg: bool, scale: float, prediction_type: str
    ) -> torch.Tensor:
        """x0 from the UNet's (CFG-combined) output at noise level ``sigma`` (Euler's VE parameterisation)."""
        work_dtype = self._stage_dtype()
        out = out.to(work_dtype)
        if do_cfg:
            uncond, cond = out.chunk(2)
            out = uncond + scale * (cond - uncond)
        z = z.to(work_dtype)
        if prediction_type == "epsilon":
            return z - sigma * out
        if prediction_type == "v_prediction":
            return out * (-sigma / math.sqrt(sigma**2 + 1)) + z / (sigma**2 + 1)
        return out  # "sample" (the prediction type was checked before the first UNet call)

    def _timestep_cond(self, guidance_scale: float, batch: int, device, dtype):
        """A guidance-distilled UNet's w-embedding (``time_cond_proj_dim``), from the base's guidance_scale as
        released (the stages reuse the base's); None for other UNets."""
        dim = getattr(self.unet.config, "time_cond_proj_dim", None)
        if dim is None:
            return None
        w = torch.tensor(guidance_scale - 1).repeat(batch)
        return self.get_guidance_scale_embedding(w=w, embedding_dim=dim).to(device=device, dtype=dtype)

    def _do_cfg(self, guidance_scale: float) -> bool:
        """Classifier-free guidance in the stages: on when the base's guidance_scale > 1 and the UNet is not
        guidance-distilled (no ``time_cond_proj_dim``), as released (diffusers' ``do_classifier_free_guidance``)."""
        return guidance_scale > 1 and getattr(self.unet.config, "time_cond_proj_dim", None) is None

    def _finish(self, base, stage_outputs, output_type: str, return_dict: bool, nsfw=None):
        final = stage_outputs[-1] if stage_outputs else base
        images, guides = self._to_output(final, output_type), self._to_output(base, output_type)
        if not return_dict:
            return images, guides
        stages_out = [self._to_output(x, output_type) for x in stage_outputs[:-1]] + ([images] if stage_outputs else [])
        return DiffuseHighPipelineOutput(
            images=images, guidance_images=guides, stage_images=stages_out, nsfw_content_detected=nsfw
        )


def _target_lists(heights, widths, default_heights, default_widths) -> tuple[list[int], list[int]]:
    """Stage heights and widths: an int is one square stage; a missing side mirrors the other; neither given: the
    default stages."""
    if heights is None and widths is None:
        heights, widths = default_heights, default_widths
    elif heights is None:
        heights = widths
    elif widths is None:
        widths = heights
    heights, widths = _size_list(heights, "target_height"), _size_list(widths, "target_width")
    if len(heights) != len(widths):
        raise ValueError(
            f"target_height and target_width need the same, non-zero number of stages, got {len(heights)} and "
            f"{len(widths)}"
        )
    return heights, widths


def _size_list(value, name: str) -> list[int]:
    """Stage sizes from an int (one stage), any non-string sequence, range, or 1-D numpy array / tensor of integers;
    whole-number floats (``1024 * 1.5 = 1536.0``) count as integers. Returns Python ints."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a size or a non-empty list of sizes, one per stage, got {value!r}")
    return [core.check_int(v, f"{name}[{k}]", 1, integral_float=True) for k, v in enumerate(value)]


# ----------------------------------------------------------------------------------------------------
# SDXL


class DiffuseHighSDXLPipeline(DiffuseHighMixin, StableDiffusionXLPipeline):
    """SDXL (and SDXL-architecture checkpoints) with DiffuseHigh's progressive, structure-guided stages."""

    _base_pipeline = StableDiffusionXLPipeline
    _default_targets = SDXL_DEFAULT_TARGETS

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
        target_height: int | Sequence[int] | None = None,
        target_width: int | Sequence[int] | None = None,
        guidance_image=None,
        guidance_image_range: tuple[float, float] | None = None,
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
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_on_stage_end: StageCallback | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **base_kwargs,
    ):
        """Generate the base image (or take ``guidance_image``), then one DiffuseHigh stage per target size.

        Args (beyond StableDiffusionXLPipeline's, whose other keywords reach the base image):
            diffusehigh_guidance_scale: CFG in the stages (released 10.0, vs 5.0 for the base); CFG runs in the
                stages when ``guidance_scale`` > 1 and the UNet is not guidance-distilled, as released.
            target_height / target_width: one entry per progressive stage (default 2048, 3072, 4096); an int is
                one stage; give one of them for square stages. A sequence, range or 1-D array of integers or
                whole-number floats; a size may repeat (a refinement pass) but never shrink.
            guidance_image: replaces the base generation (upscale mode): a PIL image, numpy array, tensor or a list
                of them (see :func:`image_tensors`), in [0, 1] or [-1, 1] (``guidance_image_range``), resized to
                the base size ``height`` x ``width`` (default 1024 x 1024) as released.
            noising_steps: the last steps of the ``num_inference_steps`` Euler grid run per stage (15 of 50:
                t = 281, sigma 0.7789). ``dwt_*``: the structure guidance (LL swap on the decoded x0 for the first
                ``dwt_steps`` steps; ``dwt_mode`` any of ``dwt.BOUNDARY_MODES``, periodization included).
                ``sharpening_*``: the unsharp mask (sigma fixed or drawn from ``generator``). ``renoise``:
                deterministic Euler (released) or fresh noise after the guided steps (old research code).
            enable_vae_tiling: True switches the tiled VAE on for the stages, False leaves the VAE's own setting
                (restored afterwards, also on error).
            clip_skip, cross_attention_kwargs (its "scale" is the LoRA scale), negative prompts and the
                micro-conditioning (``original_size``, ``crops_coords_top_left``, ``target_size`` and their
                negative variants): used by the base and by every stage. Unset, the time ids are the base size at
                every stage, as released.
            callback_on_step_end / callback_on_step_end_tensor_inputs: diffusers' callback, called in the base and
                in every stage step (``pipe.stage_index`` says which); callback_on_stage_end(pipe, k, image): the
                base (k = 0) and each stage's image as a [0, 1] tensor.
            output_type: "pil", "np" or "pt" ([0, 1] tensors); "latent" is rejected (the stages end in pixels).
        """
        kw = dict(locals())
        kw.pop("self")
        kw.pop("base_kwargs")
        self._check_base_keywords(base_kwargs)
        # The prompts and their embeddings, as the base pipeline checks them (the sizes are checked with the VAE
        # factor by _check_stage_arguments; check_inputs would hard-code 8, so it gets 0 x 0 here).
        self.check_inputs(
            prompt=prompt, prompt_2=prompt_2, height=0, width=0, callback_steps=base_kwargs.get("callback_steps"),
            negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            ip_adapter_image=base_kwargs.get("ip_adapter_image"),
            ip_adapter_image_embeds=base_kwargs.get("ip_adapter_image_embeds"),
            callback_on_step_end_tensor_inputs=self._tensor_inputs(
                callback_on_step_end, callback_on_step_end_tensor_inputs
            ),
        )  # fmt: skip
        prompts = prompt_embeds.shape[0] if prompt_embeds is not None else 1 if isinstance(prompt, str) else len(prompt)
        stage, target_sizes, guide = self._check_stage_arguments(kw, prompts)
        height = height or self._default_size()
        width = width or self._default_size()
        enable_vae_tiling, return_dict = bool(enable_vae_tiling), bool(return_dict)  # numpy bools too
        stage_scheduler = self.stage_scheduler()
        levels = core.euler_stage_levels(stage_scheduler, num_inference_steps, noising_steps)
        prediction_type = stage_scheduler.config.prediction_type
        device = self._execution_device
        generator = self._generator(generator, device)
        tensor_inputs = self._tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self._interrupt, self._stage_index = False, 0

        prompt_kwargs = dict(
            prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            num_images_per_prompt=num_images_per_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, clip_skip=clip_skip,
        )  # fmt: skip
        micro = dict(
            original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size,
            negative_original_size=negative_original_size,
            negative_crops_coords_top_left=negative_crops_coords_top_left, negative_target_size=negative_target_size,
        )  # fmt: skip
        if guide is None:
            latents = super().__call__(
                height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                generator=generator, cross_attention_kwargs=cross_attention_kwargs,
                callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs,
                output_type="latent", return_dict=False, **prompt_kwargs, **micro, **base_kwargs,
            )[0]  # fmt: skip
            base = self._decode_vae_latent(latents)
        else:
            base = guide
        batch = base.shape[0]

        do_cfg = self._do_cfg(guidance_scale)
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs is not None else None
        embeds, neg_embeds, pooled, neg_pooled = self.encode_prompt(
            device=device, do_classifier_free_guidance=do_cfg, lora_scale=lora_scale, **prompt_kwargs
        )
        if embeds.shape[0] != batch:
            raise ValueError(f"{embeds.shape[0]} prompt embeddings for {batch} base images")
        projection_dim = (
            int(pooled.shape[-1]) if self.text_encoder_2 is None else self.text_encoder_2.config.projection_dim
        )

        def add_time_ids(original, crops, target) -> torch.Tensor:
            # Micro-conditioning at the base size at every stage unless given, as released (notes 2.8).
            return self._get_add_time_ids(
                original_size=tuple(original or (height, width)), crops_coords_top_left=tuple(crops),
                target_size=tuple(target or (height, width)), dtype=embeds.dtype,
                text_encoder_projection_dim=projection_dim,
            ).to(device).repeat(batch, 1)  # fmt: skip

        time_ids = add_time_ids(original_size, crops_coords_top_left, target_size)
        neg_time_ids = time_ids
        if negative_original_size is not None and negative_target_size is not None:
            neg_time_ids = add_time_ids(negative_original_size, negative_crops_coords_top_left, negative_target_size)
        cond = {
            "prompt_embeds": torch.cat([neg_embeds, embeds]) if do_cfg else embeds,
            "add_text_embeds": torch.cat([neg_pooled, pooled]) if do_cfg else pooled,
            "add_time_ids": torch.cat([neg_time_ids, time_ids]) if do_cfg else time_ids,
            "negative_prompt_embeds": neg_embeds,
            "negative_pooled_prompt_embeds": neg_pooled,
            "negative_add_time_ids": neg_time_ids,
        }
        timestep_cond = self._timestep_cond(guidance_scale, batch, device, embeds.dtype)

        def denoise(z: torch.Tensor, sigma: float, t: int) -> torch.Tensor:
            x_in = z / math.sqrt(sigma**2 + 1)
            x_in = torch.cat([x_in, x_in]) if do_cfg else x_in
            timestep = torch.full((x_in.shape[0],), t, device=device)
            out = self.unet(
                sample=x_in.to(self.unet.dtype), timestep=timestep, encoder_hidden_states=cond["prompt_embeds"],
                timestep_cond=timestep_cond, cross_attention_kwargs=cross_attention_kwargs,
                added_cond_kwargs={"text_embeds": cond["add_text_embeds"], "time_ids": cond["add_time_ids"]},
                return_dict=False,
            )[0]  # fmt: skip
            return self._unet_output(out, z, sigma, do_cfg, diffusehigh_guidance_scale, prediction_type)

        stage_outputs = self._run_stages(
            base, target_sizes, denoise, levels, stage, generator, enable_vae_tiling=enable_vae_tiling,
            callback_on_step_end=callback_on_step_end, callback_tensor_inputs=tensor_inputs,
            callback_on_stage_end=callback_on_stage_end, tensors=cond,
        )  # fmt: skip
        return self._finish(base, stage_outputs, output_type, return_dict)

    @torch.no_grad()
    def sample_direct(self, **kwargs):
        """The "direct" baseline: the stock SDXL sampler at the given height/width (keywords as the base
        pipeline's ``__call__``), e.g. at the DiffuseHigh target size."""
        return StableDiffusionXLPipeline.__call__(self, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Stable Diffusion 1.x / 2.x


class DiffuseHighSDPipeline(DiffuseHighMixin, StableDiffusionPipeline):
    """Stable Diffusion 1.x / 2.x with DiffuseHigh's stages (the released code is SDXL-only; its old research code
    had an SD 2.1 variant, 512 -> 1024 in one stage). The stages are the SDXL pipeline's; the conditioning is SD's
    (text embeddings only). A safety checker, when the pipeline has one, checks every returned image."""

    _base_pipeline = StableDiffusionPipeline
    _default_targets = None  # one stage at twice the base size: 512 -> 1024 (the old SD 2.1 config), 768 -> 1536

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        diffusehigh_guidance_scale: float = 7.5,
        target_height: int | Sequence[int] | None = None,
        target_width: int | Sequence[int] | None = None,
        guidance_image=None,
        guidance_image_range: tuple[float, float] | None = None,
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
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_on_stage_end: StageCallback | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **base_kwargs,
    ):
        """As :meth:`DiffuseHighSDXLPipeline.__call__`, with SD's arguments: no second prompt, no pooled embeddings,
        no micro-conditioning. Defaults: base and stage guidance 7.5 (diffusers' SD default; the old research code
        used one scale, 7.5, for both), one stage at twice the base size (512 -> 1024 for SD 1.5 and 2.x-base)."""
        kw = dict(locals())
        kw.pop("self")
        kw.pop("base_kwargs")
        self._check_base_keywords(base_kwargs)
        tensor_inputs = self._tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self.check_inputs(
            prompt=prompt, height=0, width=0, callback_steps=base_kwargs.get("callback_steps"),
            negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, ip_adapter_image=base_kwargs.get("ip_adapter_image"),
            ip_adapter_image_embeds=base_kwargs.get("ip_adapter_image_embeds"),
            callback_on_step_end_tensor_inputs=tensor_inputs,
        )  # fmt: skip
        prompts = prompt_embeds.shape[0] if prompt_embeds is not None else 1 if isinstance(prompt, str) else len(prompt)
        stage, target_sizes, guide = self._check_stage_arguments(kw, prompts)
        height = height or self._default_size()
        width = width or self._default_size()
        enable_vae_tiling, return_dict = bool(enable_vae_tiling), bool(return_dict)
        stage_scheduler = self.stage_scheduler()
        levels = core.euler_stage_levels(stage_scheduler, num_inference_steps, noising_steps)
        prediction_type = stage_scheduler.config.prediction_type
        device = self._execution_device
        generator = self._generator(generator, device)
        self._interrupt, self._stage_index = False, 0

        prompt_kwargs = dict(
            prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
        )  # fmt: skip
        if guide is None:
            latents = super().__call__(
                height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                generator=generator, cross_attention_kwargs=cross_attention_kwargs, clip_skip=clip_skip,
                callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs,
                output_type="latent", return_dict=False, **prompt_kwargs, **base_kwargs,
            )[0]  # fmt: skip
            base = self._decode_vae_latent(latents)
        else:
            base = guide
        batch = base.shape[0]

        do_cfg = self._do_cfg(guidance_scale)
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs is not None else None
        embeds, neg_embeds = self.encode_prompt(
            device=device, do_classifier_free_guidance=do_cfg, lora_scale=lora_scale, clip_skip=clip_skip,
            **prompt_kwargs,
        )  # fmt: skip
        if embeds.shape[0] != batch:
            raise ValueError(f"{embeds.shape[0]} prompt embeddings for {batch} base images")
        cond = {
            "prompt_embeds": torch.cat([neg_embeds, embeds]) if do_cfg else embeds,
            "negative_prompt_embeds": neg_embeds,
        }
        timestep_cond = self._timestep_cond(guidance_scale, batch, device, embeds.dtype)

        def denoise(z: torch.Tensor, sigma: float, t: int) -> torch.Tensor:
            x_in = z / math.sqrt(sigma**2 + 1)
            x_in = torch.cat([x_in, x_in]) if do_cfg else x_in
            timestep = torch.full((x_in.shape[0],), t, device=device)
            out = self.unet(
                sample=x_in.to(self.unet.dtype), timestep=timestep, encoder_hidden_states=cond["prompt_embeds"],
                timestep_cond=timestep_cond, cross_attention_kwargs=cross_attention_kwargs, return_dict=False,
            )[0]  # fmt: skip
            return self._unet_output(out, z, sigma, do_cfg, diffusehigh_guidance_scale, prediction_type)

        stage_outputs = self._run_stages(
            base, target_sizes, denoise, levels, stage, generator, enable_vae_tiling=enable_vae_tiling,
            callback_on_step_end=callback_on_step_end, callback_tensor_inputs=tensor_inputs,
            callback_on_stage_end=callback_on_stage_end, tensors=cond,
        )  # fmt: skip
        nsfw = None
        if self.safety_checker is not None:
            base, _ = self._check_safety(base, device, embeds.dtype)
            checked = [self._check_safety(x, device, embeds.dtype) for x in stage_outputs]
            stage_outputs = [x for x, _ in checked]
            nsfw = checked[-1][1] if checked else None
        return self._finish(base, stage_outputs, output_type, return_dict, nsfw)

    def _check_safety(self, images: torch.Tensor, device, dtype) -> tuple[torch.Tensor, list[bool] | None]:
        """diffusers' safety checker on [0, 1] images: flagged images come back blanked, with the flags."""
        checked, flags = self.run_safety_checker(images * 2 - 1, device, dtype)
        return (torch.as_tensor(checked).to(images) / 2 + 0.5).clamp(0, 1), flags

    @torch.no_grad()
    def sample_direct(self, **kwargs):
        """The "direct" baseline: the stock SD sampler at the given height/width."""
        return StableDiffusionPipeline.__call__(self, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Loading from a local directory

PIPELINE_CLASSES = {
    "StableDiffusionXLPipeline": DiffuseHighSDXLPipeline,
    "DiffuseHighSDXLPipeline": DiffuseHighSDXLPipeline,
    "StableDiffusionPipeline": DiffuseHighSDPipeline,
    "DiffuseHighSDPipeline": DiffuseHighSDPipeline,
}
"""model_index.json's ``_class_name`` -> the DiffuseHigh pipeline that loads it."""

SDXL_HINT = (
    "Put stable-diffusion-xl-base-1.0 in diffusers layout (model_index.json, unet/, vae/, text_encoder/, "
    "text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/) in a local directory and pass --set sdxl_path=/that/dir "
    "(nothing is downloaded)."
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def check_sdxl_dir(path: str | Path | None) -> Path:
    """``path`` as a Path if it is a diffusers pipeline directory (has model_index.json); else a one-line
    :class:`~common.errors.PathNotFoundError` that names ``sdxl_path`` and says what to put there."""
    root = require_path(path, "sdxl_path (a local SDXL pipeline directory)", kind="dir", hint=SDXL_HINT)
    if not (root / "model_index.json").is_file():
        raise PathNotFoundError(
            f"sdxl_path: {root} has no model_index.json, so it is no diffusers pipeline. {SDXL_HINT}"
        )
    return root


def check_model_dir(path: str | Path | None, what: str = "--model-dir") -> tuple[Path, type]:
    """``path`` and the DiffuseHigh pipeline class for it, if it is a complete local diffusers pipeline directory
    of a supported backbone; else one :class:`~common.errors.UserError` (a PathNotFoundError when the directory or
    model_index.json is missing) that names ``what`` and lists everything missing: each component of
    model_index.json needs its folder with a config and, for models, a weights file; text-to-image needs the
    text encoders and tokenizers."""
    root = require_path(path, what, kind="dir", hint=MODEL_DIR_HINT)
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise PathNotFoundError(f"{what}: {root} has no model_index.json, so it is no diffusers pipeline. "
                                f"{MODEL_DIR_HINT}")  # fmt: skip
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{what}: {index_file} is not valid JSON ({err}). {MODEL_DIR_HINT}") from err
    name = index.get("_class_name")
    cls = PIPELINE_CLASSES.get(name)
    if cls is None:
        raise UserError(f"{what}: {root} holds a {name!r}; DiffuseHigh supports {sorted(set(PIPELINE_CLASSES))} "
                        "(SDXL and its derivatives, SD 1.x / 2.x)")  # fmt: skip
    required = ["unet", "vae", "scheduler", "text_encoder", "tokenizer"]
    if cls is DiffuseHighSDXLPipeline:
        required += ["text_encoder_2", "tokenizer_2"]
    missing = []
    for component in required:
        entry = index.get(component)
        folder = root / component
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            missing.append(f"{component} (not in model_index.json)")
        elif not folder.is_dir():
            missing.append(f"{component}/")
        elif component == "scheduler":
            if not (folder / "scheduler_config.json").is_file():
                missing.append("scheduler/scheduler_config.json")
        elif component.startswith("tokenizer"):
            if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
                missing.append(f"{component}/ (no tokenizer.json or vocab.json)")
        else:
            if not (folder / "config.json").is_file():
                missing.append(f"{component}/config.json")
            if not any(f.name.endswith(WEIGHT_SUFFIXES) for f in folder.iterdir()):
                missing.append(f"{component}/ weights (*.safetensors or *.bin)")
    if missing:
        raise UserError(f"{what}: {root} is incomplete, missing: {', '.join(missing)}. {MODEL_DIR_HINT}")
    return root, cls


def load_pipeline(path: str | Path, dtype: str = "float16", device: torch.device | str = "cpu"):
    """The DiffuseHigh pipeline for a complete local diffusers directory (SDXL or SD 1.x / 2.x, by its
    model_index.json; never the hub); a :class:`~common.errors.UserError` naming what is missing otherwise."""
    root, cls = check_model_dir(path)
    kwargs = {dtype_keyword(): getattr(torch, dtype)}
    return cls.from_pretrained(str(root), local_files_only=True, **kwargs).to(device)


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


__all__ = [
    "README_NEGATIVE_PROMPT",
    "DiffuseHighPipelineOutput",
    "DiffuseHighSDPipeline",
    "DiffuseHighSDXLPipeline",
    "DiffuseHighSDXLPipelineOutput",
    "check_model_dir",
    "image_tensors",
    "load_local_pipeline",
    "load_pipeline",
]
