"""common.distributed and common.launch: no-ops in one process, real collectives in two (gloo, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from common import distributed as dist
from common.cli import main
from common.errors import UserError
from common.launch import build_command
from common.runtime import REPO_ROOT


def test_one_process_is_a_no_op():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main()
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.equal(dist.all_reduce(x, op="mean"), x) and dist.all_reduce(x) is not x
    assert dist.gather_objects({"a": 1}) == [{"a": 1}] and dist.broadcast_object(3) == 3
    assert dist.shard([5, 6, 7]) == [5, 6, 7] and dist.describe()["world_size"] == 1
    with pytest.raises(ValueError, match="op must be"):
        dist.all_reduce(x, op="max")


def test_launch_command_cpu_gpu_and_errors():
    cmd, env = build_command(2, ["-m", "nvit", "reproduce"], cuda_devices=0, mixed_precision="bf16")
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cmd[-3:] == ["-m", "nvit", "reproduce"] and env["ACCELERATE_USE_CPU"] == "true"
    cmd, env = build_command(4, ["-m", "nvit"], cuda_devices=8, mixed_precision="bf16")
    assert "accelerate.commands.launch" in cmd and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16" and env == {}
    assert build_command(1, ["-m", "nvit"], cuda_devices=0, mixed_precision="no")[0][1:] == ["-m", "nvit"]
    with pytest.raises(UserError, match="CUDA device"):
        build_command(4, ["-m", "nvit"], cuda_devices=2, mixed_precision="bf16")
    with pytest.raises(UserError, match="at least 1"):
        build_command(0, ["-m", "nvit"], cuda_devices=0, mixed_precision="no")


@pytest.mark.e2e
def test_two_cpu_processes_reduce_gather_and_shard():
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "common.distributed"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    decoder, ranks, text = json.JSONDecoder(), [], out.stdout
    for part in text.split("SELFTEST ")[1:]:  # robust to two ranks' lines sharing one line of the pipe
        ranks.append(decoder.raw_decode(part)[0])
    ranks.sort(key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    for r in ranks:  # rank r holds arange(4) + r: the sum over ranks is 2 * arange(4) + 1, exact in float64
        assert r["sum"] == [1.0, 3.0, 5.0, 7.0] and r["mean"] == [0.5, 1.5, 2.5, 3.5]
        assert r["gathered"] == [{"rank": 0}, {"rank": 1}] and r["broadcast"] == "from rank 0"
    assert ranks[0]["shard"] == [0, 2, 4, 6] and ranks[1]["shard"] == [1, 3, 5]
    for r in ranks:  # two gloo processes on the CPU: no accelerator
        assert r["describe"]["world_size"] == 2 and "gloo" in r["describe"]["backend"].lower()
        assert r["describe"]["num_devices"] == 0 and r["describe"]["device_type"] == "cpu"


def test_describe_counts_distinct_devices_across_processes(monkeypatch):
    """``num_devices`` counts each (machine, device) once; the keys of before keep their values."""
    monkeypatch.setattr(dist, "_accelerators_used", lambda device: set())
    assert dist.describe() == {"world_size": 1, "num_devices": 0, "device_type": "cpu"}
    monkeypatch.setattr(dist, "_accelerators_used", lambda device: {"cuda:0", "cuda:1"})  # device_map over 2 GPUs
    assert dist.describe() == {"world_size": 1, "num_devices": 2, "device_type": "cuda"}

    state = SimpleNamespace(backend="nccl", distributed_type="MULTI_GPU", device=torch.device("cuda", 0))
    monkeypatch.setattr(dist, "state", lambda: state)
    monkeypatch.setattr(dist, "world_size", lambda: 4)
    ranks = {"n1": [["n1/cuda:0"], ["n1/cuda:1"]], "n2": [["n2/cuda:0"], ["n2/cuda:1"]]}
    monkeypatch.setattr(dist, "gather_objects", lambda mine: ranks["n1"] + ranks["n2"])  # 2 nodes of 2 GPUs
    out = dist.describe()
    assert out == {"world_size": 4, "backend": "nccl", "distributed_type": "MULTI_GPU", "num_devices": 4,
                   "device_type": "cuda"}  # fmt: skip
    monkeypatch.setattr(dist, "gather_objects", lambda mine: [["n1/cuda:0"], ["n1/cuda:0"], [], []])  # shared GPU
    assert dist.describe()["num_devices"] == 1
    monkeypatch.setattr(dist, "gather_objects", lambda mine: [[], [], [], []])  # gloo CPU processes
    assert dist.describe()["num_devices"] == 0 and dist.describe()["device_type"] == "cpu"


def test_a_run_device_counts_as_used():
    assert dist._accelerators_used(None) == dist._accelerators_used("cpu")
    assert "meta:0" in dist._accelerators_used(torch.device("meta"))


@dataclass(frozen=True)
class ToyConfig:
    seeds: tuple[int, ...] = (0,)


def test_a_paper_without_distributed_support_refuses_a_launcher(monkeypatch, capsys, tmp_path):
    def smoke() -> ToyConfig:
        """A toy preset."""
        return ToyConfig()

    def run(cfg, ctx):  # pragma: no cover - must not be reached
        raise AssertionError("ran under a launcher")

    monkeypatch.setattr(dist, "world_size", lambda: 2)
    code = main("darex", presets={"smoke": smoke}, run=run,
                argv=["reproduce", "--preset", "smoke", "--results-dir", str(tmp_path)])  # fmt: skip
    assert code == 2 and "does not split its work across processes" in capsys.readouterr().err
