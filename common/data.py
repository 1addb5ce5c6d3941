"""Datasets: Fashion-MNIST and sklearn digits offline; CIFAR-10 and ImageFolder from user-given roots.

Nothing here downloads unless the caller passes ``download=True``. A dataset that cannot be found
raises :class:`DatasetNotFoundError` whose message says what to put where.

Fashion-MNIST is looked up in the ``root`` argument if one is given (and only there), else in order in
``$FASHION_MNIST_DIR``, ``<data_root>/fashion-mnist`` (where ``make data`` extracts Debian's
``dataset-fashion-mnist`` without root) and ``/usr/share/datasets/fashion-mnist`` (where
``apt-get install dataset-fashion-mnist`` puts it).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import UserError
from .runtime import data_root, generator

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is not where it was looked for; the message lists the places and how to fill one."""


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files, optionally gzipped)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a uint8 array of its stated shape."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            raw = f.read()
    else:
        raw = path.read_bytes()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_candidates(root: str | Path | None = None) -> list[Path]:
    """The directories searched for Fashion-MNIST, in order; an explicit ``root`` is the only one searched."""
    if root:
        return [Path(root)]
    candidates = []
    if os.environ.get("FASHION_MNIST_DIR"):
        candidates.append(Path(os.environ["FASHION_MNIST_DIR"]))
    candidates += [data_root() / "fashion-mnist", SYSTEM_FASHION_MNIST]
    return candidates


def find_fashion_mnist(root: str | Path | None = None) -> Path:
    """The first candidate directory holding all four Fashion-MNIST IDX files."""
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    candidates = fashion_mnist_candidates(root)
    for directory in candidates:
        if all(_idx_file(directory, stem) for stem in stems):
            return directory
    searched = "\n".join(f"  - {c}" for c in candidates)
    raise DatasetNotFoundError(
        "Fashion-MNIST not found. Looked for " + ", ".join(f"{s}[.gz]" for s in stems) + f" in:\n{searched}\n"
        "Fix: run `make data` (extracts Debian's dataset-fashion-mnist into data/fashion-mnist, no root needed), "
        "or `apt-get install dataset-fashion-mnist`, or point FASHION_MNIST_DIR (or the config's data root) at a "
        "directory with the four standard IDX files."
    )


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 ``(N, 28, 28)`` and labels as int64 ``(N,)`` for ``split`` in {train, test}."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {list(FASHION_MNIST_FILES)}, got {split!r}")
    directory = find_fashion_mnist(root)
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    images = read_idx(_idx_file(directory, image_stem))
    labels = read_idx(_idx_file(directory, label_stem))
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} images but {len(labels)} labels in split {split!r}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_float_images(
    images: torch.Tensor,
    *,
    size: int | None = None,
    channels: int = 1,
    normalize: bool = True,
    mean: float = FASHION_MNIST_MEAN,
    std: float = FASHION_MNIST_STD,
) -> torch.Tensor:
    """uint8 ``(N, H, W)`` → float ``(N, C, size, size)``: scaled to [0, 1], zero-padded, repeated, normalised.

    Padding (not resizing) keeps the pixels exact, e.g. 28 → 32 for CIFAR-style networks.
    """
    x = images.float().div_(255.0).unsqueeze(1)
    if size is not None:
        h, w = x.shape[-2:]
        if size < max(h, w):
            raise ValueError(f"cannot pad {h}x{w} images down to {size}")
        top, left = (size - h) // 2, (size - w) // 2
        x = torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top))
    if normalize:
        x = (x - mean) / std  # padding becomes the normalised value of black, as for the image border
    return x.expand(-1, channels, -1, -1).contiguous() if channels != 1 else x


def fashion_mnist(
    split: str = "train",
    *,
    root: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    size: int | None = None,
    channels: int = 1,
    normalize: bool = True,
) -> TensorDataset:
    """Fashion-MNIST as an in-memory ``TensorDataset`` of float images, optionally a stratified subset of ``n``."""
    images, labels = load_fashion_mnist(split, root)
    if n is not None:
        idx = stratified_subset(labels, n, seed=seed)
        images, labels = images[idx], labels[idx]
    return TensorDataset(to_float_images(images, size=size, channels=channels, normalize=normalize), labels)


