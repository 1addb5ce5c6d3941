from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from common import data

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def fake_fashion_mnist(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for split, n in (("train", 50), ("test", 20)):
        images, labels = data.FASHION_MNIST_FILES[split]
        write_idx(root / f"{images}.gz", rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(root / labels, np.arange(n) % 10, compress=False)  # plain files are accepted too
    return root


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        path = tmp_path / f"x{compress}"
        write_idx(path.with_suffix(".gz") if compress else path, array, compress)
        loaded = data.read_idx(path.with_suffix(".gz") if compress else path)
        assert loaded.shape == (2, 3, 4) and np.array_equal(loaded, array)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "bad"
    write_idx(path, np.zeros((4, 4)), compress=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(path)


def test_load_fashion_mnist_from_given_root(fake_fashion_mnist):
    x, y = data.load_fashion_mnist("train", root=fake_fashion_mnist)
    assert x.shape == (50, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(y, torch.arange(50) % 10)
    ds = data.fashion_mnist("test", root=fake_fashion_mnist, size=32, channels=3)
    assert ds.tensors[0].shape == (20, 3, 32, 32)


def test_missing_dataset_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.find_fashion_mnist(root=tmp_path / "nowhere")
    message = str(err.value)
    assert "nowhere" in message and "make data" in message and "train-images-idx3-ubyte" in message
    # An explicit but wrong root is reported as such, not silently replaced by another copy.
    assert "/usr/share/datasets" not in message


def test_environment_variable_root(fake_fashion_mnist, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(fake_fashion_mnist))
    assert data.find_fashion_mnist() == fake_fashion_mnist


def test_real_fashion_mnist_installed_by_make():
    """`make test` installs the real data (Debian package or data/); check it is the canonical set."""
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10_000, 28, 28) and torch.equal(torch.bincount(y), torch.full((10,), 1_000))
    assert abs(x.float().mean().item() / 255 - data.FASHION_MNIST_MEAN) < 0.01


def test_to_float_images_pads_exactly():
    images = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    x = data.to_float_images(images, size=32, normalize=False)
    assert x.shape == (2, 1, 32, 32)
    assert x[:, :, 2:30, 2:30].eq(1).all() and x.sum() == 2 * 28 * 28
    with pytest.raises(ValueError):
        data.to_float_images(images, size=20)


def test_digits():
    ds = data.digits()
    x, y = ds.tensors
    assert x.shape == (1797, 1, 8, 8) and set(y.tolist()) == set(range(10))
    # centred with a float32 mean of 115008 values in [0, 1]: its error, and so the residual mean, is
    # <~ log2(n)·u ≈ 1e-6 (cascade summation); the check itself sums in float64 so it adds nothing
    assert abs(x.double().mean().item()) < 1e-5


def test_stratified_subset_keeps_proportions_and_is_seeded():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = data.stratified_subset(labels, 20, seed=3)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert torch.bincount(labels[idx]).tolist() == [12, 6, 2]
    assert torch.equal(idx, data.stratified_subset(labels, 20, seed=3))
    assert not torch.equal(idx, data.stratified_subset(labels, 20, seed=4))
    # Remainders are distributed so the total is exact.
    assert len(data.stratified_subset(labels, 7, seed=0)) == 7
    with pytest.raises(ValueError):
        data.stratified_subset(labels, 0)


def test_stratified_split_is_a_partition():
    labels = torch.arange(100) % 4
    first, rest = data.stratified_split(labels, 40, seed=1)
    assert len(first) == 40 and len(rest) == 60
    assert set(first.tolist()).isdisjoint(rest.tolist()) and len(set(first.tolist()) | set(rest.tolist())) == 100


def test_loader_order_is_seeded():
    ds = torch.utils.data.TensorDataset(torch.arange(50))
    order = [b[0].tolist() for b in data.loader(ds, 10, shuffle=True, seed=5)]
    assert order == [b[0].tolist() for b in data.loader(ds, 10, shuffle=True, seed=5)]
    assert order != [b[0].tolist() for b in data.loader(ds, 10, shuffle=True, seed=6)]


def test_paper_scale_roots_fail_clearly(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=r"no data\.root given"):
        data.cifar10("")
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-py"):
        data.cifar10(tmp_path)
    with pytest.raises(data.DatasetNotFoundError, match="train"):
        data.image_folder(tmp_path, "train")


def test_image_folder_reads_a_tree(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "val" / cls / "a.png")
    ds = data.image_folder(tmp_path, "val")
    assert len(ds) == 2 and ds.classes == ["cat", "dog"]
