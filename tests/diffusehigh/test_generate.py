"""``python -m diffusehigh generate`` on a tiny SDXL saved to a folder, offline: PNGs with their settings in the
metadata, upscaling a user's image, and one-line errors (exit status 2) for a missing or incomplete folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common.cli import main
from common.errors import EXIT_USER_ERROR
from common.runtime import REPO_ROOT
from diffusehigh import config, generate, reproduce
from diffusehigh.__main__ import COMMANDS

from .tiny_models import sdxl_pipeline

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)

FAST = ["--steps", "4", "--noising-steps", "2", "--dwt-steps", "1", "--device", "cpu"]


def run_generate(*argv: str) -> int:
    return main("diffusehigh", presets=config.PRESETS, run=reproduce.run,
                commands=COMMANDS, argv=["generate", *argv])  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sdxl"
    sdxl_pipeline().save_pretrained(folder)
    return folder


def test_generate_writes_the_final_and_stage_pngs_with_their_settings(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run_generate("--model-dir", str(model_dir), "--prompt", "a cat", "--target", "48,64", "--seed", "3",
                      "--out", str(out), "--save-stages", *FAST)  # fmt: skip
    assert rc == 0
    names = ["diffusehigh_seed3_32x32_base.png", "diffusehigh_seed3_48x48_stage1.png", "diffusehigh_seed3_64x64.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    final = Image.open(out / names[-1])
    settings = json.loads(final.text[generate.METADATA_KEY])
    assert final.size == (64, 64) and settings["role"] == "final" and settings["size"] == [64, 64]
    assert (settings["seed"], settings["prompt"], settings["target"]) == (3, "a cat", [48, 64])
    assert (settings["steps"], settings["noising_steps"], settings["dwt_steps"]) == (4, 2, 1)
    assert settings["pipeline"] == "DiffuseHighSDXLPipeline" and settings["negative_prompt"]  # the README's
    assert json.loads(Image.open(out / names[0]).text[generate.METADATA_KEY])["role"] == "base"


def test_generate_upscales_a_user_image(model_dir, tmp_path):
    image = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(image)
    rc = run_generate("--model-dir", str(model_dir), "--prompt", "", "--image", str(image), "--target", "48",
                      "--out", str(tmp_path / "up"), *FAST)  # fmt: skip
    assert rc == 0
    (written,) = (tmp_path / "up").iterdir()
    assert written.name == "diffusehigh_seed0_48x48.png" and Image.open(written).size == (48, 48)
    assert json.loads(Image.open(written).text[generate.METADATA_KEY])["image"] == str(image)


def test_a_missing_incomplete_or_foreign_model_folder_is_one_line_and_exit_2(model_dir, tmp_path, capsys):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(model_dir, incomplete)
    shutil.rmtree(incomplete / "unet")
    for weights in (incomplete / "text_encoder_2").glob("*.safetensors"):
        weights.unlink()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "nothing": "does not exist",
        tmp_path / "empty": "has no model_index.json",
        incomplete: "is incomplete, missing: unet/, text_encoder_2/ weights (*.safetensors or *.bin)",
        foreign: "holds a 'FluxPipeline'",
    }
    for folder, message in cases.items():
        assert run_generate("--model-dir", str(folder), "--prompt", "a cat", *FAST) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert err.startswith("diffusehigh: error: --model-dir: ") and message in err and err.count("\n") == 1, err
    rc = run_generate("--model-dir", str(model_dir), "--prompt", "a cat", "--target", "49", *FAST)
    assert rc == EXIT_USER_ERROR and "not a multiple of the VAE factor 2" in capsys.readouterr().err
    missing_image = ("--image", str(tmp_path / "none.png"))
    assert run_generate("--model-dir", str(model_dir), "--prompt", "a cat", *missing_image, *FAST) == EXIT_USER_ERROR
    assert "--image: " in capsys.readouterr().err


def test_python_m_diffusehigh_generate_is_the_command(tmp_path):
    """The real entry point (``__main__``), with a folder that does not exist: one line on stderr, exit 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "diffusehigh", "generate", "--model-dir", str(tmp_path / "nothing"), "--prompt", "x"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == EXIT_USER_ERROR and "--model-dir: " in out.stderr and "does not exist" in out.stderr
