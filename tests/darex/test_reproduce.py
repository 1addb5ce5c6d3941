"""The smoke preset end to end (both regimes in one record), with one worker process and with two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.results import VERDICTS, load_record
from common.runtime import REPO_ROOT, generator
from darex import claims, config, reproduce, synthetic
from darex.method import dare
from darex.regimes import SEARCH_MASK, SYNTHETIC, TEXT, mask_ids, model_table, reference_table
from tests.conftest import run_darex_smoke

pytestmark = pytest.mark.e2e  # whole preset runs; `make test` skips them on its second kernel pass


@pytest.fixture(scope="module")
def smoke_one_worker(tmp_path_factory):
    return run_darex_smoke(tmp_path_factory.mktemp("w1"), 1) / "darex" / "smoke"


@pytest.fixture(scope="module")
def smoke_two_workers(darex_smoke):
    return darex_smoke / "darex" / "smoke"  # the session's run (tests/conftest.py)


@pytest.fixture(scope="module")
def smoke_runs(smoke_one_worker, smoke_two_workers):
    """The smoke preset with 1 worker (every job in this process) and with 2 worker processes."""
    return {1: smoke_one_worker, 2: smoke_two_workers}


def _comparable(out: Path) -> dict:
    """The record in ``out`` without what legitimately differs between runs: provenance (timings, world size) and
    how the jobs were spread (worker count, time per phase)."""
    record = json.loads((out / "record.json").read_text())
    record.pop("provenance")
    record["extra"].pop("workers")
    record["extra"].pop("job_phases_s")
    return record


@pytest.mark.slow  # one more smoke run (~20 s); make test keeps common.parallel's own 1-vs-2-worker test
@pytest.mark.timeout(900)
def test_one_and_two_workers_write_the_same_record(smoke_runs):
    for workers, out in smoke_runs.items():
        assert json.loads((out / "record.json").read_text())["extra"]["workers"] == workers
    assert _comparable(smoke_runs[1]) == _comparable(smoke_runs[2])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_two_launched_processes_write_the_record_of_one(smoke_one_worker, tmp_path):
    """``python -m common.launch --nproc 2 -m darex reproduce --preset smoke`` (what ``make reproduce-darex
    PRESET=smoke NPROC=2`` runs; CPU processes on gloo): the ranks split the jobs, rank 0 writes a record equal to
    the one-process run's, and each rank runs its jobs in itself (one worker)."""
    env = {**os.environ, "PRUNE_REPRO_CACHE": str(tmp_path / "cache"), "PRUNE_REPRO_WORKERS": "2",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = [sys.executable, "-m", "common.launch", "--nproc", "2", "-m", "darex", "reproduce", "--preset", "smoke",
           "--no-readme", "--results-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3500)
    assert done.returncode == 0, done.stderr[-4000:]
    out = tmp_path / "darex" / "smoke"
    record = json.loads((out / "record.json").read_text())
    assert record["provenance"]["world_size"] == 2 and record["extra"]["workers"] == 1
    assert "gloo" in record["provenance"]["backend"].lower()
    assert _comparable(out) == _comparable(smoke_one_worker)


def test_smoke_record_holds_both_regimes_and_their_claims(smoke_two_workers):
    record = load_record(smoke_two_workers)
    cfg = config.smoke()
    assert record.extra["regimes"] == [TEXT, SYNTHETIC] and record.extra["workers"] == 2
    masks = mask_ids(cfg.seeds, cfg.prune.mask_seeds)
    assert all(m % 1000 != SEARCH_MASK for m in masks)
    for regime in (TEXT, SYNTHETIC):
        dare_m = record.get(model_table(regime, "standard"), "DARE (1/(1-p))", "accuracy, p=0.99")
        assert dare_m.seeds == masks, "random methods are recorded per mask: the replication unit"
        assert record.get(reference_table(regime), "fine-tuned (unpruned)", "accuracy").seeds == list(cfg.seeds)
    ids = [c.id for c in record.claims]
    assert ids == [f"C{i}-{s}" for i in range(1, 6) for s in ("mlp", "rt")]
    for c in record.claims:
        assert c.verdict in VERDICTS and c.precondition and c.effect and c.n == len(masks)
        assert c.stats["seeds_a"] == masks[: len(masks) // 2] and c.stats["seeds_b"] == masks[len(masks) // 2 :]
    # The tiny BERT's deltas carry nothing: every claim of the real regime is not testable.
    assert {c.verdict for c in record.claims if c.id.endswith("-rt")} == {"not testable here"}
    # The verdicts are re-derived from the saved record alone.
    assert [j.judgement.verdict for j in claims.judge(record)] == [c.verdict for c in record.claims]


def test_smoke_report_shows_both_regimes(smoke_two_workers):
    text = (smoke_two_workers / "results.md").read_text()
    for heading in ("#### Real regime: tiny-bert on Rotten Tomatoes", "#### Collapse regime", "#### Claims"):
        assert heading in text
    assert "Inside the jobs (2 worker processes" in text and "DAREx's decision margins" in text
    for figure in ("metric_vs_rate.png", "rescaling_factor.png", "accuracy_vs_rescaling.png"):
        assert (smoke_two_workers / "figures" / figure).is_file()


def test_rescaling_one_drawn_mask_is_dare_with_that_q_exactly():
    """The collapse regime draws each mask once (q = 1) and divides by q: bit for bit ``dare(deltas, p, q)``."""
    deltas = {"a": torch.randn(64, 32, generator=generator(0)), "b": torch.randn(32, generator=generator(1))}
    kept = dare(deltas, 0.9, 1.0, generator(7))
    for q in (0.1, 0.37, 1.0):
        expected = dare(deltas, 0.9, q, generator(7))
        for name in deltas:
            assert torch.equal(kept[name] / q, expected[name])


def test_jobs_cover_every_model_and_rate():
    cfg = config.mini()
    text_train, text_prune = reproduce.text_jobs(cfg)
    syn_train, syn_prune = synthetic.jobs(cfg)
    assert {j.model for j in text_train} == {"standard", "large-delta", "adamr-l2 λ=0.1"}
    assert {(j.model, j.rate) for j in text_prune if j.part == "rate"} == {
        *(("standard", p) for p in cfg.prune.rates),
        *(("large-delta", p) for p in cfg.prune.large_delta_rates),
        ("adamr-l2 λ=0.1", cfg.prune.figure_rate),
    }
    assert [(j.seed, j.model) for j in syn_train] == [(s, "pretrained") for s in (0, 1, 2, 3)]  # one task per seed
    assert [(j.seed, j.model) for j in syn_prune] == [
        (s, m) for s in (0, 1, 2, 3) for m in ("standard", "large-delta", "adamr-l2 λ=0.02")
    ]
    assert {j.seed for j in text_train} == {0}, "the real regime keeps the run's seeds"
    assert len(set(text_prune + syn_prune)) == len(text_prune) + len(syn_prune), "jobs are distinct"
