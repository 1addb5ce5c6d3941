"""Data-parallel MaskSparsity (issue 14): 2 CPU processes (gloo) compute what one process computes with the same
global batches, to float tolerance: the same masks, γ and accuracies.

Why they agree: each process takes images r, r + 2, ... of every global batch (the one-process batch, augmented
once); BatchNorm normalises with the global batch's statistics (a sum over the processes, differentiable); DDP
averages the gradients of the two halves, i.e. the gradient of the global batch's mean loss; the γ sub-gradient is
added after that average, on both processes alike. What differs is float summation order (~1e-7 relative per
operation in float32), which a few dozen SGD steps keep far below the gaps between the γ that decide a mask.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from common import data as cdata
from common import distributed as dist
from common.results import load_record
from common.runtime import REPO_ROOT
from masksparsity import claims, config
from masksparsity.train import Data, ShardedBatches, global_batch_norm, global_bn_forward
from tests.masksparsity import ddp_probe
from tests.smoke import launch_two as launch


@pytest.mark.parametrize("momentum", [0.1, None])
def test_global_bn_forward_equals_batchnorm_in_one_process(momentum):
    """In one process the global-batch BN is nn.BatchNorm2d: output, gradients and running statistics (float64:
    only the summation order differs)."""
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, momentum=momentum).double().train()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    ours = nn.BatchNorm2d(5, momentum=momentum).double().train()
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = (torch.randn(6, 5, 4, 4, dtype=torch.float64) * 3 + step).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        up = torch.randn(6, 5, 4, 4, dtype=torch.float64)
        expected = ref(x)
        (expected * up).sum().backward()
        with global_batch_norm(ours, force=True):
            out = ours(x2)
        assert "forward" not in vars(ours)  # the override is gone after the block
        (out * up).sum().backward()
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ours.eval()
    ref.eval()
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(global_bn_forward(ours, x), ref(x))  # eval: the running statistics


def test_global_bn_forward_output_equals_batchnorm():
    torch.manual_seed(1)
    ref = nn.BatchNorm2d(3).train()
    ours = nn.BatchNorm2d(3).train()
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    torch.testing.assert_close(global_bn_forward(ours, x), ref(x), rtol=1e-5, atol=1e-5)  # float32


def test_sharded_batches_follow_the_seeded_loader_and_interleave():
    """World 1: the same batches as common.data.loader(shuffle, seed, drop_last); world 2: the two shares of each
    batch, interleaved, are that batch."""
    ds = torch.utils.data.TensorDataset(torch.arange(50))
    one = [b[0].tolist() for b in cdata.loader(ds, 8, shuffle=True, seed=3, drop_last=True)]
    assert list(ShardedBatches(50, 8, 3)) == one and len(ShardedBatches(50, 8, 3)) == 6
    shares = [list(ShardedBatches(50, 8, 3, rank=r, world=2)) for r in (0, 1)]
    for batch, a, b in zip(one, *shares, strict=True):
        assert batch[0::2] == a and batch[1::2] == b


def test_in_memory_train_batches_are_shares_of_the_one_process_batch(monkeypatch):
    data = Data(config.smoke().data, torch.device("cpu"))
    one = list(data.train_batches(64, seed=5))
    shares = {}
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    for r in (0, 1):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        shares[r] = list(data.train_batches(64, seed=5))
    assert len(one) == len(shares[0]) == len(shares[1]) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(one, shares[0], shares[1], strict=True):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
    with pytest.raises(Exception, match="not divisible"):
        next(data.train_batches(63, seed=5))


@pytest.mark.e2e
def test_two_processes_train_mask_and_prune_like_one():
    """Without and with accumulation (one launch for both): micro-batch m of each process is its share of the global
    micro-batch m, whose BN statistics the processes share, so 2 processes compute what 1 does with the same batch
    and accumulation."""
    out = launch(["tests.masksparsity.ddp_probe"], {"MS_PROBE_ACCUMULATION": "1,2"}, timeout=900)
    both = json.JSONDecoder().raw_decode(out.stdout.split("MS_PROBE ", 1)[1])[0]
    assert sorted(both) == ["1", "2"]
    for accumulation, two in both.items():
        one = ddp_probe.probe(int(accumulation))
        assert two["world_size"] == 2 and one["world_size"] == 1
        assert two["mask"] == one["mask"], accumulation  # the same channels chosen from the trained γ
        # float64, 8 SGD steps + precise BN: summation order only (~1e-16 per operation, grown ~1e4x by the steps)
        assert two["gamma"] == pytest.approx(one["gamma"], rel=1e-9, abs=1e-12)
        assert two["running_mean"] == pytest.approx(one["running_mean"], rel=1e-9, abs=1e-12)
        assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-6)  # evaluate() sums float32 losses
        one_image = 100 / one["n_test"]  # an argmax may flip on a near-tie: at most one test image
        assert abs(two["test_acc"] - one["test_acc"]) <= one_image
        assert abs(two["pruned_test_acc"] - one["pruned_test_acc"]) <= one_image


SMOKE_CUT = ["--set", "sparsity.flops_reductions=(0.63,)", "--set", "arms.scratch=False", "--set",
             "arms.direct_prune=False"]  # fmt: skip


@pytest.mark.slow  # `make test-slow`: two cut-down smoke runs, one of them in 2 processes (minutes on 2 cores)
def test_smoke_in_two_processes_equals_one_process(tmp_path):
    """`python -m masksparsity reproduce --preset smoke` under a 2-process launch: the same masks and, within one
    test image, the same accuracies as one process; the record says how it ran."""
    records = {}
    for nproc in (1, 2):
        results = tmp_path / f"results{nproc}"
        args = ["masksparsity", "reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(results),
                "--threads", "1", *SMOKE_CUT]  # fmt: skip
        env = {"PRUNE_REPRO_CACHE": str(tmp_path / f"cache{nproc}"), "PRUNE_REPRO_WORKERS": "1"}
        if nproc == 2:
            launch(args, env)
        else:
            out = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env={**os.environ, **env},
                                 capture_output=True, text=True, timeout=900)  # fmt: skip
            assert out.returncode == 0, out.stderr[-4000:]
        records[nproc] = load_record(results / "masksparsity" / "smoke")
    one, two = records[1], records[2]
    assert one.provenance["world_size"] == 1 and "data_parallel" not in one.provenance
    assert two.provenance["world_size"] == 2 and two.provenance["data_parallel"]["processes"] == 2
    assert two.extra["mask_kept_channels"] == one.extra["mask_kept_channels"]
    assert two.config == one.config and [c.id for c in two.claims] == [c.id for c in one.claims]
    n_test = one.extra["split_sizes"]["test"]
    m1 = {(m.table, m.setting, m.metric): m for m in one.measurements}
    m2 = {(m.table, m.setting, m.metric): m for m in two.measurements}
    assert m1.keys() == m2.keys()
    for key, a in m1.items():
        b = m2[key]
        if key[2].startswith(claims.SPEEDUP):
            continue  # timed, not computed
        tol = 100 / n_test + 1e-9 if a.unit == "%" else 1e-3 * max(1.0, abs(a.mean))
        if key[2] in (claims.FLOPS, claims.PARAMS, claims.MASKED_SMALL):
            tol = 1e-9  # same masks: same architectures
        assert abs(a.mean - b.mean) <= tol, (key, a.mean, b.mean)


# ~50 s (three 2-process launches): `make test-slow`, with the other real-kill tests (tests/test_kill_and_resume.py),
# to keep `make test` with the install well under 15 minutes; the one-process resume of train_phase is in make test
@pytest.mark.slow
@pytest.mark.kernel_independent  # both runs use the same kernels
def test_a_killed_data_parallel_training_resumes_to_the_uninterrupted_result(tmp_path):
    """Two processes train inside a resume slot; killed right after saving epoch 1 (both exit at once, as a pre-empted
    job does), the same launch again trains only the third epoch and ends with the uninterrupted run's weights, bit
    for bit: rank 0 saved the model and optimizer, every rank its random generators (common.resume)."""

    def run(slot, *kill) -> dict | None:
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "common.launch", "--nproc", "2", "-m", "tests.masksparsity.resume_probe",
               str(slot), *kill]  # fmt: skip
        out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        if kill:
            assert out.returncode != 0, "the killed launch exits with an error"
            return None
        assert out.returncode == 0, out.stderr[-4000:]
        line = next(x for x in out.stdout.splitlines() if x.startswith("MS_RESUME "))
        return json.loads(line.split(" ", 1)[1])

    reference = run(tmp_path / "uninterrupted")
    assert reference["world_size"] == 2 and len(reference["lrs"]) == 3
    run(tmp_path / "killed", "1")
    assert (tmp_path / "killed" / "train_phase.0" / "state" / "random_states_1.pkl").is_file()
    resumed = run(tmp_path / "killed")
    assert resumed["lrs"] == reference["lrs"][2:], "only the third epoch was trained again"
    assert resumed["digest"] == reference["digest"]
