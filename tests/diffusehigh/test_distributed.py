"""The presets split across processes (``make reproduce-diffusehigh NPROC=N``, common.distributed): the record of N
processes equals the one-process record apart from timings and provenance, and the images are the same.

The pixel presets split their seeds; the paper preset splits its prompts. A cut-down smoke run (two seeds, two images
each, four sampler steps) is launched for real in two CPU processes (gloo, the command common.launch runs) in
`make test`; the whole smoke preset the same way is slow. The paper preset's split is checked in this process on the
tiny SDXL by playing both ranks in turn, with the collectives replaced by what two processes would exchange.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from common import distributed
from common.launch import build_command
from common.results import load_record
from common.runtime import REPO_ROOT
from diffusehigh import config, evaluation, reproduce
from tests.smoke import run_smoke

from .test_evaluation import needs_extra, paths  # noqa: F401  (the fixture)
from .tiny_metric_nets import TinyInception

pytestmark = pytest.mark.e2e
LAUNCH_TIMEOUT_S = 1200
"""The launched two-process smoke run's limit (it took 4.6 min on a 2-core CPU under a load of ~10)."""


def measured(record):
    """Every measurement but the timings (they differ between runs)."""
    return [(m.table, m.setting, m.metric, m.values, m.seeds) for m in record.measurements
            if m.metric != reproduce.M_TIME]  # fmt: skip


@pytest.mark.slow  # two smoke runs, one of them in two launched processes: minutes on a loaded 2-core CPU
@pytest.mark.timeout(LAUNCH_TIMEOUT_S + 900)  # + the one-process run
def test_smoke_in_two_launched_processes_equals_one_process(tmp_path, monkeypatch):
    """``python -m common.launch --nproc 2 -m diffusehigh reproduce --preset smoke`` with two seeds (one per process)
    against the one-process run with one worker: the same measurements, per-image values, claims (but the timed cost
    claim, C6) and a byte-identical sample grid (the images); the record says 2 processes."""
    sets = ["--set", "seeds=(0, 1)"]
    monkeypatch.setenv("PRUNE_REPRO_WORKERS", "1")
    one = load_record(run_smoke("diffusehigh", tmp_path / "one", "--threads", "1", *sets))
    cmd = [sys.executable, "-m", "common.launch", "--nproc", "2", "-m", "diffusehigh", "reproduce", "--preset", "smoke",
           "--no-readme", "--results-dir", str(tmp_path / "two"), "--threads", "1", *sets]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the cache of the one-process run (conftest's) is shared
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-4000:]
    two_dir = tmp_path / "two" / "diffusehigh" / "smoke"
    two = load_record(two_dir)
    assert two.provenance["world_size"] == 2 and one.provenance["world_size"] == 1
    assert measured(one) == measured(two)
    for key in ("per_image", "reference", "jump", "quality_gate", "sizes", "grid_rows"):
        assert one.extra[key] == two.extra[key], key
    assert [dataclasses.asdict(c) for c in one.claims[:-1]] == [dataclasses.asdict(c) for c in two.claims[:-1]]
    assert [c.id for c in one.claims] == [c.id for c in two.claims]
    grid = reproduce.GRID_FILE
    assert (tmp_path / "one" / "diffusehigh" / "smoke" / grid).read_bytes() == (two_dir / grid).read_bytes()


TINY = ["seeds=(0, 1)", "num_samples=2", "model.num_inference_steps=4", "stages.stage_steps=2", "stages.dwt_steps=1",
        "train.steps=4", "train.warmup_steps=1", "data.num_train_images=16", "data.num_reference_images=4",
        "metrics.kid_feature_steps=2", "metrics.timing_repeats=1", "ablation.sharpening_alpha=(0.0,)",
        "ablation.jump_factors=()", "ablation.direct_samples=1"]  # fmt: skip
"""Smoke cut down to what the split touches: one seed per process, each with its base samples, DiffuseHigh, the
SDEdit, bicubic and direct baselines, one ablation row, their per-image metrics and KID (a 2-step feature net)."""


