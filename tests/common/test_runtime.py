from __future__ import annotations

import logging
import os
import re

import numpy as np
import pytest
import torch

from common import runtime
from common.errors import UserError

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


def test_select_device():
    assert runtime.select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            runtime.select_device("cuda")
    with pytest.raises(UserError, match="not a device"):
        runtime.select_device("gpu0")


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
        with pytest.raises(UserError, match="thread count"):
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


def _corrupt(path, how: str) -> None:
    """Damage a cache entry the ways a disk, a copy or an older version of the code can."""
    blob = path.read_bytes()
    if how == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif how == "truncated in the header":
        path.write_bytes(blob[: len(runtime.ArtifactCache.MAGIC) + 4])
    elif how == "byte flipped":
        i = len(blob) - 7  # inside the payload: the length still matches, the checksum does not
        path.write_bytes(blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :])
    elif how == "no header":
        path.write_bytes(b"not a cache entry" * 8)
    elif how == "old format, truncated":
        torch.save({"w": torch.arange(3)}, path)  # a plain torch file, as the cache wrote before the header...
        path.write_bytes(path.read_bytes()[:40])  # ...cut short: it no longer loads
    else:
        raise ValueError(how)


CORRUPTIONS = ["truncated", "truncated in the header", "byte flipped", "no header", "old format, truncated"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_cache_entry_is_detected_by_load_and_contains(tmp_path, how, caplog):
    cache = runtime.ArtifactCache("paper", root=tmp_path)
    key = {"seed": 0}
    path = cache.save("dense", key, {"w": torch.arange(3)})
    assert ("dense", key) in cache
    _corrupt(path, how)
    with pytest.raises(runtime.CorruptCacheEntry, match=re.escape(str(path))):
        cache.load("dense", key)
    assert path.exists(), "load reports, it does not delete"
    with caplog.at_level(logging.WARNING, logger="common.runtime"):
        assert ("dense", key) not in cache
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and path.name in caplog.text
    assert not path.exists(), "a corrupt entry counts as missing and is removed"


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_get_or_create_recomputes_a_corrupt_entry_and_rewrites_it(tmp_path, how, caplog):
    calls = []

    def create():
        calls.append(1)
        return {"w": torch.arange(3) * len(calls)}

    cache = runtime.ArtifactCache("paper", root=tmp_path)
    key = {"seed": 0}
    cache.get_or_create("dense", key, create)
    path = cache.path("dense", key)
    _corrupt(path, how)
    with caplog.at_level(logging.INFO, logger="common.runtime"):
        value = cache.get_or_create("dense", key, create)
    assert len(calls) == 2 and torch.equal(value["w"], torch.arange(3) * 2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert f"cache: computed {path.name}" in caplog.text
    # the rewritten entry is sound: it loads, and the next run reuses it
    assert path.read_bytes().startswith(runtime.ArtifactCache.MAGIC)
    assert torch.equal(cache.load("dense", key)["w"], value["w"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="common.runtime"):
        again = cache.get_or_create("dense", key, create)
    assert len(calls) == 2 and torch.equal(again["w"], value["w"])
    assert f"cache: loaded {path.name}" in caplog.text and "corrupt" not in caplog.text


def test_phase_timer_times_are_exclusive_and_add_up(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0, 10.0, 10.5])  # enter a, enter b, leave b, leave a, enter a, leave a
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(clock))
    timer = runtime.PhaseTimer()
    with timer.phase("a"), timer.phase("b"):
        pass
    with timer.phase("a"):
        pass
    assert timer.seconds == {"a": 1.0 + 1.0 + 0.5, "b": 2.0}  # b's 2 s are not also a's
    assert timer.breakdown(total_s=12.0) == {"a": 2.5, "b": 2.0, "other": 7.5}


def test_an_entry_from_before_checksums_is_kept_and_given_its_header(tmp_path, caplog):
    """Upgrading must not throw away finished work: a plain torch.save entry that loads is adopted in place."""
    cache = runtime.ArtifactCache("paper", root=tmp_path)
    key = {"seed": 0}
    path = cache.path("dense", key)
    path.parent.mkdir(parents=True)
    torch.save({"w": torch.arange(3)}, path)
    with caplog.at_level(logging.INFO, logger="common.runtime"):
        assert ("dense", key) in cache
    assert "corrupt" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert path.read_bytes().startswith(runtime.ArtifactCache.MAGIC), "the header was added in place"
    value = cache.get_or_create("dense", key, lambda: pytest.fail("a sound old entry must not be recomputed"))
    assert torch.equal(value["w"], torch.arange(3))
