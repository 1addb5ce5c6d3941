"""The DiffuseHigh algorithm, independent of the backbone (pixel UNet here, SDXL in :mod:`diffusehigh.pipeline`).

Everything runs in the variance-exploding parameterisation z = x0 + sigma * eps of diffusers' Euler scheduler
(a VP model's x_t is sqrt(alpha_bar) * z with sigma = sqrt((1 - alpha_bar) / alpha_bar)). A backbone supplies

* ``denoise(z, sigma, t) -> (x0_hat, eps_hat)``: the predicted clean sample (classifier-free guidance and any
  clipping included) and the model's raw noise prediction; a denoiser may return x0_hat alone, and then
  eps_hat = (z - x0_hat) / sigma (the same thing when x0_hat is not clipped, as for SDXL),
* ``encode(image) -> z0`` and ``decode(z0) -> image``: identity for a pixel model, the VAE for SDXL,

and the sampler is deterministic DDIM (eta = 0) / Euler:

* unguided steps: z' = x0_hat + sigma' * eps_hat, with the model's raw eps_hat, i.e. diffusers' DDIMScheduler
  default (``use_clipped_model_output=False``: x0 clipped, eps not recomputed). Without clipping this is exactly
  the released code's Euler step z + (z - x0_hat) / sigma * (sigma' - sigma).
* DWT-guided steps: z' = x0_g + sigma' * (z - x0_g) / sigma, i.e. eps rebuilt from the guided x0_g, as the
  released code's Euler step does (it overwrites the model's x0 by the guided one before the step).

One stage (paper Sec. 3; notes 2.3-2.7): upsample the previous image in pixel space -> sharpen (unsharp mask)
-> LL_g = low-pass DWT subband of the sharpened guide -> encode -> noise to sigma_tau -> run the remaining steps,
replacing the LL subband of the decoded x0_hat by LL_g during the first ``dwt_steps`` steps. ``dwt_steps = 0``
is plain SDEdit (interpolate + noise + denoise).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pywt
import torch
import torch.nn.functional as F

from . import dwt as dwt_lib
from .config import StageConfig

Denoise = Callable[[torch.Tensor, float, int], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
Codec = Callable[[torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# ----------------------------------------------------------------------------------------------------
# Argument checks: everything is validated before the first network call, and every message names the argument.

UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")
RENOISE_MODES = ("deterministic", "fresh")


ErrorType = type[Exception]
"""The exception class a check raises: ValueError for direct calls (the pipeline's and the core's arguments),
``common.config.ConfigError`` (a user error, one line on the command line) from ``reproduce.validate_config``."""


def check_int(
    value,
    name: str,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    error: ErrorType = ValueError,
    integral_float: bool = False,
) -> int:
    """``value`` as an int in [minimum, maximum]. Bools and non-integral numbers are refused; with
    ``integral_float`` a float that is a whole number (``1024 * 1.5 = 1536.0``) is accepted and converted."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)) and integral_float:
        as_float = float(value)
        if math.isfinite(as_float) and as_float.is_integer():
            value = int(as_float)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise error(f"{name} must be <= {maximum}, got {value}")
    return value


def check_real(
    value, name: str, minimum: float | None = None, *, strict: bool = False, error: ErrorType = ValueError
) -> float:
    """``value`` as a finite float, ``>= minimum`` (``> minimum`` if ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise error(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise error(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
    return value


def check_sharpening_sigma(value, name: str = "sharpening_sigma", *, error: ErrorType = ValueError) -> None:
    """A blur sigma > 0, or a range ``(low, high)`` with 0 < low <= high to draw it from."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        check_real(value, name, 0.0, strict=True, error=error)
        return
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise error(f"{name} must be a number > 0 or a pair (low, high), got {value!r}")
    low = check_real(value[0], f"{name}[0]", 0.0, strict=True, error=error)
    high = check_real(value[1], f"{name}[1]", 0.0, strict=True, error=error)
    if low > high:
        raise error(f"{name} must be (low, high) with low <= high, got {tuple(value)}")


