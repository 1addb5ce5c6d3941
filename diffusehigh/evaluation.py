"""The paper preset's DemoFusion-style evaluation: FID and KID on images resized to the evaluation size (``_r``) and on
random crops (``_c``), the Inception Score on both, and the CLIP score of each image with its prompt (research notes
3.1 and 7.6).

The metrics are torchmetrics' (``FrechetInceptionDistance``, ``KernelInceptionDistance``, ``InceptionScore`` and the
functional ``clip_score``); the Inception network is torch-fidelity's FID Inception-v3 (the TensorFlow 2015-12-05
graph converted), loaded from a local weights file; CLIP is a transformers CLIP model loaded from a local directory.
Nothing is downloaded. Both libraries form the optional extra ``[eval]`` (``pip install -e ".[eval]"``); without
them, asking for a metric raises :class:`MissingEvalExtra` (a user error naming the extra).

Every image's features are computed once, when it is made (Inception pool features and logits of its resized version
and of its crops, and its CLIP score), and kept under the image's index. The metrics are then computed from the
features in index order, with torchmetrics' own code (its feature-extractor hook is given the features), and with the
random subsets of KID and IS drawn from a fixed seed: the numbers do not depend on how the images were split across
processes (``common.distributed``) nor on the global random state.

Choices the notes do not fix (the paper's protocol text could not be read; see the card's deviations): images are
evaluated as 8-bit RGB (what a PNG holds); resizing is PIL's bicubic; reference images are resized on their shorter
side and centre-cropped; crops are resized to the evaluation size before the Inception network (whose input is 299);
a reference image smaller than the crop is first enlarged on its shorter side to the crop size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, require_path

EXTRA = "eval"
INSTALL_HINT = 'pip install -e ".[eval]"'
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CROP_SEED = 20_240_618
"""Base seed of the crop positions; image ``i`` of a set draws its crops from ``CROP_SEED + offset + i``."""
REAL_CROP_OFFSET = 1_000_000
"""Offset of the reference images' crop seeds (so a reference and a generated image of one index crop differently)."""
METRIC_SEED = 0
"""Seed of KID's random subsets and of the IS splits' permutation."""

FID_R, KID_R, IS_R = "FID_r", "KID_r x1e3", "IS_r"
FID_C, KID_C, IS_C = "FID_c", "KID_c x1e3", "IS_c"
CLIP = "CLIP score"
METRICS = (FID_R, KID_R, IS_R, FID_C, KID_C, IS_C, CLIP)
"""The columns of the evaluation tables, in order (KID scaled by 1e3, as in the pixel presets' tables)."""


class MissingEvalExtra(UserError, ImportError):
    """torchmetrics or torch-fidelity is not installed (the optional extra ``[eval]``)."""


def require_extra() -> None:
    """Raise :class:`MissingEvalExtra`, naming the extra, unless torchmetrics and torch-fidelity import."""
    missing = []
    for module in ("torchmetrics", "torch_fidelity"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.replace("_", "-"))
    if missing:
        raise MissingEvalExtra(
            f"the FID/KID/IS/CLIP evaluation needs {' and '.join(missing)}, the optional extra [{EXTRA}]: "
            f"{INSTALL_HINT} (or leave inception_path and clip_path empty)"
        )


# ----------------------------------------------------------------------------------------------------
# Images: 8-bit, resized, cropped


def to_uint8(images01: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) floats in [0, 1] -> uint8 on the CPU, rounded as an 8-bit PNG stores them."""
    return (images01.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def _pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _tensor(pil_image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil_image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (3, H, W) uint8 image -> (3, size, size): the shorter side resized to ``size`` (PIL bicubic), then the
    centre crop (a square image is just resized)."""
    from PIL import Image

    h, w = image.shape[-2:]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = _pil(image).resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return _tensor(resized.crop((left, top, left + size, top + size)))


def enlarge_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """``image`` with its shorter side enlarged to ``size`` (PIL bicubic) when it is shorter; else unchanged."""
    from PIL import Image

    h, w = image.shape[-2:]
    if min(h, w) >= size:
        return image
    scale = size / min(h, w)
    return _tensor(_pil(image).resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC))


