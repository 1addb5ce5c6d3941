"""Tiny offline stand-ins for the evaluation's metric networks: a random CLIP saved in transformers layout (its
byte-level BPE vocabulary has every byte and no merges, so any prompt tokenizes), and a small "Inception" with the
interface of torch-fidelity's extractor (uint8 images in, (pool features, logits) out)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2's byte-to-unicode table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def save_tiny_clip(root: Path, seed: int = 0) -> Path:
    """A random CLIP (hidden 16, projection 8, 32x32 images) with its processor, saved under ``root``; its path."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in _byte_symbols():
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab_file=str(root / "vocab.json"), merges_file=str(root / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    out = root / "clip"
    model.save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


class TinyInception(torch.nn.Module):
    """uint8 (N, 3, H, W) -> (pool (N, 6), logits (N, 5)): channel means and standard deviations through fixed random
    linear maps; deterministic, cheap, and sensitive to the pixels it is given."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.nn.Parameter(torch.randn(6, 6, generator=g), requires_grad=False)
        self.logits = torch.nn.Parameter(torch.randn(6, 5, generator=g), requires_grad=False)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3
        self.seen.append(tuple(x.shape))
        v = x.float() / 255
        stats = torch.cat([v.mean((2, 3)), v.std((2, 3))], 1)
        pool = stats @ self.pool
        return pool, 4 * pool @ self.logits
