"""Data as tensors: MNIST-1D generated offline (``mnist1d.make_dataset``), or CIFAR-10 from a user path.

Both fit in memory, so training draws batches by index (and augments CIFAR-10 batches with tensor ops),
which keeps the small-model loop fast on a CPU and the whole pipeline on the GPU where there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.data import cifar10

from .config import DataConfig

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)  # the official code's values


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: bool = False
    pad_value: tuple[float, ...] | None = None
    """Per-channel value of the crop padding (in the normalised inputs); None = 0."""

    def to(self, device: torch.device | str) -> Data:
        return Data(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
                    num_classes=self.num_classes, augment=self.augment, pad_value=self.pad_value)  # fmt: skip

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def mnist1d(num_samples: int = 5000, seed: int = 42) -> Data:
    """MNIST-1D generated procedurally (never downloaded): 80 % train / 20 % test, length-40 signals.

    ``make_dataset`` reseeds NumPy's and Python's global generators; their state is restored afterwards.
    """
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    as_x = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return Data(as_x(d["x"]), as_y(d["y"]), as_x(d["x_test"]), as_y(d["y_test"]), num_classes=10)


def _cifar_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.asarray(dataset.data)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)


def cifar10_tensors(root: str, augment: bool = True, crop_fill: str = "mean") -> Data:
    """CIFAR-10 from ``root`` (holding ``cifar-10-batches-py/``), normalised as in the official code.

    ``crop_fill``: what the random crop's padding holds. ``"black"``: black pixels, normalised like the image
    (``-mean / std`` per channel), which is what torchvision's ``RandomCrop(32, padding=4)`` before ``Normalize``
    gives in the official code; ``"mean"``: 0 in the normalised inputs (the mean colour).
    """
    if crop_fill not in ("mean", "black"):
        raise ValueError(f"crop_fill must be 'mean' or 'black', got {crop_fill!r}")
    x_train, y_train = _cifar_tensors(cifar10(root, train=True))
    x_test, y_test = _cifar_tensors(cifar10(root, train=False))
    pad = tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)) if crop_fill == "black" else None
    return Data(x_train, y_train, x_test, y_test, num_classes=10, augment=augment, pad_value=pad)


def load_data(cfg: DataConfig) -> Data:
    if cfg.dataset == "mnist1d":
        return mnist1d(cfg.num_samples, cfg.seed)
    if cfg.dataset == "cifar10":
        return cifar10_tensors(cfg.root, cfg.augment, cfg.crop_fill)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def augment_images(
    x: torch.Tensor, gen: torch.Generator, padding: int = 4, pad_value: tuple[float, ...] | None = None
) -> torch.Tensor:
    """RandomCrop(size, padding) + RandomHorizontalFlip on a batch ``(B, C, H, W)``, as tensor ops.

    The padding is 0, or ``pad_value[c]`` in channel c (e.g. a black pixel after normalisation)."""
    b, c, h, w = x.shape
    if pad_value is None:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
    else:
        fill = torch.tensor(pad_value, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        padded = fill.expand(b, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding : padding + h, padding : padding + w] = x
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=gen.device).to(x.device)
    rows = (dy.view(b, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(b, c, h, w + 2 * padding)
    cols = (dx.view(b, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(b, c, h, w)
    out = padded.gather(2, rows).gather(3, cols)
    flip = torch.rand(b, generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)
