"""common.machine: the speed probe and the run's CPU accounting that every record's provenance carries."""

import subprocess
import sys
import time

import pytest
import torch

from common import machine

pytestmark = pytest.mark.kernel_independent  # timings and counters, no floats compared


SPIN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end:\n    pass\n"


def test_speed_probe_reads_positive_rates_on_one_thread_and_restores_the_threads():
    before = torch.get_num_threads()
    probe = machine.speed_probe(seconds=0.2)
    assert set(probe) == {"matmul_gflops", "matmul_gflops_min", "matmul_gflops_max", "matmul_gflops_all_cores",
                          "core_scaling", "small_op_us", "memory_gbps"}  # fmt: skip
    assert 0 < probe["matmul_gflops_min"] <= probe["matmul_gflops"] <= probe["matmul_gflops_max"]
    assert 0 < probe["small_op_us"] < 1e4 and probe["memory_gbps"] > 0
    assert probe["matmul_gflops_all_cores"] > 0 and probe["core_scaling"] > 0
    assert torch.get_num_threads() == before


def test_the_meter_counts_exited_worker_processes_and_the_probe_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(machine.PROBE_ENV, "0")
    meter = machine.UsageMeter()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", SPIN], check=True)  # a worker that has exited (and been waited for)
    usage = meter.finish(time.perf_counter() - started)
    assert usage["speed_probe"] is None
    assert usage["cpu_s"] >= 0.5, "the exited worker's CPU time is the run's"
    assert usage["cores"] >= 1 and usage["cores_busy"] > 0
    if machine._machine_cpu_s() is not None:  # Linux
        assert usage["others_cpu_s"] >= 0 and usage["steal_s"] >= 0


def test_the_probe_runs_before_and_after_when_enabled_and_the_card_line_says_so(monkeypatch):
    monkeypatch.setattr(machine, "speed_probe", lambda seconds=1.5: {"matmul_gflops": 60.0, "small_op_us": 1.5})
    monkeypatch.setenv(machine.PROBE_ENV, "1")
    usage = machine.UsageMeter().finish(2.0)
    assert usage["speed_probe"] == {"before": {"matmul_gflops": 60.0, "small_op_us": 1.5},
                                    "after": {"matmul_gflops": 60.0, "small_op_us": 1.5}}  # fmt: skip
    line = machine.describe(usage)
    assert line.startswith("Machine: ") and "60/60 GFLOP/s" in line and "cores busy" in line
    assert machine.describe(None) == ""


def test_the_cpu_is_described_with_the_kernels_torch_chose():
    cpu = machine.cpu_description()
    assert cpu["kernels"] == torch.backends.cpu.get_cpu_capability()
    if "model_name" in cpu:  # Linux
        assert isinstance(cpu["isa"], list) and cpu["threads_per_core"] >= 1
    usage = machine.UsageMeter(probe=False).finish(1.0)
    assert usage["cpu"]["kernels"] == cpu["kernels"]
    assert f"torch kernels {cpu['kernels']}" in machine.describe(usage)
