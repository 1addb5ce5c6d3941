"""The smoke preset end to end through the shared CLI, the checkpoint logic, and the presets' shape."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from common.cli import main, report_all
from common.config import ConfigError, override
from common.errors import UserError
from common.results import VERDICTS, load_record
from diffusehigh import claims as claims_lib
from diffusehigh import config, core, reproduce
from diffusehigh import train as train_lib
from diffusehigh.__main__ import COMMANDS
from tests.smoke import load_smoke_record, run_smoke

pytestmark = pytest.mark.e2e  # whole preset runs; `make test` skips them on its second kernel pass


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    run_smoke("diffusehigh", results, "--threads", "1")
    return results


def test_smoke_writes_a_valid_record(smoke_results):
    """Structure and invariants only: the smoke model is trained for 30 steps and sampled in float32, so its metric
    values and verdicts are whatever this machine's kernels give (the rules themselves are tested on fixed inputs
    below: test_detail_rule_..., test_sharpening_rule_...)."""
    out = smoke_results / "diffusehigh" / "smoke"
    record = load_smoke_record(out, "diffusehigh")
    table = reproduce.main_table(32, 2.0)
    settings = {m.setting for m in record.tables()[table]}
    assert {
        reproduce.REAL,
        reproduce.BASE,
        reproduce.DIRECT,
        reproduce.BICUBIC,
        reproduce.SDEDIT,
        reproduce.DH,
    } <= settings
    # Rendered, not sampled: one disk per real 32x32 image, with a margin (test_metrics.py), so no model or kernel
    # decides it.
    assert record.get(table, reproduce.REAL, reproduce.M_OBJ).mean == 1.0
    for m in record.measurements:  # every value is a finite number in its metric's range
        values = np.asarray(m.values, float)
        assert values.size and np.isfinite(values).all(), (m.setting, m.metric)
        if m.metric in (reproduce.M_OBJ, reproduce.M_HF, reproduce.M_TIME):
            assert (values >= 0).all(), (m.setting, m.metric)
        if m.metric == reproduce.M_SINGLE:
            assert ((values >= 0) & (values <= 100)).all()
        if m.metric == reproduce.M_AREA:
            assert ((values >= 0) & (values <= 1)).all()
        if m.metric == reproduce.M_PSNR:  # images in [0, 1]: MSE <= 1
            assert (values >= 0).all()
        if m.metric == reproduce.M_BORDER:
            assert ((values >= 0) & (values <= 1)).all()
    lr_psnr = {m.setting for m in record.tables()[table] if m.metric == reproduce.M_PSNR}
    assert lr_psnr == {reproduce.BICUBIC, reproduce.SDEDIT, reproduce.DH}  # direct has no guide to compare with
    # The smoke preset runs the jump test (2x -> 4x vs one jump to 4x) on 2 images per seed, with its band table.
    jump = reproduce.jump_table(64, 4.0)
    assert {m.setting for m in record.tables()[jump]} == {reproduce.REAL, reproduce.BICUBIC,
                                                           reproduce.progressive_name((2.0, 4.0)),
                                                           reproduce.one_jump_name(4.0)}  # fmt: skip
    assert reproduce.band_table(64, 4.0) in record.tables()
    assert [c.id for c in record.claims] == ["C1", "C2", "C3a", "C3b", "C4a", "C4b", "C5a", "C5b", "C6"]
    assert len({c.claim for c in record.claims}) == 9
    assert all(c.verdict in VERDICTS for c in record.claims)
    assert all("Rule" in c.our_evidence and c.effect and c.precondition for c in record.claims)
    # The claims are a function of the record: judging it again gives the same claims.
    again = load_record(out)
    again.claims = []
    claims_lib.add_claims(again)
    assert [dataclasses.asdict(c) for c in again.claims] == [dataclasses.asdict(c) for c in record.claims]
    assert (out / reproduce.GRID_FILE).stat().st_size > 1000
    assert reproduce.GRID_FILE in (out / "results.md").read_text()
    # Where the time went: every phase of the run (plus the rest, "other"), within the wall time; inside the
    # workers, every sampling phase and the metrics.
    phases = record.provenance["phases_s"]
    assert set(phases) == {"base model", "feature net", "metrics", "sampling + metrics (workers)", "timing",
                           "sample grid", "other"}  # fmt: skip
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= record.provenance["wall_time_s"] + 0.05
    assert set(record.extra["worker_phases_s"]) == {"sampling: base", "sampling: direct", "sampling: DiffuseHigh",
                                                    "sampling: baselines", "metrics"}  # fmt: skip


@pytest.mark.slow  # `make test-slow`; CI keeps darex's 1-vs-2-worker test and tests/common/test_parallel.py
def test_one_and_two_workers_write_the_same_record(tmp_path, monkeypatch):
    """The smoke preset with two seeds, its seeds run in the main process (1 worker) and in 2 worker processes (one
    torch thread each, as the main process here): the same record apart from timings and provenance. The cost
    claim (C6, the last) is judged on timings, so only its id is compared."""
    records = {}
    for workers in (1, 2):
        monkeypatch.setenv("PRUNE_REPRO_WORKERS", str(workers))
        out = run_smoke("diffusehigh", tmp_path / f"w{workers}", "--threads", "1", "--set", "seeds=(0, 1)")
        records[workers] = load_record(out)
    one, two = records[1], records[2]
    assert (one.extra["workers"], two.extra["workers"]) == (1, 2)

    def measured(record):
        return [(m.table, m.setting, m.metric, m.values, m.seeds) for m in record.measurements
                if m.metric != reproduce.M_TIME]  # fmt: skip

    assert measured(one) == measured(two)
    for key in ("per_image", "reference", "jump", "quality_gate", "sizes", "grid_rows"):
        assert one.extra[key] == two.extra[key], key
    assert [dataclasses.asdict(c) for c in one.claims[:-1]] == [dataclasses.asdict(c) for c in two.claims[:-1]]
    assert [c.id for c in one.claims] == [c.id for c in two.claims]


def test_report_rerenders_from_the_record(smoke_results, tmp_path):
    block = report_all("diffusehigh", smoke_results, reproduce.report, readme=None, link_base=tmp_path)
    assert "Preset `smoke`" in block and "Claims" in block


def test_checkpoint_is_used_only_when_its_training_hash_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(train_lib, "CHECKPOINT_DIR", tmp_path)
    cfg = config.smoke()
    state = {"w": torch.arange(4.0)}
    train_lib.write_checkpoint(state, {"train_hash": train_lib.train_hash(cfg)}, "smoke")
    loaded, meta = train_lib.load_committed_checkpoint(cfg, "smoke")
    assert torch.equal(loaded["w"], state["w"]) and len(meta["sha256"]) == 64
    other = override(cfg, ["train.steps=31"])
    assert train_lib.load_committed_checkpoint(other, "smoke") is None
    assert train_lib.train_hash(override(cfg, ["num_samples=9"])) == train_lib.train_hash(cfg)


def test_committed_mini_checkpoint_matches_the_mini_config():
    weights, sidecar = train_lib.checkpoint_paths("mini")
    if not weights.exists():
        pytest.skip("no committed mini checkpoint")
    meta = json.loads(sidecar.read_text())
    assert meta["train_hash"] == train_lib.train_hash(config.mini()), (
        "retrain: python -m diffusehigh train --preset mini"
    )
    assert meta["sha256"] == train_lib.sha256_file(weights) and weights.stat().st_size <= 5 * 2**20
    assert "python -m diffusehigh train --preset mini" in meta["command"]  # how to train the same weights again


def test_presets():
    mini, paper = config.mini(), config.paper()
    assert len(mini.seeds) >= 2 and mini.stages.scale_factors == (2.0, 4.0) and mini.ablation.one_jump
    assert paper.model.backbone == "sdxl" and paper.stages.dwt_steps == 5 and paper.stages.stage_steps == 15
    assert paper.stages.diffusehigh_guidance_scale == 10.0 and paper.model.guidance_scale == 5.0
    assert paper.stages.scale_factors == (2.0, 3.0, 4.0) and paper.stages.dwt_wave == "db4"
    p = reproduce.plan(mini)
    assert reproduce.ONE_JUMP in p.main[4.0] and reproduce.DIRECT in p.main[2.0]
    assert "dwt_steps=0" in p.ablation[2.0]
    assert p.jump == (8.0, reproduce.progressive_name((2.0, 4.0, 8.0)), reproduce.one_jump_name(8.0))


def _paper_cli(tmp_path, *sets: str) -> int:
    argv = ["reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_path / "results"),
            "--device", "cpu", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    return main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv)


@pytest.fixture
def sdxl_dir(tmp_path):
    """A directory that passes the path check (the pipeline itself is never loaded in these tests)."""
    root = tmp_path / "sdxl"
    root.mkdir()
    (root / "model_index.json").write_text("{}")
    return root


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if SDXL would be loaded or the pixel model trained: the checks must come first."""
    from diffusehigh import pipeline as pipeline_lib

    def expensive(*args, **kwargs):
        raise AssertionError("expensive work started before the config was checked")

    monkeypatch.setattr(pipeline_lib, "load_local_pipeline", expensive)
    monkeypatch.setattr(train_lib, "get_base_model", expensive)


