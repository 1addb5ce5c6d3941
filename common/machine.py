"""How a run used the machine, so that wall times from different runs and machines can be compared.

A wall time alone does not say whether a run was slow or its machine was: the same 2-core VM has run the same
``mini`` 1.4-1.7x faster or slower from one run to the next (identical results; ``darex``, ``masksparsity``
cards). :class:`UsageMeter` records, for one ``reproduce`` run:

- ``cpu``: the CPU model, its vector extensions, the kernels torch picked for it (AVX2, AVX512, ...) and threads
  per core (:func:`cpu_description`): users' CPUs differ from CI's, and torch's kernels differ with them;
- ``cpu_s``: CPU time (user + system) of the run's own process tree (worker processes included once they have
  exited, as every pool here does before the record is written), and ``cores_busy`` = ``cpu_s`` / wall, the
  average number of cores the run kept busy (2.0 = both cores all the time);
- ``others_cpu_s``: CPU time the rest of the machine used meanwhile (``/proc/stat``; Linux only), i.e. how far
  from "nothing else running" the run was; ``steal_s``: time the hypervisor gave this VM's cores to others;
- ``speed_probe``: fixed workloads timed just before and just after the run (:func:`speed_probe`, 1.5 s each):
  float32 matrix products of the small sizes these presets use on one core (GFLOP/s, median and range over 0.1-s
  windows) and on all cores at once, the per-call cost of a tiny op (dispatch overhead) and the bandwidth of a
  large memory copy. A run that took 1.5x longer while its probes read 1.5x lower was on a slower machine (or a
  slower turn of it), not running slower code; normal probes do not show the reverse, since they sample 3 s at
  the two ends of the run (darex's mini record, commit 9727328: probes 67 and 69 GFLOP/s, as on a fast turn,
  yet its jobs took 1.46x the CPU time of identical work in the previous record). This VM's speed has swung
  between 22 and 67 GFLOP/s from one 0.1-s window to the next: the probe is evidence about the machine's
  state, not a correction factor. The all-cores product tells whether the cores slow each other down (the
  presets keep both busy): 0.54-0.81 of the one-core rate per core in three probes a minute apart here.

The probe is skipped when ``$PRUNE_REPRO_SPEED_PROBE`` is 0 (the test suite does so; it then reads ``null``).
Nothing here changes a result: the probe runs outside the timed run, on its own tensors and one thread.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch

PROBE_ENV = "PRUNE_REPRO_SPEED_PROBE"

_STAT = Path("/proc/stat")


def probe_enabled() -> bool:
    return os.environ.get(PROBE_ENV, "1").strip() not in ("0", "", "false", "no", "off")


def visible_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _own_cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _machine_cpu_s() -> dict[str, float] | None:
    """Whole-machine CPU seconds from ``/proc/stat``'s first line: ``busy`` (user, nice, system, irq, softirq)
    and ``steal``; None where there is no such file."""
    try:
        fields = _STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) / tick for v in fields[1:9])
    return {"busy": user + nice + system + irq + softirq, "steal": steal}


WINDOW_S = 0.1
"""Length of one probe window: this VM's speed changes from one tenth of a second to the next."""


def _window_rates(fn, seconds: float, work: float) -> list[float]:
    """``work`` units per second of ``fn`` in consecutive windows of :data:`WINDOW_S`, for about ``seconds``."""
    fn()  # warm-up (allocations, kernel selection)
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or not rates:
        calls, t = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t) < WINDOW_S:
            fn()
            calls += 1
        rates.append(work * calls / elapsed)
    return rates


def _matmul(seed: int):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(256, 256, generator=gen), torch.randn(256, 256, generator=gen)
    out = torch.empty(256, 256)
    return lambda: torch.mm(a, b, out=out)


MATMUL_GFLOP = 2 * 256**3 / 1e9


