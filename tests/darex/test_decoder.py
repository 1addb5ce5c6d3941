"""The decoder path (causal LM pair, GSM8K, global q) on a tiny Llama built from a config."""

from __future__ import annotations

import json

import pytest

from common.data import DatasetNotFoundError
from common.results import load_record
from darex.decoder import DECODER_Q, DECODER_REFS, DECODER_TABLE, extract_answer, parse_number, read_gsm8k
from tests.test_cli import run_cli


def _gsm8k(path, n):
    rows = [{"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2:,}"}
            for i in range(n)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_reading_gsm8k_and_extracting_answers(tmp_path):
    problems = read_gsm8k(_gsm8k(tmp_path / "g.jsonl", 1200), n=0)
    assert len(problems) == 1200 and problems[-1].answer == 1201.0  # "1,201"
    assert len(read_gsm8k(tmp_path / "g.jsonl", n=5)) == 5
    assert parse_number("costs $1,234.50 today") == 1234.5
    assert parse_number("none") is None
    assert extract_answer("so 3 + 4 = 7. The answer is: 7", "The answer is:") == 7
    assert extract_answer("The answer is: 5. Check: The answer is: -12", "The answer is:") == -12
    assert extract_answer("2 then 3 then 42", "The answer is:") == 42, "no marker: the last number"
    assert extract_answer("no digits", "####") is None
    with pytest.raises(DatasetNotFoundError):
        read_gsm8k(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answer": "no final"}) + "\n")
    with pytest.raises(ValueError, match="no final number"):
        read_gsm8k(tmp_path / "bad.jsonl")


def test_decoder_experiment_on_a_tiny_llama(tmp_path):
    val, test = _gsm8k(tmp_path / "train.jsonl", 12), _gsm8k(tmp_path / "test.jsonl", 6)
    sets = {
        "experiment": "decoder", "decoder.base_path": "tiny-llama", "decoder.finetuned_path": "tiny-llama",
        "decoder.val_file": str(val), "decoder.test_file": str(test), "decoder.n_val": "4",
        "decoder.max_new_tokens": "4", "decoder.batch_size": "4", "decoder.dtype": "float32",
        "decoder.proxy_items": "12", "decoder.proxy_windows": "2", "decoder.proxy_window": "16",
        "decoder.mask_seeds": "(0, 1)", "prune.rates": "(0.9,)", "prune.coarse": "3", "prune.fine": "1",
    }  # fmt: skip
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "results"
    assert run_cli("reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(out), *args) == 0
    record = load_record(out / "darex" / "paper" / "record.json")
    assert {m.table for m in record.measurements} == {DECODER_TABLE, DECODER_REFS, DECODER_Q}
    dare = record.get(DECODER_TABLE, "DARE (1/(1-p))", "accuracy, p=0.9")
    assert len(dare.values) == 2 and all(0 <= v <= 100 for v in dare.values)
    inv_q = record.get(DECODER_Q, "DAREx-q, global q on labelled GSM8K-train questions", "1/q at p=0.9 (DARE: 10)")
    assert 1.0 <= inv_q.values[0] <= 10.0 + 1e-6  # q >= 1 - p; 1/(1 - 0.9) = 10 + 2e-15 in float64
    assert record.claims and record.extra["delta_statistics"]["std"] > 0
    assert (out / "darex" / "paper" / "results.md").is_file()


def test_decoder_experiment_needs_its_files(tmp_path, capsys):
    code = run_cli("reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_path),
                   "--set", "experiment=decoder")  # fmt: skip
    assert code == 2, "missing paths are a user error (exit status 2)"
    assert "decoder.val_file" in capsys.readouterr().err
