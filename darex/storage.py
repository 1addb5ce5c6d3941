"""Storing what DPP produces: a pruned model as a regular checkpoint, or only its sparse delta.

A pruned delta at p = 0.99 keeps 1% of the entries, so storing (index, value) pairs instead of the
dense model is the point of DPP. The sparse file is a safetensors file with two tensors per delta
(``<name>::indices`` as int32/int64 flat positions, ``<name>::values``) and the shapes in its metadata.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .method import StateDict, apply_delta


def save_sparse_delta(deltas: Mapping[str, torch.Tensor], path: str | Path, dtype: torch.dtype | None = None) -> int:
    """Write the non-zero entries of ``deltas`` to ``path``; returns the file's size in bytes.

    ``dtype`` (e.g. ``torch.float16``) stores the values at lower precision; default: as they are.
    """
    tensors, shapes = {}, {}
    for name, delta in deltas.items():
        flat = delta.detach().flatten()
        index = flat.nonzero().flatten()
        index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
        tensors[f"{name}::indices"] = index.to(index_dtype).contiguous()
        tensors[f"{name}::values"] = flat[index].to(dtype or flat.dtype).contiguous()
        shapes[name] = list(delta.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "darex-sparse-delta/1", "shapes": json.dumps(shapes)})
    return path.stat().st_size


def load_sparse_delta(path: str | Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The dense deltas stored by :func:`save_sparse_delta`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != "darex-sparse-delta/1":
        raise ValueError(f"{path} is not a sparse delta written by darex.storage")
    shapes = json.loads(metadata["shapes"])
    tensors = load_file(str(path))
    deltas = {}
    for name, shape in shapes.items():
        dense = torch.zeros(int(torch.tensor(shape).prod()) if shape else 1, dtype=dtype)
        dense[tensors[f"{name}::indices"].long()] = tensors[f"{name}::values"].to(dtype)
        deltas[name] = dense.view(shape)
    return deltas


def pruned_model(finetuned: torch.nn.Module, pretrained: torch.nn.Module | StateDict, deltas) -> torch.nn.Module:
    """A copy of the fine-tuned model whose delta tensors are replaced by θ_P + Δ̂ (the head stays fine-tuned)."""
    model = copy.deepcopy(finetuned)
    state = apply_delta(pretrained, deltas)
    model.load_state_dict({name: state[name] for name in deltas}, strict=False)
    return model


def save_pruned(model: torch.nn.Module, out_dir: str | Path, tokenizer=None) -> Path:
    """``save_pretrained`` the pruned model (and its tokenizer) so ``from_pretrained(out_dir)`` loads it."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def directory_bytes(path: str | Path) -> int:
    """Total size of the files under ``path`` (a model directory) or of the file itself."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(Path(root, f).stat().st_size for root, _, files in os.walk(path) for f in files)