def crop_boxes(height: int, width: int, size: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` (top, left) corners of uniformly random ``size`` x ``size`` crops, from a generator seeded ``seed``."""
    if size > min(height, width):
        raise ValueError(f"crop size {size} exceeds the image ({height}x{width})")
    g = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, height - size + 1, (count,), generator=g).tolist()
    lefts = torch.randint(0, width - size + 1, (count,), generator=g).tolist()
    return list(zip(tops, lefts, strict=True))


def random_crops(image: torch.Tensor, size: int, count: int, seed: int) -> torch.Tensor:
    """(count, 3, size, size) random crops of one (3, H, W) image (positions from ``seed``)."""
    boxes = crop_boxes(image.shape[-2], image.shape[-1], size, count, seed)
    return torch.stack([image[:, top : top + size, left : left + size] for top, left in boxes])


def read_image(path: Path) -> torch.Tensor:
    """An image file as (3, H, W) uint8 RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return _tensor(im)


def reference_files(path: str) -> list[Path]:
    """The image files of ``reference_images_path``, sorted by name (the order fixes their indices)."""
    hint = "Pass --set reference_images_path=/a/folder/of/images, or leave it empty (no FID/KID then)."
    root = require_path(path, "reference_images_path (a directory of real images)", kind="dir", hint=hint)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UserError(f"reference_images_path: {root} holds {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                        "FID and KID need at least 2")  # fmt: skip
    return files


# ----------------------------------------------------------------------------------------------------
# Networks from local paths


def inception_weights_file(path: str) -> Path:
    """``inception_path`` as a weights file: the file itself, or the one ``.pth`` in the directory."""
    hint = ("Pass --set inception_path=/path/weights-inception-2015-12-05-6726825d.pth (torch-fidelity's FID "
            "Inception), or leave it empty.")  # fmt: skip
    p = require_path(path, "inception_path (the FID Inception-v3 weights)", hint=hint)
    if p.is_dir():
        files = sorted(p.glob("*.pth"))
        if len(files) != 1:
            raise UserError(f"inception_path: {p} holds {len(files)} .pth files; name the weights file itself")
        p = files[0]
    return p


def load_inception(path: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """torch-fidelity's FID Inception-v3 from a local weights file, giving the 2048-d pool features and the
    1008 unbiased logits (what FID/KID and IS read)."""
    require_extra()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    file = inception_weights_file(path)
    try:
        net = FeatureExtractorInceptionV3(
            name="inception-v3-compat",
            features_list=["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(file),
        )
    except (RuntimeError, KeyError, OSError) as err:  # a file that is not that network's state dict
        raise UserError(f"inception_path: {file} is not torch-fidelity's FID Inception-v3 weights ({err})") from err
    return net.to(device)


class _TensorFeatures(torch.nn.Module):
    """A transformers CLIP model whose ``get_image_features`` / ``get_text_features`` return the projected embeddings as
    tensors: torchmetrics' CLIP score expects tensors, and transformers 5 returns an output object there."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    @staticmethod
    def _embeds(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._embeds(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._embeds(self.model.get_text_features(*args, **kwargs))


def clip_dir(path: str) -> Path:
    """``clip_path`` checked: a directory with a ``config.json`` (a model saved with ``save_pretrained``)."""
    hint = "Pass --set clip_path=/a/clip-model/directory (transformers layout), or leave it empty."
    root = require_path(path, "clip_path (a CLIP model directory)", kind="dir", hint=hint)
    if not (root / "config.json").exists():
        raise UserError(f"clip_path: {root} has no config.json (a CLIP model saved with save_pretrained)")
    return root


def load_clip(path: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, object]:
    """(model, processor) of a CLIP model in transformers layout from a local directory (never the hub)."""
    require_extra()
    from transformers import CLIPModel, CLIPProcessor

    root = clip_dir(path)
    model = CLIPModel.from_pretrained(str(root), local_files_only=True).to(device).eval()
    processor = CLIPProcessor.from_pretrained(str(root), local_files_only=True)
    return _TensorFeatures(model), processor


# ----------------------------------------------------------------------------------------------------
# Per-image features


@dataclasses.dataclass
class ImageFeatures:
    """What one image contributes to the metrics (CPU tensors): Inception pool features (2048) and logits (1008) of the
    resized image (``_r``) and of each crop (``_c``, one row per crop), and the CLIP score with its prompt."""

    pool_r: torch.Tensor | None = None
    logits_r: torch.Tensor | None = None
    pool_c: torch.Tensor | None = None
    logits_c: torch.Tensor | None = None
    clip: float | None = None


class FeatureExtractor:
    """Computes :class:`ImageFeatures` of generated and reference images with the networks given (either may be
    None: no Inception, no FID/KID/IS; no CLIP, no CLIP score)."""

    def __init__(self, inception: torch.nn.Module | None, clip: tuple | None, resize: int, crop_size: int,
                 crops_per_image: int, device: torch.device | str = "cpu"):  # fmt: skip
        self.inception, self.clip = inception, clip
        self.resize, self.crop_size, self.crops = resize, crop_size, crops_per_image
        self.device = torch.device(device)

    @torch.inference_mode()
    def _inception(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.inception(images_u8.to(self.device))
        return pool.float().cpu(), logits.float().cpu()

    def _inception_features(self, image: torch.Tensor, crop_seed: int) -> dict:
        out = {}
        out["pool_r"], out["logits_r"] = self._inception(resize_square(image, self.resize)[None])
        if self.crops and min(image.shape[-2:]) >= self.crop_size:
            crops = random_crops(image, self.crop_size, self.crops, crop_seed)
            crops = torch.stack([resize_square(c, self.resize) for c in crops])
            out["pool_c"], out["logits_c"] = self._inception(crops)
        return out

    def generated(self, index: int, image01: torch.Tensor, prompt: str) -> ImageFeatures:
        """Features of generated image ``index`` ((3, H, W) or (1, 3, H, W) in [0, 1]) made for ``prompt``."""
        image = to_uint8(image01.reshape(-1, *image01.shape[-3:])[0:1])[0]
        feats = ImageFeatures()
        if self.inception is not None:
            feats = ImageFeatures(**self._inception_features(image, CROP_SEED + index))
        if self.clip is not None:
            feats.clip = clip_score(image, prompt, self.clip)
        return feats

    def reference(self, index: int, image_u8: torch.Tensor) -> ImageFeatures:
        """Features of reference image ``index`` ((3, H, W) uint8); too small for a crop: enlarged first."""
        if self.inception is None:
            return ImageFeatures()
        image = enlarge_to(image_u8, self.crop_size) if self.crops else image_u8
        return ImageFeatures(**self._inception_features(image, CROP_SEED + REAL_CROP_OFFSET + index))


def clip_score(image_u8: torch.Tensor, prompt: str, clip: tuple) -> float:
    """torchmetrics' CLIP score of one (3, H, W) uint8 image with its prompt: max(100 cos(E_I, E_C), 0)."""
    require_extra()
    from torchmetrics.functional.multimodal import clip_score as tm_clip_score

    model, processor = clip
    with torch.inference_mode():
        return float(tm_clip_score(image_u8, prompt, model_name_or_path=lambda: (model, processor)))


# ----------------------------------------------------------------------------------------------------
# Metrics from features


@contextlib.contextmanager
def _quiet_and_seeded(seed: int):
    """torchmetrics' notes that KID/IS keep every feature (they are small here) and that a single split has no std
    are silenced; the random subsets come from ``seed`` without touching the caller's random state."""
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message=r"Metric `.*` will save all extracted features")
        warnings.filterwarnings("ignore", message=r"std\(\): degrees of freedom")
        torch.manual_seed(seed)
        yield


class _Precomputed(torch.nn.Module):
    """torchmetrics' custom feature-extractor hook, given features: the 'images' it is passed are features already."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(fake: torch.Tensor, real: torch.Tensor) -> float:
    """torchmetrics' FID of two feature sets (N, d), in float64."""
    require_extra()
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(fake.shape[1]), sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_distance(fake: torch.Tensor, real: torch.Tensor, subsets: int, subset_size: int,
                    seed: int = METRIC_SEED) -> tuple[float, float]:  # fmt: skip
    """torchmetrics' KID (mean, std over ``subsets`` random subsets of ``min(subset_size, len(fake), len(real))``),
    with the subsets drawn from ``seed``."""
    require_extra()
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(fake), len(real))
    with _quiet_and_seeded(seed):
        metric = KernelInceptionDistance(feature=_Precomputed(fake.shape[1]), subsets=subsets, subset_size=size,
                                         sync_on_compute=False)  # fmt: skip
        metric.update(real.double(), real=True)
        metric.update(fake.double(), real=False)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, splits: int, seed: int = METRIC_SEED) -> tuple[float, float]:
    """torchmetrics' Inception Score (mean, std over ``splits``; at most one split per image) of unbiased logits, with
    the images' permutation drawn from ``seed``."""
    require_extra()
    from torchmetrics.image.inception import InceptionScore

    with _quiet_and_seeded(seed):
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=max(1, min(splits, len(logits))),
                                sync_on_compute=False)  # fmt: skip
        metric.update(logits.double())
        mean, std = metric.compute()
    return float(mean), float(std)


def _stack(feats: Iterable[ImageFeatures], field: str) -> torch.Tensor | None:
    rows = [getattr(f, field) for f in feats if getattr(f, field) is not None]
    return torch.cat(rows) if rows else None


def compute_metrics(fake: Sequence[ImageFeatures], real: Sequence[ImageFeatures] | None, *, kid_subsets: int,
                    kid_subset_size: int, is_splits: int) -> dict[str, float]:  # fmt: skip
    """The metrics of one generated set (features in image order) against the references (None: no FID/KID).

    Returns what the features allow, by name (:data:`METRICS`): IS needs Inception, FID/KID also references, CLIP
    the CLIP scores (the mean over images); the ``_c`` metrics need crops. KID is scaled by 1e3."""
    out: dict[str, float] = {}
    for suffix, fid_name, kid_name, is_name in (("r", FID_R, KID_R, IS_R), ("c", FID_C, KID_C, IS_C)):
        pool, logits = _stack(fake, f"pool_{suffix}"), _stack(fake, f"logits_{suffix}")
        if logits is not None and len(logits) >= 2:
            out[is_name] = inception_score(logits, is_splits)[0]
        ref = _stack(real, f"pool_{suffix}") if real else None
        if pool is not None and ref is not None and len(pool) >= 2 and len(ref) >= 2:
            out[fid_name] = frechet_distance(pool, ref)
            out[kid_name] = 1e3 * kernel_distance(pool, ref, kid_subsets, kid_subset_size)[0]
    scores = [f.clip for f in fake if f.clip is not None]
    if scores:
        out[CLIP] = float(np.mean(scores))
    return {name: out[name] for name in METRICS if name in out and math.isfinite(out[name])}


def extractor_from_config(cfg, device: torch.device | str) -> FeatureExtractor | None:
    """The paper preset's extractor from ``cfg`` (a DiffuseHighConfig), or None when no metric network is given."""
    if not (cfg.inception_path or cfg.clip_path):
        return None
    inception = load_inception(cfg.inception_path, device) if cfg.inception_path else None
    clip = load_clip(cfg.clip_path, device) if cfg.clip_path else None
    mt = cfg.metrics
    return FeatureExtractor(inception, clip, mt.fid_resize, mt.patch_size, mt.crops_per_image, device)


def reference_features(extractor: FeatureExtractor, files: Sequence[Path], indices: Iterable[int],
                       progress: Callable = lambda x, **_: x) -> dict[int, ImageFeatures]:  # fmt: skip
    """Features of the reference images at ``indices`` (this process's share), by index."""
    return {i: extractor.reference(i, read_image(files[i])) for i in progress(list(indices), desc="references")}
