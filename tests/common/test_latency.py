from __future__ import annotations

import pytest
import torch
from torch import nn

from common.latency import compare_latency, compare_latency_many, measure_latency


class Repeat(nn.Module):
    """A linear layer applied ``k`` times: ``k`` times the work of one application."""

    def __init__(self, k: int, dim: int = 256):
        super().__init__()
        self.k, self.linear = k, nn.Linear(dim, dim)

    def forward(self, x):
        for _ in range(self.k):
            x = self.linear(x)
        return x


class Recorder(nn.Module):
    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(self.name)
        return x


def test_measure_latency_reports_consistent_statistics():
    model = Repeat(2).train()
    t = measure_latency(model, torch.randn(32, 256), warmup=2, repeats=9)
    assert 0 < t.min_s <= t.q1_s <= t.median_s <= t.q3_s and t.iqr_s >= 0
    assert t.repeats == 9 and t.batch_size == 32 and t.device == "cpu"
    assert t.throughput == pytest.approx(32 / t.median_s)
    assert model.training, "the model's mode is restored"


def test_compare_latency_detects_a_real_difference():
    x = torch.randn(64, 256)
    cmp = compare_latency(Repeat(8), Repeat(1), x, warmup=3, rounds=15)
    # 8x the matmuls; overheads shrink the ratio, but it stays far above 1 on any machine.
    assert cmp.speedup > 2.5
    assert cmp.speedup_q1 <= cmp.speedup <= cmp.speedup_q3
    assert cmp.a.median_s > cmp.b.median_s


def test_compare_latency_interleaves_and_alternates_order():
    log: list[str] = []
    compare_latency(Recorder("a", log), Recorder("b", log), torch.zeros(1), warmup=1, rounds=4)
    warmup, rounds = ["a", "b"], ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert log == [*warmup, *rounds]


def test_compare_latency_many_rotates_the_order_and_shares_the_reference_timings():
    log: list[str] = []
    ref, b, c = Recorder("r", log), Recorder("b", log), Recorder("c", log)
    cmps = compare_latency_many(ref, [b, c], torch.zeros(1), warmup=1, rounds=3)
    warmup, rounds = ["r", "b", "c"], ["r", "b", "c", "b", "c", "r", "c", "r", "b"]
    assert log == [*warmup, *rounds]
    assert len(cmps) == 2 and cmps[0].a == cmps[1].a and cmps[0].a.repeats == 3


def test_compare_latency_many_measures_each_model_against_the_reference():
    x = torch.randn(64, 256)
    slow, fast = compare_latency_many(Repeat(8), [Repeat(4), Repeat(1)], x, warmup=2, rounds=9)
    assert fast.speedup > slow.speedup > 1.2  # 8/4 and 8/1 the matmuls, shrunk by overheads
    assert compare_latency_many(Repeat(1), [], x) == []
    with pytest.raises(ValueError, match="others_inputs has 1 entries for 2 models"):
        compare_latency_many(Repeat(1), [Repeat(1), Repeat(1)], x, others_inputs=[x])


def test_inputs_can_be_tuples_and_dicts():
    class Add(nn.Module):
        def forward(self, x, y):
            return x + y

    assert measure_latency(Add(), (torch.ones(2), torch.ones(2)), warmup=0, repeats=2).batch_size == 2
    assert measure_latency(Add(), {"x": torch.ones(3), "y": torch.ones(3)}, warmup=0, repeats=2).batch_size == 3


def test_bad_arguments():
    with pytest.raises(ValueError):
        measure_latency(Repeat(1), torch.randn(1, 256), repeats=0)
