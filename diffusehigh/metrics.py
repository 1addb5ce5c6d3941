"""Offline metrics for the procedural-data reproduction (research notes 7.3); images are in [0, 1].

* objects per image and the share with exactly one (repetition), largest-object area fraction (scale),
* PSNR of the area-downsampled output against its own low-resolution guide (structure),
* high-pass energy mean((x - G(x))^2) (detail), compared with images rendered natively at that size,
* KID in the features of a small CNN trained here on the same data (no Inception weights offline), on whole
  images and on random crops (the analogue of the patch/crop FID and KID used by the paper's protocol).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from common.errors import check_finite
from common.runtime import progress

from . import data as data_lib
from .config import DataConfig, MetricsConfig


def count_objects(images: torch.Tensor, cfg: MetricsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Objects per image and the largest object's area fraction.

    Box-smooth, take the median border colour as background, mark pixels whose colour distance from it exceeds
    ``count_threshold``, and count 4-connected components of at least ``count_min_area_px`` pixels.
    """
    x = images.float().clamp(0, 1)
    k = cfg.count_smoothing_px
    smooth = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1) if k > 1 else x
    border = torch.cat([smooth[..., 0, :], smooth[..., -1, :], smooth[..., :, 0], smooth[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    mask = ((smooth - background).norm(dim=1) > cfg.count_threshold).numpy()
    counts, largest = [], []
    for m in mask:
        labels, n = ndimage.label(m)
        areas = np.bincount(labels.ravel())[1:] if n else np.zeros(0)
        big = areas[areas >= cfg.count_min_area_px]
        counts.append(len(big))
        largest.append(big.max() / m.size if len(big) else 0.0)
    return np.asarray(counts, dtype=float), np.asarray(largest, dtype=float)


def lr_psnr(high: torch.Tensor, low: torch.Tensor) -> np.ndarray:
    """Per-image PSNR (dB, peak 1) between ``high`` area-downsampled to ``low``'s size and ``low``."""
    down = F.interpolate(high.float().clamp(0, 1), size=low.shape[-2:], mode="area")
    mse = ((down - low.float().clamp(0, 1)) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(1 / mse)).numpy()


def highpass_energy(images: torch.Tensor, sigma: float) -> np.ndarray:
    """Per-image mean((x - G_sigma(x))^2): the energy above the blur's cut-off."""
    from .core import gaussian_blur

    size = 2 * math.ceil(3 * sigma) + 1
    x = images.float().clamp(0, 1)
    return ((x - gaussian_blur(x, size, sigma)) ** 2).flatten(1).mean(1).numpy()


class FeatureNet(torch.nn.Module):
    """A small CNN whose pooled activations are the KID features; trained here to regress each disk's centre,
    radius and stripe orientation from images rendered at several resolutions (resolution-agnostic pooling)."""

    def __init__(self, width: int = 32, grid: int = 2):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width // 2, width, width * 2, width * 2):
            layers += [
                torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                torch.nn.GroupNorm(4, c_out),
                torch.nn.SiLU(),
            ]
            c_in = c_out
        self.body = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(grid), torch.nn.Flatten())
        self.head = torch.nn.Linear(c_in * grid * grid, 5)
        self.dim = c_in * grid * grid

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _render_with_targets(n: int, resolution: int, cfg: DataConfig, g: torch.Generator):
    """Images and regression targets (cx, cy, r as fractions; cos 2theta, sin 2theta of the stripes)."""
    images, p = data_lib.render_disks(n, resolution, cfg, g, return_params=True)
    theta = p["theta"]
    return images, torch.stack([p["cx"], p["cy"], p["radius"], torch.cos(2 * theta), torch.sin(2 * theta)], dim=1)


def train_feature_net(cfg: DataConfig, steps: int, resolutions: tuple[int, ...], seed: int = 0) -> dict:
    """Train :class:`FeatureNet` on fresh renders (cycling through ``resolutions``); returns its state dict."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 99)
    net = FeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for step in progress(range(steps), desc="train KID feature CNN"):
        res = resolutions[step % len(resolutions)]
        images, targets = _render_with_targets(32, res, cfg, g)
        loss = F.mse_loss(net(images), targets)
        check_finite(loss, step=step, where=f"diffusehigh KID feature-net training, seed {seed}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@torch.no_grad()
def features(net: FeatureNet, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    net.eval()
    return torch.cat([net.features(images[i : i + batch].float().clamp(0, 1)) for i in range(0, len(images), batch)])


def random_crops(images: torch.Tensor, size: int, per_image: int, seed: int) -> torch.Tensor:
    """``per_image`` random ``size`` x ``size`` crops of every image (seeded)."""
    g = torch.Generator().manual_seed(seed)
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the images ({h}x{w})")
    crops = []
    for img in images:
        ys = torch.randint(0, h - size + 1, (per_image,), generator=g)
        xs = torch.randint(0, w - size + 1, (per_image,), generator=g)
        crops += [img[:, y : y + size, x : x + size] for y, x in zip(ys.tolist(), xs.tolist(), strict=True)]
    return torch.stack(crops)


def kid(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018)."""
    a, b = feats_a.double(), feats_b.double()
    d = a.shape[1]
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError("KID needs at least two samples on each side")
    k_aa = (a @ a.T / d + 1) ** 3
    k_bb = (b @ b.T / d + 1) ** 3
    k_ab = (a @ b.T / d + 1) ** 3
    term_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    term_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(term_a + term_b - 2 * k_ab.mean())