@functools.lru_cache(maxsize=1)
def discrete_wavelets() -> frozenset[str]:
    """PyWavelets' discrete wavelet names (built once: ``pywt.wavelist`` assembles the list on every call)."""
    return frozenset(pywt.wavelist(kind="discrete"))


def validate_stage_config(
    stage: StageConfig, names: Mapping[str, str] | None = None, *, error: ErrorType = ValueError
) -> None:
    """Check every field of ``stage``; a message names the field as ``names`` maps it (default: the field name,
    e.g. ``{"stage_steps": "noising_steps"}`` for the SDXL pipeline or ``stages.<field>`` for a config). A bad
    value raises ``error``; a ``names`` key that is no StageConfig field is the caller's bug (ValueError)."""
    names = names or {}

    def n(field: str) -> str:
        return names.get(field, field)

    fields = {f.name for f in dataclasses.fields(StageConfig)}
    unknown = set(names) - fields
    if unknown:
        raise ValueError(f"names maps fields StageConfig does not have: {sorted(unknown)}")
    factors = stage.scale_factors
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors:
        raise error(f"{n('scale_factors')} must be a non-empty sequence of increasing factors, got {factors!r}")
    for i, f in enumerate(factors):
        check_real(f, f"{n('scale_factors')}[{i}]", 0.0, strict=True, error=error)
    if any(b <= a for a, b in itertools.pairwise(factors)):
        raise error(f"{n('scale_factors')} must be increasing, got {tuple(factors)}")
    if stage.upsample_mode not in UPSAMPLE_MODES:
        raise error(f"{n('upsample_mode')} must be one of {UPSAMPLE_MODES}, got {stage.upsample_mode!r}")
    check_real(stage.sharpening_alpha, n("sharpening_alpha"), 0.0, error=error)
    size = check_int(stage.sharpening_kernel_size, n("sharpening_kernel_size"), 1, error=error)
    if size % 2 == 0:
        raise error(f"{n('sharpening_kernel_size')} must be odd, got {size}")
    check_sharpening_sigma(stage.sharpening_sigma, n("sharpening_sigma"), error=error)
    check_real(stage.noise_sigma, n("noise_sigma"), 0.0, strict=True, error=error)
    check_int(stage.stage_steps, n("stage_steps"), 1, error=error)
    check_int(stage.dwt_steps, n("dwt_steps"), 0, error=error)
    if not isinstance(stage.dwt_wave, str) or stage.dwt_wave not in discrete_wavelets():
        raise error(f"{n('dwt_wave')} must be a discrete PyWavelets wavelet (haar, db4, sym4, ...), "
                    f"got {stage.dwt_wave!r}")  # fmt: skip
    check_int(stage.dwt_level, n("dwt_level"), 1, error=error)
    if stage.dwt_mode not in dwt_lib.BOUNDARY_MODES:
        raise error(f"{n('dwt_mode')} must be one of {dwt_lib.BOUNDARY_MODES}, got {stage.dwt_mode!r}")
    if stage.renoise not in RENOISE_MODES:
        raise error(f"{n('renoise')} must be one of {RENOISE_MODES}, got {stage.renoise!r}")
    check_real(stage.diffusehigh_guidance_scale, n("diffusehigh_guidance_scale"), 0.0, error=error)


def check_stage_sizes(
    base: tuple[int, int],
    sizes: Sequence[tuple[int, int]],
    multiple: int = 1,
    name: str = "size",
    *,
    error: ErrorType = ValueError,
) -> list[tuple[int, int]]:
    """Stage sizes (H, W) that are positive multiples of ``multiple`` (a VAE's downsampling factor: other sizes
    come back from encode/decode smaller, and the guide's LL band no longer fits) and do not shrink from ``base``
    stage by stage: neither side smaller than the previous stage's. The same size as the previous stage is a
    refinement pass (guided re-noise and denoise without upsampling) and allowed."""
    if not sizes:
        raise error(f"{name}: need at least one stage size, got none")
    previous, out = tuple(base), []
    for k, size in enumerate(sizes):
        label = f"{name}[{k}]" if len(sizes) > 1 else name
        if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
            raise error(f"{label} must be (height, width), got {size!r}")
        h, w = (
            check_int(v, f"{label} {side}", 1, error=error) for v, side in zip(size, ("height", "width"), strict=True)
        )
        for v, side in ((h, "height"), (w, "width")):
            if v % multiple:
                down, up = v // multiple * multiple, (v // multiple + 1) * multiple
                use = f"{down} or {up}" if down else f"{up}"
                raise error(
                    f"{label} {side} {v} is not a multiple of the VAE factor {multiple} (the autoencoder would "
                    f"return {down}); use e.g. {use}"
                )
        if h < previous[0] or w < previous[1]:
            before = "the base" if k == 0 else f"stage {k - 1}"
            raise error(
                f"{label} ({h}, {w}) must not be smaller than {before} {previous} on either side: stages upscale "
                "(or, at the same size, refine); they never shrink"
            )
        previous = (h, w)
        out.append(previous)
    return out


