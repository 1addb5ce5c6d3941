"""Storing pruned deltas, and `python -m darex prune` on tiny models built from a config (no hub)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from common.errors import UserError
from common.runtime import generator
from darex.method import apply_delta, dare, delta_parameters
from darex.models import load_tokenizer, tiny_bert_config
from darex.storage import load_sparse_delta, pruned_model, save_sparse_delta


def test_sparse_delta_round_trip_and_size(tmp_path):
    torch.manual_seed(0)
    deltas = {"a.weight": torch.randn(200, 100), "a.bias": torch.randn(200)}
    pruned = dare(deltas, 0.99, generator=generator(0))
    size = save_sparse_delta(pruned, tmp_path / "d.safetensors")
    loaded = load_sparse_delta(tmp_path / "d.safetensors")
    assert loaded.keys() == pruned.keys()
    for name in pruned:
        assert torch.equal(loaded[name], pruned[name])
    dense_bytes = sum(d.numel() * 4 for d in deltas.values())
    assert size < 0.05 * dense_bytes, "1% kept: (index, value) pairs are far smaller than the dense tensors"
    half = save_sparse_delta(pruned, tmp_path / "h.safetensors", dtype=torch.float16)
    assert half < size
    # one rounding to float16 (values < 10³, far from its 65504 limit): relative error <= 2^-11 = 4.9e-4 < 1e-3
    torch.testing.assert_close(load_sparse_delta(tmp_path / "h.safetensors")["a.weight"], pruned["a.weight"],
                               rtol=1e-3, atol=1e-3)  # fmt: skip


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a sparse delta"):
        load_sparse_delta(tmp_path / "x.safetensors")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny BERT 'base' and a 'fine-tuned' copy (perturbed weights, its own head), saved like HF models."""
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("models")
    tokenizer = load_tokenizer("tiny-bert")
    torch.manual_seed(0)
    base = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, 2)).eval()
    finetuned = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, 2)).eval()
    with torch.no_grad():
        for (name, p_ft), p_base in zip(finetuned.named_parameters(), base.parameters(), strict=True):
            if not name.startswith("classifier"):
                p_ft.copy_(p_base + 0.01 * torch.randn_like(p_base))
    for name, model in (("base", base), ("finetuned", finetuned)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    rows = [("a wonderful, moving film", 1), ("dull and lifeless", 0)] * 8
    with open(root / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return root, base, finetuned


def test_pruned_model_keeps_the_fine_tuned_head(tiny_pair):
    _, base, finetuned = tiny_pair
    deltas = delta_parameters(base, finetuned)
    model = pruned_model(finetuned, base, dare(deltas, 0.0))
    for name, tensor in finetuned.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)


@pytest.mark.parametrize("rescale", ["dare", "q=0.5", "labelled", "unlabelled", "analytical", "magnitude", "wanda"])
def test_prune_command_round_trips_through_from_pretrained(tiny_pair, tmp_path, rescale, capsys):
    from transformers import AutoModelForSequenceClassification

    from darex import prune_cli
    from tests.test_cli import run_cli

    root, base, finetuned = tiny_pair
    out = tmp_path / "pruned"
    args = ["prune", "--base", str(root / "base"), "--finetuned", str(root / "finetuned"), "--rate", "0.9",
            "--rescale", rescale, "--val", str(root / "data.csv"), "--eval", str(root / "data.csv"),
            "--out", str(out), "--max-length", "16", "--device", "cpu"]  # fmt: skip
    assert run_cli(*args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept_fraction"] == pytest.approx(0.1, abs=0.02)
    assert "accuracy" in summary and "accuracy (unpruned)" in summary
    reloaded = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)
    sparse = load_sparse_delta(out / "sparse_delta.safetensors")
    expected = apply_delta(base, sparse)
    state = reloaded.state_dict()
    for name in sparse:
        torch.testing.assert_close(state[name], expected[name])
    torch.testing.assert_close(state["classifier.weight"], finetuned.state_dict()["classifier.weight"])
    assert prune_cli.RULES  # the documented rules are the ones tested here (plus q=<value>)


def test_prune_command_errors_are_clear(tiny_pair, capsys):
    from tests.test_cli import run_cli

    root, _, _ = tiny_pair
    base = ["prune", "--base", str(root / "base"), "--finetuned", str(root / "finetuned")]
    for extra, message in [
        (["--rate", "0.9", "--rescale", "labelled"], "needs --val"),
        (["--rate", "1.0"], "[0, 1)"),
        (["--rate", "0.5", "--rescale", "bogus"], "must be one of"),
    ]:
        assert run_cli(*base, *extra) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("darex: error: ") and message in line
    with pytest.raises(UserError, match="needs --val"):
        run_cli(*base, "--rate", "0.9", "--rescale", "labelled", "--debug")