@pytest.mark.parametrize(
    "sets, expected",
    [
        ((), ["sdxl_path", "no path given", "--set sdxl_path=", "model_index.json"]),
        (("sdxl_path=/nonexistent/sdxl",), ["sdxl_path", "/nonexistent/sdxl does not exist", "--set sdxl_path="]),
    ],
    ids=["missing", "nonexistent"],
)
def test_paper_preset_without_weights_fails_with_one_line_before_loading(tmp_path, capsys, no_loading, sets, expected):
    assert _paper_cli(tmp_path, *sets) == 2  # a user error: message on stderr, no traceback
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("diffusehigh: error: ") and all(e in err for e in expected), err
    assert not (tmp_path / "results" / "diffusehigh" / "paper" / "record.json").exists()


def test_paper_preset_paths_are_all_checked_before_loading(tmp_path, capsys, no_loading, sdxl_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n \n")
    cases = [
        ((f"sdxl_path={empty}",), "sdxl_path: " + str(empty) + " has no model_index.json"),
        ((f"sdxl_path={sdxl_dir}", "prompts_path=/nonexistent/prompts.txt"), "prompts_path"),
        ((f"sdxl_path={sdxl_dir}", f"prompts_path={prompts}"), "holds no prompts"),
        ((f"sdxl_path={sdxl_dir}", "inception_path=/nonexistent/weights.pth"), "inception_path"),
        ((f"sdxl_path={sdxl_dir}", "stages.scale_factors=(1.5, 2.03)"), "stages.scale_factors"),  # 2079: not x8
        ((f"sdxl_path={sdxl_dir}", "stages.stage_steps=60"), "model.num_inference_steps"),
        ((f"sdxl_path={sdxl_dir}", "stages.dwt_wave='db99'"), "stages.dwt_wave"),
    ]
    for sets, expected in cases:
        assert _paper_cli(tmp_path, *sets) == 2, sets
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (sets, err)


@pytest.mark.parametrize(
    "assignment, key",
    [
        ("stages.dwt_steps=-1", "stages.dwt_steps must be >= 0"),
        ("stages.sharpening_sigma=(2.0, 1.0)", "stages.sharpening_sigma"),
        ("stages.sharpening_kernel_size=4", "stages.sharpening_kernel_size must be odd"),
        ("stages.scale_factors=(2.0, 1.5)", "stages.scale_factors must be increasing"),
        ("stages.scale_factors=()", "stages.scale_factors"),
        ("stages.noise_sigma=0.0", "stages.noise_sigma must be > 0"),
        ("stages.stage_steps=500", "stages.stage_steps"),  # more steps than timesteps below sigma 0.78 (t ~ 213)
        ("ablation.dwt_steps=(0, -3)", "ablation.dwt_steps must be >= 0"),
        ("ablation.dwt_level=(0,)", "ablation.dwt_level must be >= 1"),
        ("ablation.scale_factors=(0.5,)", "ablation.scale_factors (8, 8) must not be smaller than the base (16, 16)"),
        ("model.num_train_timesteps=0", "model.num_train_timesteps must be >= 1"),
        ("model.norm_num_groups=0", "model.norm_num_groups must be >= 1"),
        ("model.beta_end=1.5", "model.beta_end must be in (0, 1)"),
        ("model.num_inference_steps=0", "model.num_inference_steps must be >= 1"),
        ("model.norm_num_groups=3", "model.norm_num_groups"),
        ("num_samples=0", "num_samples must be >= 1"),
        ("data.renderer='none'", "data.renderer"),
    ],
)
def test_a_bad_config_value_is_one_line_before_any_training(tmp_path, capsys, no_loading, assignment, key):
    argv = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_path), "--set", assignment]
    assert main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err


