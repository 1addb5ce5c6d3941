"""The smoke preset end to end through the shared CLI, the checkpoint logic, and the presets' shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.cli import main, report_all
from common.config import override
from common.results import PARTLY, REPRODUCED, VERDICTS, load_record
from diffusehigh import config, reproduce
from diffusehigh import train as train_lib
from tests.smoke import load_smoke_record, run_smoke


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    run_smoke("diffusehigh", results, "--threads", "1")
    return results


def test_smoke_writes_a_valid_record(smoke_results):
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
    assert record.get(table, reproduce.REAL, reproduce.M_OBJ).mean == 1.0  # the metric sees one disk per real image
    bicubic_psnr = record.get(table, reproduce.BICUBIC, reproduce.M_PSNR).mean
    dh_psnr = record.get(table, reproduce.DH, reproduce.M_PSNR).mean
    assert 20 < bicubic_psnr < 60  # area-downsampling the bicubic upsample nearly gives back the base image
    assert 5 < dh_psnr < bicubic_psnr  # re-generated detail moves the image away from its guide
    hf = {s: record.get(table, s, reproduce.M_HF).mean for s in (reproduce.REAL, reproduce.BICUBIC)}
    assert hf[reproduce.BICUBIC] > 0 and hf[reproduce.REAL] > 0
    # the stated rules must not let a barely trained model "reproduce" the detail / sharpening claims
    verdicts = {c.claim: c.verdict for c in record.claims}
    assert verdicts["DiffuseHigh adds fine detail that interpolation lacks"] != REPRODUCED
    assert all(v != REPRODUCED for k, v in verdicts.items() if k.startswith("Sharpening"))
    assert record.claims and all(c.verdict in VERDICTS for c in record.claims)
    assert all("Rule" in c.our_evidence or c.verdict == "not testable here" for c in record.claims)
    assert (out / reproduce.GRID_FILE).stat().st_size > 1000
    assert reproduce.GRID_FILE in (out / "results.md").read_text()


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
    assert meta["command"] == "python -m diffusehigh train --preset mini"


def test_presets():
    mini, paper = config.mini(), config.paper()
    assert len(mini.seeds) >= 2 and mini.stages.scale_factors == (2.0, 4.0) and mini.ablation.one_jump
    assert paper.model.backbone == "sdxl" and paper.stages.dwt_steps == 5 and paper.stages.stage_steps == 15
    assert paper.stages.diffusehigh_guidance_scale == 10.0 and paper.model.guidance_scale == 5.0
    assert paper.stages.scale_factors == (2.0, 3.0, 4.0) and paper.stages.dwt_wave == "db4"
    main_conds, abl = reproduce.plan(mini)
    assert reproduce.ONE_JUMP in main_conds[4.0] and reproduce.DIRECT in main_conds[2.0]
    assert "dwt_steps=0" in abl[2.0]


def test_paper_preset_without_weights_fails_with_a_clear_message(tmp_path):
    argv = ["reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_path), "--device", "cpu"]
    with pytest.raises(FileNotFoundError, match="sdxl_path"):
        main("diffusehigh", presets=config.PRESETS, run=reproduce.run, report=reproduce.report, argv=argv)


def test_paper_preset_plumbing_on_a_tiny_sdxl(tmp_path, monkeypatch):
    """run_sdxl end to end with a tiny random SDXL (prompts replaced by embeddings: no tokenizer offline)."""
    from diffusehigh import pipeline as pipeline_lib

    from .tiny_sdxl import prompt_embeds, tiny_pipeline

    class WithEmbeddings:
        def __init__(self):
            self.pipe, self.calls = tiny_pipeline(), []

        def __call__(self, prompt, negative_prompt, **kwargs):
            self.calls.append(kwargs)
            return self.pipe(**kwargs, **prompt_embeds())

        def sample_direct(self, prompt, negative_prompt, **kwargs):
            self.calls.append({"direct": True, **kwargs})
            return self.pipe.sample_direct(**kwargs, **prompt_embeds())

    fake = WithEmbeddings()
    monkeypatch.setattr(pipeline_lib, "load_local_pipeline", lambda path, dtype, device: fake)
    sets = ["sdxl_path=/tiny", "model.resolution=32", "model.num_inference_steps=10", "model.dtype=float32",
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


def _outcome(**per_image) -> reproduce.Outcome:
    o = reproduce.Outcome()
    for name, values in per_image.items():
        o.add(name, np.asarray(values, float))
    return o


def test_sharpening_rule_needs_a_minimum_effect_size():
    """A significant but tiny move towards the real images' energy is 'partly' (small effect), not 'reproduced'."""
    cfg = config.smoke()
    _, abl = reproduce.plan(cfg)
    rng = np.random.default_rng(0)
    n = 40
    base = rng.normal(4.0, 0.5, n)
    ones = np.ones(n)

    def claims(shift: float) -> str:
        outcomes = {(2.0, reproduce.REAL): _outcome(**{reproduce.M_HF: np.full(n, 6.0)})}
        for name, hf in (("sharpening alpha=0", base), ("sharpening alpha=1", base + shift)):
            outcomes[(2.0, name)] = _outcome(
                **{reproduce.M_HF: hf + rng.normal(0, 1e-3, n), reproduce.M_PSNR: ones * 20, reproduce.M_OBJ: ones}
            )
        found = [c for c in reproduce.judge_sharpening(cfg, outcomes, abl)]
        return found[0]["verdict"]

    assert claims(0.05) == PARTLY  # 2.5% of the gap (6 - 4): significant but small
    assert claims(0.5) == REPRODUCED  # 25% of the gap
    assert claims(-0.5) != REPRODUCED and claims(-0.5) != PARTLY  # away from the real images
    assert claims(4.5) == PARTLY  # overshoots past the real images' energy
