"""Offline metrics for the procedural-data reproduction (research notes 7.3); images are in [0, 1].

* objects per image and the share with exactly one (repetition), largest-object area fraction (scale),
* PSNR of the area-downsampled output against its own low-resolution guide (structure),
* high-pass energy mean((x - G(x))^2) (detail), compared with images rendered natively at that size,
* band-resolved detail: the variance of each image in radial bands of its power spectrum (cycles/px), and the
  *stripe energy*, the oriented excess in the band of the data's stripes (what grain or isotropic noise lacks),
* the border mean (the background's brightness: the base-sample quality gate's colour check),
* the edge width of the largest object (sharp object boundaries: ~0.6 px in real renders at every size, the
  width grows with the factor under interpolation),
* KID in the features of a small CNN trained here on the same data (no Inception weights offline), on whole
  images and on random crops (the analogue of the patch/crop FID and KID used by the paper's protocol).
"""

from __future__ import annotations

import itertools
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


def _spectrum(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image power of the channel-mean image (mean removed), normalised so that it sums to the image's variance
    (Parseval), with the radial frequency and the orientation in [0, pi) of every FFT bin; cycles per pixel."""
    x = images.float().clamp(0, 1).mean(1)  # stripes are the same in all channels; grain is averaged down
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    h, w = x.shape[-2:]
    power = torch.fft.fft2(x.double()).abs() ** 2 / (h * w) ** 2
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64)[:, None], torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    radius = (fy**2 + fx**2).sqrt()
    angle = torch.atan2(fy, fx) % math.pi
    return power, radius, angle


def band_energy(images: torch.Tensor, edges: tuple[float, ...]) -> np.ndarray:
    """(N, len(edges) + 1) per-image variance in the radial frequency bands [0, e0), [e0, e1), ..., [e_last, inf)
    (cycles per pixel; the last band includes the spectrum's corners). The bands sum to the image's variance."""
    if any(b <= a for a, b in itertools.pairwise(edges)) or (edges and edges[0] <= 0):
        raise ValueError(f"band edges must be positive and increasing, got {edges}")
    power, radius, _ = _spectrum(images)
    bounds = (0.0, *edges, math.inf)
    out = [(power * ((radius >= lo) & (radius < hi))).sum((-2, -1)) for lo, hi in itertools.pairwise(bounds)]
    return torch.stack(out, 1).numpy()


def stripe_energy(images: torch.Tensor, band: tuple[float, float], sectors: int = 6) -> np.ndarray:
    """Per-image *oriented* energy in the radial band ``band`` (cycles/px), unbiased for isotropic noise.

    The band is cut into ``sectors`` orientation sectors over [0, pi) and into two interleaved sub-rings (FFT bins
    whose radius, in bins, rounds to an even or an odd number). The sector with the most energy is chosen on one
    sub-ring and its excess over the mean of the other sectors is measured on the other sub-ring, and vice versa;
    the two excesses are summed. Stripes of one orientation put their energy in one sector of both sub-rings (a
    finite disk spreads it over several bins); grain, noise and blotches spread theirs over all sectors, and since
    the sector is chosen on bins independent of those it is measured on, their expected contribution is zero
    whatever their power (choosing and measuring on the same bins would credit noise with the largest of its
    fluctuations).
    """
    if not 0 < band[0] < band[1] or sectors < 2:
        raise ValueError(f"need 0 < band[0] < band[1] and sectors >= 2, got {band}, {sectors}")
    power, radius, angle = _spectrum(images)
    ring = (radius >= band[0]) & (radius < band[1])
    parity = torch.round(radius * max(images.shape[-2:])).long() % 2
    sector = (angle / (math.pi / sectors)).long().clamp(max=sectors - 1)

    def energies(sub: int) -> torch.Tensor:  # (N, sectors)
        return torch.stack(
            [(power * (ring & (parity == sub) & (sector == k))).sum((-2, -1)) for k in range(sectors)], 1
        )

    def excess(chosen_on: torch.Tensor, measured_on: torch.Tensor) -> torch.Tensor:
        k = chosen_on.argmax(1, keepdim=True)
        top = measured_on.gather(1, k)[:, 0]
        return top - (measured_on.sum(1) - top) / (sectors - 1)

    even, odd = energies(0), energies(1)
    return (excess(even, odd) + excess(odd, even)).numpy()


def border_mean(images: torch.Tensor) -> np.ndarray:
    """Per-image mean of the outermost pixel ring over all channels (the background; real data: about 0.13)."""
    x = images.float().clamp(0, 1)
    ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    return ring.mean((1, 2)).numpy()


EDGE_DERIVATIVE_SIGMA = 1.0
"""Scale (px) of the Gaussian-derivative gradient that measures the edge (it averages grain out)."""
EDGE_LOCATE_SIGMA = 2.0
"""Scale (px) of the blur that locates the boundary (where the blurred object indicator crosses 0.35-0.65)."""


def _gradient_magnitude(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """|grad (G_sigma * x)| of (N, 1, H, W) in float64 (Gaussian-derivative filters, replicate padding)."""
    r = math.ceil(4 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    dg = -t / sigma**2 * g
    p = F.pad(x.double(), (r, r, r, r), mode="replicate")
    gx = F.conv2d(F.conv2d(p, dg.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    gy = F.conv2d(F.conv2d(p, g.view(1, 1, 1, -1)), dg.view(1, 1, -1, 1))
    return (gx**2 + gy**2).sqrt()


def edge_width(images: torch.Tensor, cfg: MetricsConfig) -> np.ndarray:
    """Per-image width (px) of the largest object's boundary; NaN where no object is found.

    The largest object is segmented as in :func:`count_objects`; its colour (median over its eroded interior) and
    the background's (median of the border) define an indicator u = projection of (x - background) on (object -
    background), 0 outside and 1 inside. Along the boundary (where u blurred with sigma = 2 px lies in 0.35-0.65)
    the mean Gaussian-derivative gradient |grad u| (sigma = 1 px) is g; a Gaussian edge of width w has g =
    1 / (sqrt(2 pi) sqrt(1 + w^2)), so w = sqrt(1 / (2 pi g^2) - 1), clipped at 0. Real renders: ~0.6 px at every
    size (a one-pixel anti-aliased edge); bicubic enlargement by k multiplies the width by about k. Per-pixel grain
    and the stripes hardly move it (the derivative scale averages them out); a ragged outline widens it.
    """
    x = images.float().clamp(0, 1)
    n = len(x)
    k = cfg.count_smoothing_px
    smooth = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1) if k > 1 else x
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values  # (N, C)
    mask = ((smooth - background[..., None, None]).norm(dim=1) > cfg.count_threshold).numpy()
    out = np.full(n, np.nan)
    locate = 2 * math.ceil(3 * EDGE_LOCATE_SIGMA) + 1
    from .core import gaussian_blur

    for i in range(n):
        labels, count = ndimage.label(mask[i])
        if not count:
            continue
        areas = np.bincount(labels.ravel())[1:]
        obj = labels == 1 + int(areas.argmax())
        inner = ndimage.binary_erosion(obj, iterations=max(1, round(0.1 * math.sqrt(obj.sum() / math.pi))))
        if inner.sum() < 4:
            continue
        colour = x[i][:, torch.from_numpy(inner)].median(dim=1).values
        direction = colour - background[i]
        contrast = float(direction.norm())
        if contrast < cfg.count_threshold:
            continue
        u = ((x[i] - background[i][:, None, None]) * direction[:, None, None]).sum(0) / contrast**2
        located = gaussian_blur(u[None, None].double(), locate, EDGE_LOCATE_SIGMA)[0, 0]
        boundary = ((located > 0.35) & (located < 0.65)).numpy()
        if boundary.sum() < 4:
            continue
        g = float(_gradient_magnitude(u[None, None], EDGE_DERIVATIVE_SIGMA)[0, 0].numpy()[boundary].mean())
        out[i] = math.sqrt(max(0.0, 1 / (2 * math.pi * g**2) - EDGE_DERIVATIVE_SIGMA**2))
    return out


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