def test_a_bad_config_value_is_a_config_error_chained_to_its_cause():
    """Checks raise ConfigError themselves; the one library error that means a bad value (stage steps that do not
    fit below the noise level's timestep) is re-raised as one, chained to the original."""
    with pytest.raises(ConfigError, match=re.escape("stages.noise_sigma must be > 0")) as direct:
        reproduce.validate_config(override(config.smoke(), ["stages.noise_sigma=0.0"]))
    assert direct.value.__cause__ is None
    with pytest.raises(ConfigError, match=re.escape("stages.stage_steps / noise_sigma")) as wrapped:
        reproduce.validate_config(override(config.smoke(), ["stages.stage_steps=500"]))
    assert type(wrapped.value.__cause__) is ValueError and "use fewer stage steps" in str(wrapped.value.__cause__)


def test_a_bug_in_the_checked_code_is_not_reported_as_a_user_error(tmp_path, capsys, monkeypatch, no_loading):
    """A ValueError from code validate_config calls (not from a check of a value) is a bug: it propagates as itself,
    with its traceback, and the CLI does not turn it into a one-line user error (exit 2)."""

    def broken(*args, **kwargs):
        raise ValueError("bug")

    monkeypatch.setattr(reproduce, "build_scheduler", broken)
    with pytest.raises(ValueError, match=r"^bug$") as raised:
        reproduce.validate_config(config.smoke())
    assert not isinstance(raised.value, UserError)
    assert any(entry.name == "broken" for entry in raised.traceback)  # the origin is kept
    argv = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_path)]
    with pytest.raises(ValueError, match=r"^bug$"):
        main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv)
    assert "diffusehigh: error:" not in capsys.readouterr().err

    monkeypatch.setattr(core, "stage_sizes", broken)  # the same for the stage-size arithmetic
    with pytest.raises(ValueError, match=r"^bug$") as raised:
        reproduce.validate_config(config.smoke())
    assert not isinstance(raised.value, UserError)