def check_levels(levels: NoiseLevels, name: str = "levels") -> None:
    """A non-empty grid that starts above zero noise, with finite sigmas."""
    if not isinstance(levels, NoiseLevels):
        raise ValueError(f"{name} must be a NoiseLevels, got {type(levels).__name__}")
    if len(levels) < 1:
        raise ValueError(f"{name} must have at least one step")
    if not all(math.isfinite(s) for s in levels.sigmas) or levels.sigmas[0] <= 0 or levels.sigmas[-1] < 0:
        raise ValueError(f"{name} sigmas must be finite, start > 0 and end >= 0, got {levels.sigmas}")


def check_image(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating (B, C, H, W) tensor, got {shape}")
    if x.shape[0] < 1 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{name} must not be empty, got {tuple(x.shape)}")


def _check_call(
    previous: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    levels: NoiseLevels,
    clip_range: tuple[float, float] | None,
    guidance_factor: float,
    size_multiple: int,
) -> list[tuple[int, int]]:
    """The arguments of a stage call other than the StageConfig (checked by :func:`validate_stage_config`)."""
    check_image(previous, "previous")
    check_int(size_multiple, "size_multiple", 1)
    check_levels(levels)
    if clip_range is not None:
        if len(clip_range) != 2:
            raise ValueError(f"clip_range must be (low, high) or None, got {clip_range!r}")
        low, high = (check_real(v, "clip_range") for v in clip_range)
        if low >= high:
            raise ValueError(f"clip_range must be (low, high) with low < high, got {tuple(clip_range)}")
    factor = check_real(guidance_factor, "guidance_factor", 0.0)
    if factor > 1:
        raise ValueError(f"guidance_factor must be in [0, 1] (1 = the paper's hard LL replacement), got {factor:g}")
    return check_stage_sizes(tuple(previous.shape[-2:]), sizes, size_multiple)


def check_stage_call(
    previous: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    levels: NoiseLevels,
    stage: StageConfig,
    clip_range: tuple[float, float] | None,
    guidance_factor: float,
    size_multiple: int,
) -> list[tuple[int, int]]:
    """Every argument of :func:`diffusehigh_stage` / :func:`diffusehigh`, before any network call."""
    validate_stage_config(stage)
    return _check_call(previous, sizes, levels, clip_range, guidance_factor, size_multiple)


# ----------------------------------------------------------------------------------------------------
# Noise levels


@dataclass(frozen=True)
class NoiseLevels:
    """A sampler grid: ``timesteps[i]`` is evaluated at ``sigmas[i]``; ``sigmas`` has one more entry (the end)."""

    timesteps: tuple[int, ...]
    sigmas: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.sigmas) != len(self.timesteps) + 1:
            raise ValueError("sigmas needs one entry more than timesteps (the level the last step ends at)")
        if any(b > a for a, b in itertools.pairwise(self.sigmas)):
            raise ValueError(f"sigmas must not increase: {self.sigmas}")

    def __len__(self) -> int:
        return len(self.timesteps)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for every training timestep."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