def _all_cores_matmul(seconds: float, cores: int) -> float:
    """Median GFLOP/s of one core while every visible core runs the same matrix product (one Python thread per
    core; torch releases the GIL inside the product, and runs it on the calling thread with one intra-op thread)."""
    results: list[list[float]] = [[] for _ in range(cores)]

    def work(i: int) -> None:
        results[i] = _window_rates(_matmul(i), seconds, MATMUL_GFLOP)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(cores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return median([median(r) for r in results if r])


COPY_FLOATS = 16 * 2**20
"""The memory probe copies 64 MiB: more than the last-level cache of the CPUs seen here (32 MiB), so it measures
the memory bandwidth left by the machine's other tenants."""


def speed_probe(seconds: float = 1.5) -> dict[str, float]:
    """This machine's speed now, on one torch thread, in about ``seconds``: ``matmul_gflops``, the median over
    0.1-s windows of float32 ``(256 x 256) @ (256 x 256)`` (the size of the presets' small layers), with its lowest
    and highest window (``matmul_gflops_min``/``_max``: how steady the machine was); ``matmul_gflops_all_cores``,
    the same per core while every visible core runs one (the presets run one worker per core), and ``core_scaling``,
    its ratio to the one-core rate (about 1 when the cores are independent, about 0.5-0.6 when two "cores" are one
    core's hyperthreads or share a saturated cache or memory bus); ``small_op_us``, the median
    cost of one in-place ``add`` of two 16-element tensors (the per-op overhead that dominates tiny models), and
    ``memory_gbps``, the median bandwidth of copying 64 MiB (read + write; convolutions and evaluation over large
    activations depend on it, and neighbours on the same host share it).
    Medians, not best times: the probe is there to see a machine slowed by its neighbours, not to ignore it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mm = _window_rates(_matmul(0), seconds * 0.35, MATMUL_GFLOP)
        cores = visible_cores()
        mm_all = _all_cores_matmul(seconds * 0.2, cores) if cores > 1 else median(mm)
        u, v = torch.zeros(16), torch.ones(16)
        add = _window_rates(lambda: u.add_(v), seconds * 0.15, work=1e-6)  # millions of calls per second
        src = torch.zeros(COPY_FLOATS)
        dst = torch.empty_like(src)
        copy = _window_rates(lambda: dst.copy_(src), seconds * 0.3, work=2 * 4 * COPY_FLOATS / 1e9)  # read + write
    finally:
        torch.set_num_threads(threads)
    return {
        "matmul_gflops": round(median(mm), 1),
        "matmul_gflops_min": round(min(mm), 1),
        "matmul_gflops_max": round(max(mm), 1),
        "matmul_gflops_all_cores": round(mm_all, 1),
        "core_scaling": round(mm_all / median(mm), 2),
        "small_op_us": round(1 / median(add), 2),
        "memory_gbps": round(median(copy), 1),
    }


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (``model name``, ``flags``, ...); empty where there is no
    such file."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_description() -> dict[str, Any]:
    """Which CPU, as far as a run's speed depends on it: the model name, family and model number, the vector
    extensions torch can use, the kernels it chose (``ATEN_CPU_CAPABILITY`` forces them), and threads per core
    (2 = the two "cores" may be one core's hyperthreads). Empty fields where the OS does not say."""
    info: dict[str, Any] = {"kernels": torch.backends.cpu.get_cpu_capability()}
    fields = cpuinfo()
    if fields:
        flags = set(fields.get("flags", "").split())
        info.update(model_name=fields.get("model name"), family=fields.get("cpu family"), model=fields.get("model"),
                    isa=[f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags])  # fmt: skip
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
        count = 0
        for part in siblings.split(","):  # "0", "0-1" or "0,64"
            first, _, last = part.partition("-")
            count += int(last) - int(first) + 1 if last else 1
        info["threads_per_core"] = count
    except (OSError, ValueError):
        pass
    return info


class UsageMeter:
    """``meter = UsageMeter()`` before a run (probes the speed), ``meter.finish(wall_s)`` after it (probes again)
    and returns the provenance entry described in the module docstring."""

    def __init__(self, probe: bool | None = None):
        self.probe = probe_enabled() if probe is None else probe
        self.probe_start = speed_probe() if self.probe else None
        self.cpu_start = _own_cpu_s()
        self.machine_start = _machine_cpu_s()

    def finish(self, wall_s: float) -> dict[str, Any]:
        cpu_s = _own_cpu_s() - self.cpu_start
        machine_end = _machine_cpu_s()
        out: dict[str, Any] = {
            "cpu": cpu_description(),
            "cores": visible_cores(),
            "cpu_s": round(cpu_s, 1),
            "cores_busy": round(cpu_s / wall_s, 2) if wall_s > 0 else None,
            "others_cpu_s": None,
            "steal_s": None,
        }
        if self.machine_start is not None and machine_end is not None:
            busy = machine_end["busy"] - self.machine_start["busy"]
            out["others_cpu_s"] = round(max(0.0, busy - cpu_s), 1)
            out["steal_s"] = round(machine_end["steal"] - self.machine_start["steal"], 1)
        out["speed_probe"] = {"before": self.probe_start, "after": speed_probe()} if self.probe else None
        return out


def describe(machine: dict[str, Any] | None) -> str:
    """One line for a card: cores kept busy, other load, steal, probe readings."""
    if not machine:
        return ""
    parts = []
    cpu = machine.get("cpu") or {}
    if cpu:
        per_core = cpu.get("threads_per_core")
        parts.append(f"{cpu.get('model_name') or 'CPU'}, torch kernels {cpu.get('kernels')}"
                     + (f", {per_core} thread(s) per core" if per_core else ""))  # fmt: skip
    if machine.get("cores_busy") is not None:
        parts.append(f"{machine['cores_busy']:.2f} of {machine.get('cores', '?')} cores busy with this run "
                     f"({machine['cpu_s']:.0f} CPU-s)")  # fmt: skip
    if machine.get("others_cpu_s") is not None:
        parts.append(f"other processes {machine['others_cpu_s']:.0f} CPU-s, "
                     f"hypervisor steal {machine['steal_s']:.0f} s")  # fmt: skip
    probe = machine.get("speed_probe")
    if probe and probe.get("before") and probe.get("after"):
        b, a = probe["before"], probe["after"]
        ranges = ""
        if "matmul_gflops_min" in b and "matmul_gflops_min" in a:
            ranges = (f" (0.1-s windows: {b['matmul_gflops_min']:.0f}-{b['matmul_gflops_max']:.0f} / "
                      f"{a['matmul_gflops_min']:.0f}-{a['matmul_gflops_max']:.0f})")  # fmt: skip
        more = ""
        if "core_scaling" in b and "core_scaling" in a:
            more += (f", all cores at once {b['matmul_gflops_all_cores']:.0f}/{a['matmul_gflops_all_cores']:.0f} "
                       f"GFLOP/s per core (x{b['core_scaling']:.2f}/x{a['core_scaling']:.2f})")  # fmt: skip
        if "memory_gbps" in b and "memory_gbps" in a:
            more += f", {b['memory_gbps']:.0f}/{a['memory_gbps']:.0f} GB/s memory copy"
        parts.append(f"speed probe (1 thread) before/after: {b['matmul_gflops']:.0f}/{a['matmul_gflops']:.0f} "
                     f"GFLOP/s matmul{ranges}, "
                     f"{b['small_op_us']:.1f}/{a['small_op_us']:.1f} µs per small op{more}")  # fmt: skip
    return "Machine: " + " · ".join(parts) if parts else ""
