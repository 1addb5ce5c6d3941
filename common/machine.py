"""How a run used the machine, so that wall times from different runs and machines can be compared.

A wall time alone does not say whether a run was slow or its machine was: the same 2-core VM has run the same
``mini`` 1.4-1.7x faster or slower from one run to the next (identical results; ``darex``, ``masksparsity``
cards). :class:`UsageMeter` records, for one ``reproduce`` run:

- ``cpu_s``: CPU time (user + system) of the run's own process tree (worker processes included once they have
  exited, as every pool here does before the record is written), and ``cores_busy`` = ``cpu_s`` / wall, the
  average number of cores the run kept busy (2.0 = both cores all the time);
- ``others_cpu_s``: CPU time the rest of the machine used meanwhile (``/proc/stat``; Linux only), i.e. how far
  from "nothing else running" the run was; ``steal_s``: time the hypervisor gave this VM's cores to others;
- ``speed_probe``: a fixed single-thread workload timed just before and just after the run
  (:func:`speed_probe`, about a second each): float32 matrix products of the small sizes these presets use
  (GFLOP/s) and the per-call cost of a tiny op (dispatch overhead, microseconds). A run that took 1.5x longer
  while its probes read 1.5x lower was on a slower machine (or turn of it), not running slower code.

The probe is skipped when ``$PRUNE_REPRO_SPEED_PROBE`` is 0 (the test suite does so; it then reads ``null``).
Nothing here changes a result: the probe runs outside the timed run, on its own tensors and one thread.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
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


def _rate(fn, budget_s: float, calibrate: int) -> float:
    """Seconds per call of ``fn``: best of five rounds, each round repeating it for about ``budget_s / 6``."""
    fn()  # warm-up (allocations, kernel selection)
    t = time.perf_counter()
    for _ in range(calibrate):
        fn()
    once = max((time.perf_counter() - t) / calibrate, 1e-9)
    reps = max(calibrate, int(budget_s / 6 / once))
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def speed_probe(seconds: float = 1.0) -> dict[str, float]:
    """This machine's speed now, on one torch thread, in about ``seconds``: ``matmul_gflops`` (float32
    ``(256 x 256) @ (256 x 256)``, the size of the presets' small layers) and ``small_op_us`` (one ``add`` of two
    16-element tensors, in place: the per-op overhead that dominates tiny models). Best of five rounds each, so a short
    interruption does not count; a machine shared with another busy VM reads lower throughout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(256, 256, generator=gen), torch.randn(256, 256, generator=gen)
        out = torch.empty(256, 256)
        s_mm = _rate(lambda: torch.mm(a, b, out=out), seconds * 0.6, calibrate=5)
        u, v = torch.zeros(16), torch.ones(16)
        s_add = _rate(lambda: u.add_(v), seconds * 0.4, calibrate=1000)
    finally:
        torch.set_num_threads(threads)
    return {"matmul_gflops": round(2 * 256**3 / s_mm / 1e9, 1), "small_op_us": round(s_add * 1e6, 2)}


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
    if machine.get("cores_busy") is not None:
        parts.append(f"{machine['cores_busy']:.2f} of {machine.get('cores', '?')} cores busy with this run "
                     f"({machine['cpu_s']:.0f} CPU-s)")  # fmt: skip
    if machine.get("others_cpu_s") is not None:
        parts.append(f"other processes {machine['others_cpu_s']:.0f} CPU-s, "
                     f"hypervisor steal {machine['steal_s']:.0f} s")  # fmt: skip
    probe = machine.get("speed_probe")
    if probe and probe.get("before") and probe.get("after"):
        b, a = probe["before"], probe["after"]
        parts.append(f"speed probe (1 thread) before/after: {b['matmul_gflops']:.0f}/{a['matmul_gflops']:.0f} "
                     f"GFLOP/s matmul, {b['small_op_us']:.1f}/{a['small_op_us']:.1f} µs per small op")  # fmt: skip
    return "Machine: " + " · ".join(parts) if parts else ""