def ddim_levels(alphas_cumprod: torch.Tensor, num_inference_steps: int) -> NoiseLevels:
    """The DDIM grid ("leading" spacing, as diffusers' DDIMScheduler): t = (n-1)k, ..., k, 0 with k = T // n,
    ending at sigma = 0 (``set_alpha_to_one``)."""
    total = len(alphas_cumprod)
    if not 1 <= num_inference_steps <= total:
        raise ValueError(f"num_inference_steps must be in [1, {total}], got {num_inference_steps}")
    step = total // num_inference_steps
    timesteps = [i * step for i in reversed(range(num_inference_steps))]
    sig = sigmas_from_alphas_cumprod(alphas_cumprod)
    return NoiseLevels(tuple(timesteps), (*[float(sig[t]) for t in timesteps], 0.0))


def levels_from_sigma(alphas_cumprod: torch.Tensor, noise_sigma: float, steps: int) -> NoiseLevels:
    """A stage grid for a discrete-time model that starts at the noise level ``noise_sigma``.

    t0 is the training timestep whose sigma is closest to ``noise_sigma`` (SDXL's 0.7789 is t ~ 215 on a
    DDPM-linear schedule, not 281: notes 2.5); the ``steps`` timesteps are evenly spaced from t0 to 0.
    """
    if steps < 1 or noise_sigma <= 0:
        raise ValueError(f"need steps >= 1 and noise_sigma > 0, got {steps}, {noise_sigma}")
    sig = sigmas_from_alphas_cumprod(alphas_cumprod)
    t0 = int(torch.argmin((sig - noise_sigma).abs()))
    if steps > t0 + 1:
        raise ValueError(f"{steps} steps do not fit below t0={t0} (sigma {noise_sigma}); use fewer stage steps")
    timesteps = [round(t) for t in torch.linspace(t0, 0, steps).tolist()]
    return NoiseLevels(tuple(timesteps), (*[float(sig[t]) for t in timesteps], 0.0))


def euler_stage_levels(scheduler, num_inference_steps: int, noising_steps: int) -> NoiseLevels:
    """The released code's stage grid: the last ``noising_steps`` of an ``num_inference_steps`` Euler grid.

    With SDXL's EulerDiscreteScheduler config and 15 of 50 steps: t = 281, 261, ..., 1 and sigma_0 = 0.7789.
    """
    if not 1 <= noising_steps <= num_inference_steps:
        raise ValueError(f"noising_steps must be in [1, {num_inference_steps}], got {noising_steps}")
    scheduler.set_timesteps(num_inference_steps)
    timesteps = [int(t) for t in scheduler.timesteps[-noising_steps:]]
    sigmas = [float(s) for s in scheduler.sigmas[-(noising_steps + 1) :]]
    return NoiseLevels(tuple(timesteps), tuple(sigmas))


# ----------------------------------------------------------------------------------------------------
# Sharpening


