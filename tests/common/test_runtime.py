from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from common import runtime


def test_select_device():
    assert runtime.select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            runtime.select_device("cuda")


def test_device_name_is_informative():
    assert runtime.device_name(torch.device("cpu"))


def test_same_seed_same_numbers():
    def draw():
        runtime.seed_everything(123)
        return torch.randn(5), np.random.rand(3), __import__("random").random()

    (t1, n1, r1), (t2, n2, r2) = draw(), draw()
    assert torch.equal(t1, t2) and np.array_equal(n1, n2) and r1 == r2
    runtime.seed_everything(124)
    assert not torch.equal(torch.randn(5), t1)


def test_generator_is_independent_of_global_state():
    a = torch.rand(3, generator=runtime.generator(7))
    torch.rand(100)  # disturb the global RNG
    assert torch.equal(a, torch.rand(3, generator=runtime.generator(7)))


def test_set_threads():
    previous = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(previous)


def test_offline_mode(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    runtime.enable_offline_mode()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_roots_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNE_REPRO_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("PRUNE_REPRO_RESULTS", str(tmp_path / "r"))
    assert runtime.cache_root() == tmp_path / "c" and runtime.results_root() == tmp_path / "r"
    monkeypatch.delenv("PRUNE_REPRO_RESULTS")
    assert runtime.results_root() == runtime.REPO_ROOT / "results"


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    runtime.atomic_write_bytes(target, b"one")
    runtime.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_cache_computes_once_and_resumes(tmp_path):
    calls = []

    def create():
        calls.append(1)
        return {"w": torch.arange(3)}

    cache = runtime.ArtifactCache("paper", root=tmp_path)
    key = {"lr": 0.1, "seed": 0}
    first = cache.get_or_create("dense", key, create)
    # A new cache object (as after an interrupted run) finds the artifact on disk.
    again = runtime.ArtifactCache("paper", root=tmp_path).get_or_create("dense", {"seed": 0, "lr": 0.1}, create)
    assert len(calls) == 1 and torch.equal(first["w"], again["w"])
    cache.get_or_create("dense", {"lr": 0.2, "seed": 0}, create)
    assert len(calls) == 2, "a different key is a different artifact"
    assert ("dense", key) in cache and ("pruned", key) not in cache


def test_key_hash_ignores_dict_order():
    assert runtime.key_hash({"a": 1, "b": 2}) == runtime.key_hash({"b": 2, "a": 1})
    assert runtime.key_hash({"a": 1}) != runtime.key_hash({"a": 2})
