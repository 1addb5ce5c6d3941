"""Latency: time a model with warm-up, report median and spread; compare two models interleaved.

Machines here are noisy (2 shared cores), so a speedup is only reported as a ratio measured inside one
run, with the two models timed alternately (A B A B ...) so that drifts in machine load hit both::

    cmp = compare_latency(dense, pruned, example_inputs=torch.randn(64, 1, 28, 28))
    print(cmp.speedup, cmp.speedup_iqr)        # median of per-round ratios, and their interquartile range

On CUDA each timed call is bracketed by ``torch.cuda.synchronize`` so queued kernels are counted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

Inputs = torch.Tensor | tuple | Mapping[str, Any]


def _device_of(model: torch.nn.Module, example_inputs: Inputs) -> torch.device:
    for p in model.parameters():
        return p.device
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.device
    return torch.device("cpu")


def call_with_inputs(model: Callable, example_inputs: Inputs) -> Any:
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, tuple):
        return model(*example_inputs)
    return model(example_inputs)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@dataclass(frozen=True)
class Timing:
    """Seconds per forward call over ``repeats`` timed calls (after ``warmup`` untimed ones)."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    repeats: int
    warmup: int
    batch_size: int | None
    device: str
    threads: int

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    @property
    def throughput(self) -> float | None:
        """Samples per second at the median, when the batch size is known."""
        return None if self.batch_size is None else self.batch_size / self.median_s

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"iqr_s": self.iqr_s, "throughput": self.throughput}


@dataclass(frozen=True)
class Comparison:
    """Two models timed interleaved in one run; ``speedup`` > 1 means ``b`` is faster than ``a``."""

    a: Timing
    b: Timing
    speedup: float
    """Median over rounds of (time of a) / (time of b)."""
    speedup_q1: float
    speedup_q3: float

    @property
    def speedup_iqr(self) -> float:
        return self.speedup_q3 - self.speedup_q1

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "speedup": self.speedup,
                "speedup_q1": self.speedup_q1, "speedup_q3": self.speedup_q3}  # fmt: skip


def _batch_size(example_inputs: Inputs) -> int | None:
    first = example_inputs
    if isinstance(example_inputs, Mapping):
        first = next(iter(example_inputs.values()), None)
    elif isinstance(example_inputs, tuple):
        first = example_inputs[0] if example_inputs else None
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else None


class _Timer:
    def __init__(self, model: torch.nn.Module, example_inputs: Inputs):
        self.model, self.inputs = model, example_inputs
        self.device = _device_of(model, example_inputs)
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

    @torch.inference_mode()
    def once(self) -> float:
        self.sync()
        start = time.perf_counter()
        call_with_inputs(self.model, self.inputs)
        self.sync()
        return time.perf_counter() - start


def _timing(samples: list[float], warmup: int, example_inputs: Inputs, device: torch.device) -> Timing:
    q1, q2, q3 = _quartiles(samples)
    return Timing(
        median_s=q2, q1_s=q1, q3_s=q3, min_s=min(samples), repeats=len(samples), warmup=warmup,
        batch_size=_batch_size(example_inputs), device=str(device), threads=torch.get_num_threads(),
    )  # fmt: skip


def measure_latency(model: torch.nn.Module, example_inputs: Inputs, *, warmup: int = 5, repeats: int = 20) -> Timing:
    """Median and quartiles of the forward time of ``model`` (in eval mode, no grad) on ``example_inputs``."""
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    was_training = model.training
    model.eval()
    timer = _Timer(model, example_inputs)
    try:
        for _ in range(warmup):
            timer.once()
        samples = [timer.once() for _ in range(repeats)]
    finally:
        model.train(was_training)
    return _timing(samples, warmup, example_inputs, timer.device)


def compare_latency(
    a: torch.nn.Module,
    b: torch.nn.Module,
    example_inputs: Inputs,
    *,
    example_inputs_b: Inputs | None = None,
    warmup: int = 5,
    rounds: int = 20,
) -> Comparison:
    """Time ``a`` and ``b`` alternately for ``rounds`` rounds; the speedup is the median per-round ratio.

    The order within a round alternates too (AB, BA, AB, ...) so neither model always runs second
    on a warm cache. ``example_inputs_b`` defaults to the same inputs.
    """
    inputs_b = example_inputs if example_inputs_b is None else example_inputs_b
    return compare_latency_many(a, [b], example_inputs, others_inputs=[inputs_b], warmup=warmup, rounds=rounds)[0]


def compare_latency_many(
    reference: torch.nn.Module,
    others: list[torch.nn.Module],
    example_inputs: Inputs,
    *,
    others_inputs: list[Inputs] | None = None,
    warmup: int = 5,
    rounds: int = 20,
) -> list[Comparison]:
    """:func:`compare_latency` of ``reference`` against each of ``others``, all timed in the same rounds.

    Every round times the reference once and each other model once, in an order that rotates by one place per
    round (round r starts at model r mod n), so every model takes every position; each comparison's speedup is
    the median over rounds of (reference time) / (its time) in the same round. Timing the reference once per round
    for all the models saves ``len(others) - 1`` reference calls a round over separate comparisons.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be >= 1 and warmup >= 0")
    if not others:
        return []
    others_inputs = [example_inputs] * len(others) if others_inputs is None else others_inputs
    if len(others_inputs) != len(others):
        raise ValueError(f"others_inputs has {len(others_inputs)} entries for {len(others)} models")
    models = [reference, *others]
    modes = [m.training for m in models]
    timers = [_Timer(m, x) for m, x in zip(models, [example_inputs, *others_inputs], strict=True)]
    for m in models:
        m.eval()
    times: list[list[float]] = [[] for _ in models]
    try:
        for _ in range(warmup):
            for timer in timers:
                timer.once()
        for r in range(rounds):
            for i in range(len(models)):
                k = (r + i) % len(models)
                times[k].append(timers[k].once())
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    ref = _timing(times[0], warmup, example_inputs, timers[0].device)
    out = []
    for k in range(1, len(models)):
        q1, q2, q3 = _quartiles([ta / tb for ta, tb in zip(times[0], times[k], strict=True)])
        b = _timing(times[k], warmup, others_inputs[k - 1], timers[k].device)
        out.append(Comparison(a=ref, b=b, speedup=q2, speedup_q1=q1, speedup_q3=q3))
    return out