def test_every_preset_passes_its_own_checks(sdxl_dir):
    for name, preset in config.PRESETS.items():
        cfg = preset() if name != "paper" else override(preset(), [f"sdxl_path={sdxl_dir}"])
        reproduce.validate_config(cfg)


def test_paper_preset_plumbing_on_a_tiny_sdxl(tmp_path, monkeypatch):
    """run_sdxl end to end with a tiny random SDXL (prompts replaced by embeddings: no tokenizer offline)."""
    from diffusehigh import pipeline as pipeline_lib

    from .tiny_sdxl import WithEmbeddings

    fake = WithEmbeddings()
    monkeypatch.setattr(pipeline_lib, "load_local_pipeline", lambda path, dtype, device: fake)
    sdxl_dir = tmp_path / "tiny-sdxl"  # only the path check reads it; the pipeline is the fake above
    sdxl_dir.mkdir()
    (sdxl_dir / "model_index.json").write_text("{}")
    sets = [f"sdxl_path={sdxl_dir}", "model.resolution=32", "model.num_inference_steps=10", "model.dtype=float32",
            "model.vae_tiling=False", "stages.scale_factors=(1.5, 2.0)", "stages.stage_steps=4",
            "stages.dwt_steps=2", "num_samples=2", "save_images=1",
            "ablation.baselines=('bicubic', 'sdedit', 'direct')"]  # fmt: skip
    argv = ["reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_path), "--device", "cpu"]
    argv += [a for s in sets for a in ("--set", s)]
    assert main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv) == 0
    record = load_record(tmp_path / "diffusehigh" / "paper")
    assert len(fake.calls) == 6 and fake.calls[0]["target_height"] == [48, 64]  # per image: DH, SDEdit, direct
    assert fake.calls[0]["diffusehigh_guidance_scale"] == 10.0 and fake.calls[0]["guidance_scale"] == 5.0
    assert fake.calls[1]["enable_dwt"] is False and fake.calls[2]["direct"] and fake.calls[2]["height"] == 64
    table = "SDXL 32 -> 64 (stages [48, 64])"
    assert record.get(table, "DiffuseHigh", reproduce.M_TIME).mean > 0
    for size in (48, 64):  # the intermediate stage is measured too
        assert record.get(table, f"DiffuseHigh, stage {size}", reproduce.M_PSNR).mean > 0
    assert record.get(table, reproduce.SDEDIT, reproduce.M_PSNR).mean > 0
    assert record.get(table, reproduce.DIRECT, reproduce.M_HF).mean > 0
    images = sorted(p.name for p in (tmp_path / "diffusehigh" / "paper" / "images").iterdir())
    assert images == ["prompt000_32.png", "prompt000_48.png", "prompt000_64.png"]
    assert record.claims[0].verdict == "not testable here"
    assert set(record.provenance["phases_s"]) == {"base model", "sampling: DiffuseHigh", "metrics", "saving images",
                                                  "sampling: baselines", "sampling: direct", "other"}  # fmt: skip


def test_train_command_checks_the_config_before_training(tmp_path, capsys, monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("training started before the config was checked")

    monkeypatch.setattr(train_lib, "train_base_model", train)
    argv = ["train", "--preset", "smoke", "--set", "model.norm_num_groups=3"]
    code = main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv,
                commands=COMMANDS)  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "model.norm_num_groups" in err, err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--preset", "paper"], "preset 'paper' has no model to train (backbone 'sdxl'"),
        (["train", "--preset", "smoke", "--set", "train.steps=0"], "presets with one: smoke, mini"),
        (["train", "--preset", "smoke", "--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    ],
    ids=["sdxl preset", "no training steps", "bad --set"],
)
def test_train_command_user_errors_are_one_line_exit_2(capsys, monkeypatch, argv, expected):
    """Through the shared CLI like every user error (before: SystemExit with a message, exit status 1)."""

    def train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train_lib, "train_base_model", train)
    code = main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv,
                commands=COMMANDS)  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("diffusehigh: error: ") and expected in err, err
