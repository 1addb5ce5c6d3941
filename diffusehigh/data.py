"""Procedural images that can be rendered natively at any resolution (research notes 7.3).

Each image is a flat dark background with ONE anti-aliased disk whose interior carries stripes of a fixed
*pixel* period, plus per-pixel Gaussian grain everywhere. The disk's size scales with the image, the texture
and grain do not, so a 128x128 rendering has the same layout as a 32x32 one but more fine detail: real
high-resolution references exist for every target size, which is what the detail and KID metrics need.
"""

from __future__ import annotations

import math

import torch

from .config import DataConfig


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) hue/saturation/value in [0, 1] -> (N, 3) RGB in [0, 1]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def render_disks(
    n: int, resolution: int, cfg: DataConfig, generator: torch.Generator, return_params: bool = False
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` images of shape (3, resolution, resolution) in [0, 1], drawn with ``generator``.

    Disk radius and centre are fractions of the image size (``cfg.radius_range``, ``cfg.center_range``);
    the stripe period (``cfg.stripe_period_px``) and grain (``cfg.grain_sigma``) are in pixels at every
    resolution. Coverage is anti-aliased over one pixel at the disk's edge. With ``return_params`` also the
    drawn disk centre and radius (fractions of the size) and stripe angle theta.
    """
    if n < 0 or resolution < 4:
        raise ValueError(f"need n >= 0 and resolution >= 4, got n={n}, resolution={resolution}")

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    background = uniform(0.0, 0.25, n, 3)
    colour = _hsv_to_rgb(uniform(0.0, 1.0, n), uniform(0.6, 1.0, n), uniform(0.65, 0.95, n))
    radius = uniform(*cfg.radius_range, n) * resolution
    lo, hi = 0.5 - cfg.center_range / 2, 0.5 + cfg.center_range / 2
    cx, cy = uniform(lo, hi, n) * resolution, uniform(lo, hi, n) * resolution
    theta = uniform(0.0, math.pi, n)
    phase = uniform(0.0, 2 * math.pi, n)

    coords = torch.arange(resolution, dtype=torch.float32) + 0.5
    yy, xx = coords[None, :, None], coords[None, None, :]
    dist = torch.sqrt((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2)
    coverage = torch.clamp(radius[:, None, None] - dist + 0.5, 0.0, 1.0)[:, None]
    along = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]
    stripes = cfg.stripe_contrast * torch.sin(2 * math.pi * along / cfg.stripe_period_px + phase[:, None, None])
    disk = colour[:, :, None, None] + stripes[:, None]
    image = background[:, :, None, None] * (1 - coverage) + disk * coverage
    image = image + cfg.grain_sigma * torch.randn(image.shape, generator=generator)
    image = image.clamp(0.0, 1.0)
    if return_params:
        params = {"cx": cx / resolution, "cy": cy / resolution, "radius": radius / resolution, "theta": theta}
        return image, params
    return image


def render_set(n: int, resolution: int, cfg: DataConfig, seed: int, chunk: int = 256) -> torch.Tensor:
    """A reproducible set of ``n`` images rendered in chunks (bounded memory at large resolutions)."""
    g = torch.Generator().manual_seed(seed)
    parts = [render_disks(min(chunk, n - i), resolution, cfg, g) for i in range(0, n, chunk)]
    return torch.cat(parts) if parts else torch.empty(0, 3, resolution, resolution)


def reference_seed(cfg: DataConfig, resolution: int) -> int:
    """Seed of the reference set at ``resolution``: disjoint from the training set's seed."""
    return cfg.seed + 7919 * resolution + 1
