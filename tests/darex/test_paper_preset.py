"""The `paper` preset's code paths (labelled files, ten-epoch schedule, no frozen tensors) at tiny scale."""

from __future__ import annotations

import csv
import random

import pytest

from common.results import load_record
from darex.regimes import ANALYTICAL_LABELLED, METHOD_LABELS
from tests.test_cli import run_cli

pytestmark = pytest.mark.e2e  # whole preset runs; `make test` skips them on its second kernel pass

WORDS = {1: ["great", "moving", "superb", "warm"], 0: ["dull", "flat", "tedious", "cold"]}


def _write(path, n, seed, regression=False):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sentence1", "sentence2", "label"] if regression else ["sentence", "label"])
        for _ in range(n):
            label = rng.randint(0, 1)
            text = " ".join(rng.choice(WORDS[label]) for _ in range(6))
            if regression:
                writer.writerow([text, " ".join(rng.choice(WORDS[1]) for _ in range(4)), f"{label * 4 + 0.5:.1f}"])
            else:
                writer.writerow([text, label])


# a whole preset run (~40 s each): the second kernel pass of `make test` skips it. STS-B runs in `make test` (the
# same paper path with the regression head and its metric); SST-2's classification run only in `make test-slow`,
# to keep the suite's CI time (install included) well under 15 minutes.
@pytest.mark.e2e
@pytest.mark.parametrize("task", [pytest.param("sst2", marks=pytest.mark.slow), "stsb"])
def test_paper_preset_on_tiny_files(tmp_path, task):
    regression = task == "stsb"
    for seed, (split, n) in enumerate((("train", 24), ("val", 16), ("test", 16))):
        _write(tmp_path / f"{split}.tsv", n, seed=seed, regression=regression)
    overrides = {
        "text.model_path": "tiny-bert", "text.train_file": str(tmp_path / "train.tsv"),
        "text.val_file": str(tmp_path / "val.tsv"), "text.test_file": str(tmp_path / "test.tsv"),
        "text.calibration_windows": "2", "text.window": "16", "text.max_length": "16", "text.n_unlabelled": "8",
        "text.unlabelled_windows": "3", "text.unlabelled_window": "16",
        "finetune.batch_size": "8", "finetune.adamr_lambdas": "(0.5,)", "prune.rates": "(0.9,)",
        "prune.mask_seeds": "(0, 1)", "prune.coarse": "3", "prune.fine": "1", "prune.etas": "(0.5,)",
        "prune.figure_rate": "0.9", "prune.figure_points": "3", "prune.large_delta_rates": "(0.5,)",
    }  # fmt: skip
    if regression:
        overrides |= {"text.metric": "pearson_spearman", "text.num_labels": "1"}
    args = [a for key, value in overrides.items() for a in ("--set", f"{key}={value}")]
    out = tmp_path / "results"
    assert run_cli("reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(out), *args) == 0
    record = load_record(out / "darex" / "paper" / "record.json")
    assert record.config["text"]["task"] == "files" and record.config["finetune"]["steps"] == 0
    metric = "pearson_spearman" if regression else "accuracy"
    ft = record.get("Unpruned references", "fine-tuned (unpruned)", metric)
    assert len(ft.values) == 1
    table = record.tables()["Table 1 analogue: task metric after delta-parameter pruning"]
    assert any(m.setting.startswith("DAREx-q") for m in table)
    # The official recipe (issue 13): η of the analytical q on labelled data and by output change, both reported;
    # global q on the official linear grid (steps of 0.05 from 1 - p, fine steps of 0.005).
    settings = {m.setting for m in table}
    assert {METHOD_LABELS[ANALYTICAL_LABELLED], METHOD_LABELS["darex_q_analytical"]} <= settings
    for method in ("darex_q_labelled", "darex_q_unlabelled"):
        q = 1 / record.get("Chosen rescaling factors", METHOD_LABELS[method], "1/q at p=0.9 (DARE: 10)").values[0]
        assert 0.1 - 1e-9 <= q <= 1.0 + 1e-9 and round((q - 0.1) / 0.005, 6).is_integer()
    eta = record.get("Chosen rescaling factors", METHOD_LABELS[ANALYTICAL_LABELLED], "η at p=0.9").values[0]
    assert 0.5 <= eta <= 0.6, "prune.etas=(0.5,): the sweep's fine stage may step up to (not past) 0.5 + 0.1"
    assert (out / "darex" / "paper" / "results.md").is_file()


def test_paper_preset_without_files_says_what_is_missing(tmp_path, capsys):
    code = run_cli("reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_path),
                   "--set", "text.model_path=tiny-bert")  # fmt: skip
    assert code == 2, "a missing file is a user error (exit status 2)"
    assert "text.train_file" in capsys.readouterr().err