@pytest.mark.timeout(900)  # ~25 s of 2 idle cores, mostly imports in 3 processes; minutes niced beside other jobs
def test_tiny_smoke_in_two_launched_processes_equals_one_process(tmp_path, monkeypatch):
    """Process 0 loads the base model and the KID net (trained by the one-process run, from the shared cache) and
    hands them and the references' features to process 1; each samples one seed; process 0 gathers them in seed
    order. The record equals the one-process record (every measurement but the timings, per-image values, claims
    but the timed C6) and the sample grid is byte-identical. Needs no [eval] extra."""
    sets = [a for s in TINY for a in ("--set", s)]
    monkeypatch.setenv("PRUNE_REPRO_WORKERS", "1")  # both seeds in this process, as the ranks run theirs
    monkeypatch.setenv("PRUNE_REPRO_CACHE", str(tmp_path / "cache"))
    one_dir = run_smoke("diffusehigh", tmp_path / "one", "--threads", "1", *sets)
    # What `python -m common.launch --nproc 2 -m diffusehigh ...` runs on a machine without CUDA (torch's launcher,
    # gloo), without the process of common.launch itself (one torch import less: seconds on this test's clock).
    args = ["-m", "diffusehigh", "reproduce", "--preset", "smoke", "--no-readme", "--threads", "1",
            "--results-dir", str(tmp_path / "two"), *sets]  # fmt: skip
    cmd, launch_env = build_command(2, args, cuda_devices=0, mixed_precision="no")
    env = {**os.environ, **launch_env, "OMP_NUM_THREADS": "1"}  # with this test's cache: the base model, the KID net
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-4000:]
    two_dir = tmp_path / "two" / "diffusehigh" / "smoke"
    one, two = load_record(one_dir), load_record(two_dir)
    assert two.provenance["world_size"] == 2 and one.provenance["world_size"] == 1
    assert two.extra["workers"] == one.extra["workers"] == 1
    assert measured(one) == measured(two) and any(m[2].startswith("KID") for m in measured(two))
    assert one.extra["per_image"] and one.extra["per_image"] == two.extra["per_image"]
    for key in ("reference", "jump", "quality_gate", "sizes", "grid_rows"):
        assert one.extra.get(key) == two.extra.get(key), key
    assert [dataclasses.asdict(c) for c in one.claims[:-1]] == [dataclasses.asdict(c) for c in two.claims[:-1]]
    assert [c.id for c in one.claims] == [c.id for c in two.claims]
    grid = reproduce.GRID_FILE
    assert (one_dir / grid).read_bytes() == (two_dir / grid).read_bytes()


class TwoRanks:
    """Plays rank ``rank`` of 2 in this process: ``shard`` takes that rank's share; ``gather_objects`` records what
    rank 1 sends and gives rank 0 its own object followed by rank 1's (in the order the calls were made)."""

    def __init__(self):
        self.rank, self.sent = 1, []

    def install(self, monkeypatch):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "rank", lambda: self.rank)
        monkeypatch.setattr(distributed, "device", lambda: __import__("torch").device("cpu"))
        monkeypatch.setattr(distributed, "describe", lambda device=None: {"world_size": 2})
        monkeypatch.setattr(distributed, "gather_objects", self.gather)

    def gather(self, obj):
        if self.rank == 1:
            self.sent.append(obj)
            return [obj]
        return [obj, self.sent.pop(0)]


@needs_extra
def test_paper_preset_split_over_two_processes_equals_one(tmp_path, monkeypatch, paths):  # noqa: F811
    """Three prompts on the tiny SDXL with the evaluation on (tiny Inception, three references): one process, then
    rank 1 (prompt 1, reference 1) and rank 0 (prompts 0 and 2, references 0 and 2) of two. Rank 1 writes no record;
    rank 0's record equals the one-process record (measurements incl. FID/KID/IS), and the saved images are the same
    files."""
    from diffusehigh import pipeline as pipeline_lib

    from .tiny_sdxl import WithEmbeddings

    monkeypatch.setattr(pipeline_lib, "load_local_pipeline", lambda path, dtype, device: WithEmbeddings())
    monkeypatch.setattr(evaluation, "load_inception", lambda path, device: TinyInception())
    sets = [f"sdxl_path={paths['sdxl']}", "model.resolution=32", "model.num_inference_steps=4", "model.dtype=float32",
            "model.vae_tiling=False", "stages.scale_factors=(1.5, 2.0)", "stages.stage_steps=2", "stages.dwt_steps=1",
            "num_samples=3", "save_images=3", "ablation.baselines=('bicubic',)", "metrics.patch_size=32",
            "metrics.fid_resize=16", "metrics.crops_per_image=2", f"inception_path={paths['inception']}",
            f"reference_images_path={paths['refs']}"]  # fmt: skip

    def run(name: str):
        from common.cli import main

        argv = ["reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_path / name), "--device",
                "cpu", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
        code = main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv,
                    supports_distributed=True)  # as diffusehigh/__main__.py declares  # fmt: skip
        assert code == 0
        return tmp_path / name / "diffusehigh" / "paper"

    one_dir = run("one")
    ranks = TwoRanks()
    ranks.install(monkeypatch)
    two_dir = run("two")  # rank 1
    assert not (two_dir / "record.json").exists() and len(ranks.sent) == 2  # its reference features, its images
    assert sorted(p.name for p in (two_dir / "images").iterdir()) == [f"prompt001_{s}.png" for s in (32, 48, 64)]
    ranks.rank = 0
    run("two")
    assert not ranks.sent
    one, two = load_record(one_dir), load_record(two_dir)
    assert measured(one) == measured(two) and reproduce.eval_table(32, 64) in two.tables()
    assert one.extra["evaluation"] == two.extra["evaluation"] and two.provenance["world_size"] == 2
    images = sorted(p.name for p in (one_dir / "images").iterdir())
    assert images == sorted(p.name for p in (two_dir / "images").iterdir()) and len(images) == 9
    for name in images:
        assert (one_dir / "images" / name).read_bytes() == (two_dir / "images" / name).read_bytes(), name