def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of odd ``kernel_size`` (torchvision's GaussianBlur uses the same taps)."""
    if kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0:
        raise ValueError(f"need an odd kernel_size >= 1 and sigma > 0, got {kernel_size}, {sigma}")
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images ``(B, C, H, W)`` with reflect padding (as torchvision)."""
    k = gaussian_kernel1d(kernel_size, sigma).to(device=x.device, dtype=x.dtype)
    pad = kernel_size // 2
    channels = x.shape[1]
    y = F.pad(x, (pad, pad, 0, 0), mode="reflect") if pad else x
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    y = F.pad(y, (0, 0, pad, pad), mode="reflect") if pad else y
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def draw_sigma(sigma: float | Sequence[float], generator: torch.Generator | None) -> float:
    """A fixed sigma, or one drawn uniformly from ``(low, high)`` with ``generator`` (not the global RNG)."""
    if isinstance(sigma, (int, float)):
        return float(sigma)
    low, high = float(sigma[0]), float(sigma[1])
    if low == high:
        return low
    device = generator.device if generator is not None else "cpu"
    u = float(torch.rand((), generator=generator, device=device))
    return low + (high - low) * u


def sharpen(
    x: torch.Tensor,
    alpha: float,
    kernel_size: int = 3,
    sigma: float | Sequence[float] = (0.1, 2.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """Unsharp mask x + alpha * (x - G_sigma(x)) (notes 2.4); returns the image and the sigma used.

    sigma is drawn even when alpha = 0, so the random stream (and so everything after) does not depend on alpha.
    """
    s = draw_sigma(sigma, generator)
    if alpha == 0:
        return x.clone(), s
    return x + alpha * (x - gaussian_blur(x, kernel_size, s)), s


def upsample(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Pixel-space interpolation (released code: bicubic, align_corners=False; no clamping)."""
    if mode not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"upsample mode must be bicubic, bilinear or nearest, got {mode!r}")
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=tuple(size), mode=mode, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Sampling


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def euler_step(z: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Deterministic Euler step of the probability-flow ODE: z + (z - x0) / sigma * (sigma_next - sigma).

    Equals DDIM with eps rebuilt from ``x0`` (used for the DWT-guided steps)."""
    return x0 + (sigma_next / sigma) * (z - x0)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, sigma_next: float) -> torch.Tensor:
    """DDIM (eta = 0) step with the model's own eps: z' = x0 + sigma_next * eps (diffusers' default)."""
    return x0 if sigma_next == 0 else x0 + sigma_next * eps


def predict(denoise: Denoise, z: torch.Tensor, sigma: float, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a denoiser returning both, or x0_hat only (then eps_hat = (z - x0_hat) / sigma)."""
    out = denoise(z, sigma, t)
    if isinstance(out, tuple):
        return out
    return out, (z - out) / sigma


def sample(
    denoise: Denoise,
    shape: Sequence[int],
    levels: NoiseLevels,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
    decode: Codec = _identity,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Plain sampling from noise (the base image, and the "direct" high-resolution baseline).

    Starts at z = eps * sqrt(1 + sigma_0^2), i.e. x_T = eps for a VP model, as DDIM and SDXL's Euler do. The noise
    is drawn in float32 (the same draws for every ``dtype``) and the sampler runs in ``dtype``.
    """
    check_levels(levels)
    if len(shape) < 2 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape):
        raise ValueError(f"shape must be positive integer sizes, got {tuple(shape)}")
    like = torch.empty(0, device=device, dtype=dtype)
    z = _randn(tuple(shape), generator, like) * math.sqrt(1 + levels.sigmas[0] ** 2)
    for i, t in enumerate(levels.timesteps):
        x0, eps = predict(denoise, z, levels.sigmas[i], t)
        z = ddim_step(x0, eps, levels.sigmas[i + 1])
    return decode(z)


@dataclass
class StageInfo:
    """What one stage did: the sharpening sigma drawn and the number of guided steps."""

    size: tuple[int, int]
    sharpening_sigma: float
    guided_steps: int
    start_sigma: float
    steps: int


def diffusehigh_stage(
    previous: torch.Tensor,
    size: tuple[int, int],
    denoise: Denoise,
    levels: NoiseLevels,
    stage: StageConfig,
    generator: torch.Generator | None = None,
    encode: Codec = _identity,
    decode: Codec = _identity,
    clip_range: tuple[float, float] | None = None,
    guidance_factor: float = 1.0,
    size_multiple: int = 1,
    *,
    step_callback: StepCallback | None = None,
    _validated: bool = False,
) -> tuple[torch.Tensor, StageInfo]:
    """One DiffuseHigh stage from the previous stage's image (pixel space) to an image of ``size``.

    ``levels`` starts at the stage's noise level (``levels.sigmas[0]``); ``stage`` gives the upsampling,
    sharpening, DWT and re-noising settings (its ``noise_sigma``/``stage_steps`` are only used to build
    ``levels`` by the caller). ``clip_range`` clamps the guided image (pixel models: (-1, 1)).

    The first ``min(dwt_steps, len(levels))`` steps are guided: x0_g = decode(x0_hat) with the guide's LL band,
    then the Euler step with eps rebuilt from x0_g (released code). The other steps are plain DDIM with the
    model's eps (see the module docstring). ``renoise="fresh"`` (old research code) replaces the guided steps'
    Euler step by x0_g + sigma' * fresh noise; unguided steps stay deterministic.

    Every argument is checked before anything runs (:func:`check_stage_call`); ``size`` must not be smaller than
    ``previous`` on either side (the same size is a refinement pass) and must be a multiple of ``size_multiple``
    (the autoencoder's downsampling factor; 1 for pixel models). ``_validated`` is :func:`diffusehigh`'s: it has
    checked every stage's arguments before the first stage, so its loop skips the per-stage checks.

    ``step_callback(i, t, z)`` is called after each step with the step's index, timestep and new sample; a tensor it
    returns replaces the sample (diffusers' ``callback_on_step_end`` contract), None keeps it. Without a callback,
    or with one that returns None, the stage computes exactly what it computes without one.
    """
    if _validated:
        size = tuple(size)
    else:
        (size,) = check_stage_call(previous, [size], levels, stage, clip_range, guidance_factor, size_multiple)
    guide = upsample(previous, size, stage.upsample_mode)
    guide, used_sigma = sharpen(
        guide, stage.sharpening_alpha, stage.sharpening_kernel_size, stage.sharpening_sigma, generator
    )
    guided = min(stage.dwt_steps, len(levels))
    guide_ll = dwt_lib.lowpass(guide, stage.dwt_wave, stage.dwt_level, stage.dwt_mode) if guided else None
    z0 = encode(guide)
    z = z0 + levels.sigmas[0] * _randn(z0.shape, generator, z0)
    for i, t in enumerate(levels.timesteps):
        sigma, sigma_next = levels.sigmas[i], levels.sigmas[i + 1]
        x0, eps = predict(denoise, z, sigma, t)
        if i < guided:
            image = dwt_lib.lowpass_swap(
                decode(x0), guide_ll, stage.dwt_wave, stage.dwt_level, stage.dwt_mode, guidance_factor
            )
            if clip_range is not None:
                image = image.clamp(*clip_range)
            x0 = encode(image)
            if stage.renoise == "fresh" and sigma_next > 0:
                z = x0 + sigma_next * _randn(z.shape, generator, z)
            else:
                z = euler_step(z, x0, sigma, sigma_next)
        else:
            z = ddim_step(x0, eps, sigma_next)
        if step_callback is not None:
            replaced = step_callback(i, t, z)
            if replaced is not None:
                z = replaced
    info = StageInfo(tuple(size), used_sigma, guided, levels.sigmas[0], len(levels))
    return decode(z), info


def stage_sizes(
    base: tuple[int, int], scale_factors: Sequence[float], name: str = "scale_factors"
) -> list[tuple[int, int]]:
    """Target (H, W) of each stage: round(base * factor); factors must be positive and increase."""
    if not scale_factors or any(b <= a for a, b in itertools.pairwise(scale_factors)) or scale_factors[0] <= 0:
        raise ValueError(f"{name} must be positive and increasing, got {tuple(scale_factors)}")
    return [(round(base[0] * f), round(base[1] * f)) for f in scale_factors]


def diffusehigh(
    base_image: torch.Tensor,
    denoise: Denoise,
    levels: NoiseLevels,
    stage: StageConfig,
    generator: torch.Generator | None = None,
    encode: Codec = _identity,
    decode: Codec = _identity,
    clip_range: tuple[float, float] | None = None,
    size_multiple: int = 1,
) -> tuple[list[torch.Tensor], list[StageInfo]]:
    """The progressive pipeline: one :func:`diffusehigh_stage` per ``stage.scale_factors`` entry, each guided
    by the previous stage's output. Returns every stage's image (the last is the result) and its info.

    All stages' arguments and sizes are checked once, before the first stage runs."""
    validate_stage_config(stage)
    check_image(base_image, "base_image")
    sizes = stage_sizes(tuple(base_image.shape[-2:]), stage.scale_factors)
    sizes = _check_call(base_image, sizes, levels, clip_range, 1.0, size_multiple)
    images, infos, current = [], [], base_image
    for size in sizes:
        current, info = diffusehigh_stage(
            current, size, denoise, levels, stage, generator, encode, decode, clip_range, size_multiple=size_multiple,
            _validated=True,
        )  # fmt: skip
        images.append(current)
        infos.append(info)
    return images, infos