# ----------------------------------------------------------------------------------------------------
# sklearn digits: 1,797 8x8 images, ships with scikit-learn (for tests that must take seconds)


def digits(normalize: bool = True) -> TensorDataset:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` floats (values 0..16 scaled to [0, 1]) and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if normalize:
        x = (x - x.mean()) / x.std()
    return TensorDataset(x, torch.tensor(bunch.target, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------------
# Subsets and splits


def stratified_subset(labels: torch.Tensor | Sequence[int], n: int, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded subset of size ``n`` with classes in the same proportions as ``labels``.

    Each class gets ``floor(n * share)`` items and the remainders go to the classes with the largest
    fractional parts, so the total is exactly ``n``. The result is sorted (stable order for loaders).
    """
    labels = torch.as_tensor(labels)
    if not 0 < n <= len(labels):
        raise ValueError(f"subset size must be in 1..{len(labels)}, got {n}")
    classes, counts = labels.unique(return_counts=True)
    quota = counts.double() * n / len(labels)
    take = quota.floor().long()
    remainder = n - int(take.sum())
    if remainder:
        order = torch.argsort(quota - take, descending=True, stable=True)
        take[order[:remainder]] += 1
    g = generator(seed)
    chosen = []
    for cls, k in zip(classes, take, strict=True):
        members = (labels == cls).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[: int(k)]])
    return torch.cat(chosen).sort().values


def stratified_split(
    labels: torch.Tensor | Sequence[int], n_first: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split all indices into a stratified part of size ``n_first`` and the rest (e.g. train / validation)."""
    labels = torch.as_tensor(labels)
    first = stratified_subset(labels, n_first, seed=seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[first] = False
    return first, mask.nonzero().flatten()


def loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, **kwargs) -> DataLoader:
    """A DataLoader whose shuffling is seeded (same order for the same seed) and single-process by default."""
    kwargs.setdefault("num_workers", 0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator(seed), **kwargs)


# ----------------------------------------------------------------------------------------------------
# Paper-scale datasets from user-given roots


def _require_dir(root: str | Path | None, name: str, expected: str, option: str) -> Path:
    if not root:
        raise DatasetNotFoundError(
            f"{name}: no {option} given. Put {expected} in a directory and pass --set {option}=/path"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"{name}: {option}={str(path)!r} is not a directory. Expected {expected}.")
    return path


def cifar10(
    root: str | Path | None, train: bool = True, transform=None, download: bool = False, *, option: str = "data.root"
) -> Dataset:
    """torchvision's CIFAR-10 from ``root`` (the folder holding ``cifar-10-batches-py/``); no download by default.

    ``option`` is the config key the root came from, named in the error when it is missing."""
    from torchvision.datasets import CIFAR10

    expected = "the extracted python version of CIFAR-10 (a folder `cifar-10-batches-py/` with data_batch_1..5)"
    if download:
        Path(root).mkdir(parents=True, exist_ok=True)
    path = _require_dir(root, "CIFAR-10", expected, option)
    if not download and not (path / "cifar-10-batches-py").is_dir():
        raise DatasetNotFoundError(
            f"CIFAR-10: {option}={str(path)!r} has no cifar-10-batches-py/. Expected {expected}."
        )
    return CIFAR10(root=str(path), train=train, transform=transform, download=download)


def image_folder(
    root: str | Path | None, split: str = "train", transform=None, *, option: str = "data.root"
) -> Dataset:
    """An ImageNet-style ``root/<split>/<class>/<image>`` tree through torchvision's ImageFolder.

    ``option`` is the config key the root came from, named in the error when it is missing."""
    from torchvision.datasets import ImageFolder

    expected = "an ImageNet-style tree root/{train,val}/<class_name>/<image files>"
    path = _require_dir(root, "ImageFolder", expected, option) / split
    if not path.is_dir():
        raise DatasetNotFoundError(f"ImageFolder: {path} does not exist ({option}={str(root)!r}). Expected {expected}.")
    return ImageFolder(root=str(path), transform=transform)
