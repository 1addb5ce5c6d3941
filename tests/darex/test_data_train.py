"""Task data (Rotten Tomatoes split by movie, labelled files) and the fine-tuning loop's pieces."""

from __future__ import annotations

import json

import pytest
import torch

from common.data import DatasetNotFoundError
from darex.data import Example, batches, encode, group_split, packed_windows, read_labelled_file, rotten_tomatoes
from darex.models import load_tokenizer
from darex.train import METRICS


def test_rotten_tomatoes_is_deduplicated_binary_and_grouped_by_movie():
    examples = rotten_tomatoes()
    assert len(examples) > 10_000
    assert len({e.text for e in examples}) == len(examples)
    assert {e.label for e in examples} == {0, 1}
    assert all(e.group for e in examples[:100])


def test_group_split_is_disjoint_by_group_sized_and_seeded():
    examples = [Example(text=f"{g}-{i}", label=i % 2, group=str(g)) for g in range(40) for i in range(5)]
    sizes = {"test": 30, "val": 20, "train": 100}
    splits = group_split(examples, sizes, seed=0)
    assert {k: len(v) for k, v in splits.items()} == sizes
    groups = [{e.group for e in split} for split in splits.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]), "a movie spans two splits"
    assert group_split(examples, sizes, seed=0) == splits
    assert group_split(examples, sizes, seed=1) != splits
    with pytest.raises(ValueError, match="not enough examples"):
        group_split(examples, {"train": 1_000}, seed=0)


def test_labelled_files_in_the_formats_users_have(tmp_path):
    (tmp_path / "sst2.tsv").write_text("sentence\tlabel\na fine film\t1\ndull\t0\n")
    (tmp_path / "mrpc.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tA, b.\n")
    (tmp_path / "stsb.csv").write_text('sentence1,sentence2,label\n"a, b",c,3.8\n')
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x", "label": 1}) + "\n\n")
    sst2 = read_labelled_file(tmp_path / "sst2.tsv")
    assert sst2 == [Example("a fine film", 1), Example("dull", 0)]
    assert read_labelled_file(tmp_path / "mrpc.tsv") == [Example("A b.", 1, "A, b.")]
    stsb = read_labelled_file(tmp_path / "stsb.csv")
    assert stsb == [Example("a, b", 3.8, "c")] and isinstance(stsb[0].label, float)
    assert read_labelled_file(tmp_path / "d.jsonl") == [Example("x", 1)]
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        read_labelled_file(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("review,stars\ngood,5\n")
    with pytest.raises(ValueError, match="need a text column"):
        read_labelled_file(tmp_path / "bad.csv")


def test_batches_pad_and_cover_every_example_once():
    tokenizer = load_tokenizer("tiny-bert")
    examples = [Example("word " * n, n % 2) for n in range(1, 20)]
    data = encode(tokenizer, examples, max_length=8)
    assert max(len(ids) for ids in data.input_ids) == 8
    seen = []
    for batch in batches(data, 4, tokenizer.pad_token_id):
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
        seen.extend(batch["labels"].tolist())
    assert sorted(seen) == sorted(e.label for e in examples)
    windows = packed_windows(tokenizer, [e.text for e in examples], window=16, n_windows=3)
    assert windows.shape == (3, 16) and (windows != tokenizer.pad_token_id).all()
    with pytest.raises(ValueError, match="need"):
        packed_windows(tokenizer, ["word"], window=16, n_windows=3)
    assert packed_windows(tokenizer, [e.text for e in examples], 16, 1_000, fewer_ok=True).shape[0] >= 3


def test_metrics():
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    assert METRICS["accuracy"](labels, labels) == 100
    assert METRICS["matthews"](labels, labels) == pytest.approx(100)
    assert METRICS["matthews"](1 - labels, labels) == pytest.approx(-100)
    assert METRICS["accuracy_f1"](labels, labels) == pytest.approx(100)
    x = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert METRICS["pearson_spearman"](x, 2 * x + 1) == pytest.approx(100)
    assert METRICS["pearson_spearman"](torch.zeros(4), x) == 0.0, "a constant prediction has no correlation"


@pytest.mark.kernel_independent  # both runs use the same kernels
@pytest.mark.parametrize("optimizer", ["adamw", "adamr-l2"])
def test_a_killed_fine_tune_resumes_to_the_uninterrupted_result(kill_and_resume, optimizer):
    """finetune inside a cached stage: killed after its first epoch (3 batches of 20 examples) and run again, it
    continues from step 3 and ends with the weights of an uninterrupted run, bit for bit (dropout draws from torch's
    generator, the schedule and AdamR's state are saved too)."""
    from darex.config import TINY_BERT
    from darex.models import load_classifier
    from darex.train import FinetuneSpec, finetune

    tokenizer = load_tokenizer("tiny-bert")
    data = encode(tokenizer, [Example("good " * (n % 5 + 1) + "bad " * (n % 3), n % 2) for n in range(20)], 16)
    spec = FinetuneSpec(optimizer=optimizer, lr=1e-3, steps=8, batch_size=8, weight_decay=0.1, seed=3)

    def run() -> dict:
        model = load_classifier(TINY_BERT, 2, tokenizer.vocab_size, seed=0)
        return finetune(model, data, spec, tokenizer.pad_token_id).state_dict()

    reference, resumed, restored = kill_and_resume(run, after=0)
    assert restored == [1], "the second run restored the state saved after the first epoch"
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
