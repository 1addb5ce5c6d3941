"""A ViT whose every block has its own H, QK, V and MLP, with one shared EMB; masks for NViT's five structures.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.norm1``, ``blocks.i.attn.{q,k,v,proj}``, ``blocks.i.norm2``, ``blocks.i.mlp.{fc1,fc2}``, ``norm``,
``head``, and ``dist_token``/``head_dist`` for DeiT's distilled variant), except that timm's fused
``attn.qkv`` is stored as three tensors ``q``, ``k``, ``v`` so that QK and V widths can differ;
:func:`from_timm` splits it, and the result gives timm's logits.

Pruning state lives in buffers (so it survives ``deepcopy``, ``state_dict`` and ``.to()``), one vector per
structure (paper §3.1): ``emb_mask`` (EMB, shared by all blocks) and per block ``head_mask`` (H), ``qk_mask``
(QK, one index of every head: head alignment), ``v_mask`` (V) and ``mlp_mask`` (MLP). The forward pass
multiplies activations by them, and LayerNorm statistics are taken over the kept EMB channels only, so a masked
model computes exactly what its physically smaller twin (:func:`to_dense`) computes. :meth:`FlexViT.apply_masks_`
also zeroes the pruned weights (call it after every optimiser step, as NViT's ``enforce_pruning`` does, so weight
decay and Adam momentum cannot move them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STRUCTURES = ("EMB", "H", "QK", "V", "MLP")
"""The five prunable dimensions, in the order every per-structure tuple uses."""


@dataclass(frozen=True)
class ViTDims:
    """Architecture of a (possibly pruned) ViT: one EMB, and per block H, QK, V, MLP."""

    emb: int
    heads: tuple[int, ...]
    qk: tuple[int, ...]
    v: tuple[int, ...]
    mlp: tuple[int, ...]
    image_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    num_classes: int = 10
    distillation_token: bool = False
    scale: tuple[float, ...] = field(default=())
    """Attention scale per block; () = QK**-0.5 of the unpruned width (kept when QK is pruned)."""
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        n = len(self.heads)
        if not (len(self.qk) == len(self.v) == len(self.mlp) == n) or n == 0:
            raise ValueError(f"heads/qk/v/mlp must have one entry per block, got {self}")
        if min(self.emb, *self.heads, *self.qk, *self.v, *self.mlp) < 1:
            raise ValueError(f"every dimension must be >= 1, got {self}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not self.scale:
            object.__setattr__(self, "scale", tuple(q**-0.5 for q in self.qk))
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))

    @property
    def depth(self) -> int:
        return len(self.heads)

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1 + int(self.distillation_token)

    def block(self, i: int) -> tuple[int, int, int, int, int]:
        """(EMB, H, QK, V, MLP) of block ``i``: the LUT's key."""
        return self.emb, self.heads[i], self.qk[i], self.v[i], self.mlp[i]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ViTDims:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def uniform(cls, *, depth: int, emb: int, heads: int, qk: int, v: int, mlp: int, **kwargs) -> ViTDims:
        return cls(emb=emb, heads=(heads,) * depth, qk=(qk,) * depth, v=(v,) * depth, mlp=(mlp,) * depth, **kwargs)


def block_macs(emb: float, heads: float, qk: float, v: float, mlp: float, tokens: int) -> float:
    """Multiply-accumulates of one block's forward pass for one image (matrix products only)."""
    t = tokens
    return t * emb * heads * (2 * qk + v) + t * t * heads * (qk + v) + t * heads * v * emb + 2 * t * emb * mlp


def vit_macs(dims: ViTDims) -> float:
    """MACs of the whole model per image: patch embedding, blocks, classifier(s) (closed form)."""
    patches = (dims.image_size // dims.patch_size) ** 2
    embed = patches * dims.emb * dims.in_chans * dims.patch_size**2
    heads = dims.emb * dims.num_classes * (2 if dims.distillation_token else 1)
    return embed + heads + sum(block_macs(*dims.block(i), dims.tokens) for i in range(dims.depth))


def _unpruned(*masks: torch.Tensor) -> bool:
    """Whether no unit of these masks is pruned. Multiplying by an all-ones mask changes nothing (x * 1.0 == x
    exactly, gradients too), so the forward pass skips it: a dense or converted model pays no mask cost."""
    return all(bool(m.all()) for m in masks)


class MaskedLayerNorm(nn.LayerNorm):
    """LayerNorm over the kept EMB channels only (pruned channels output 0); plain LayerNorm when none is pruned."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return super().forward(x)
        n = mask.sum()
        mean = (x * mask).sum(-1, keepdim=True) / n
        var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / n
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight * mask + self.bias * mask


class Attention(nn.Module):
    """Multi-head attention with per-head QK and V widths, head index as an explicit axis (head alignment).

    ``fused``: use torch's fused attention kernel where QK = V widths (the default); False computes
    softmax(q kᵀ·scale) v with plain matrix products for every width, as the official (timm 0.3.2) models do, so
    that models with and without equal widths are timed with the same kernels (``python -m nvit archtable``).
    """

    fused: bool = True

    def __init__(self, emb: int, heads: int, qk: int, v: int, scale: float):
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim, self.scale = heads, qk, v, scale
        self.q = nn.Linear(emb, heads * qk)
        self.k = nn.Linear(emb, heads * qk)
        self.v = nn.Linear(emb, heads * v)
        self.proj = nn.Linear(heads * v, emb)
        self.register_buffer("head_mask", torch.ones(heads))
        self.register_buffer("qk_mask", torch.ones(qk))
        self.register_buffer("v_mask", torch.ones(v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, dq, dv = self.num_heads, self.qk_dim, self.v_dim
        q, k, v = self.q(x).view(b, t, h, dq), self.k(x).view(b, t, h, dq), self.v(x).view(b, t, h, dv)
        if not _unpruned(self.head_mask, self.qk_mask, self.v_mask):
            qk_gate = self.head_mask[:, None] * self.qk_mask[None, :]
            q, k, v = q * qk_gate, k * qk_gate, v * (self.head_mask[:, None] * self.v_mask[None, :])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if dq == dv and self.fused:  # torch's fused kernel (same result up to float rounding; ~30% faster on the CPU)
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:  # the fused CPU kernel needs equal QK and V widths; this is what it computes
            out = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, h * dv))


class Mlp(nn.Module):
    def __init__(self, emb: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(emb, hidden)
        self.fc2 = nn.Linear(hidden, emb)
        self.register_buffer("mlp_mask", torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.fc1(x))
        return self.fc2(hidden if _unpruned(self.mlp_mask) else hidden * self.mlp_mask)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (DeiT's drop path): in training, zero a residual branch for a random ``p`` share of the
    images and scale the rest by 1/(1 - p); the identity in eval mode or at p = 0."""
    if p <= 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class Block(nn.Module):
    drop_path_rate: float = 0.0
    """Stochastic depth of this block's two residual branches (:func:`set_drop_path`); 0 = off (the default)."""

    def __init__(self, emb: int, heads: int, qk: int, v: int, mlp: int, scale: float, eps: float):
        super().__init__()
        self.norm1 = MaskedLayerNorm(emb, eps=eps)
        self.attn = Attention(emb, heads, qk, v, scale)
        self.norm2 = MaskedLayerNorm(emb, eps=eps)
        self.mlp = Mlp(emb, mlp)

    def forward(self, x: torch.Tensor, emb_mask: torch.Tensor | None) -> torch.Tensor:
        p = self.drop_path_rate
        out = self.attn(self.norm1(x, emb_mask))
        if p:
            out = drop_path(out, p, self.training)
        x = x + (out if emb_mask is None else out * emb_mask)
        out = self.mlp(self.norm2(x, emb_mask))
        if p:
            out = drop_path(out, p, self.training)
        return x + (out if emb_mask is None else out * emb_mask)


class FlexViT(nn.Module):
    """Pre-norm ViT (timm layout, class token, token pooling) with per-block dims and NViT's structure masks."""

    def __init__(self, dims: ViTDims):
        super().__init__()
        self.dims = dims
        e = dims.emb
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(dims.in_chans, e, kernel_size=dims.patch_size, stride=dims.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, e)) if dims.distillation_token else None
        self.pos_embed = nn.Parameter(torch.randn(1, dims.tokens, e) * 0.02)
        self.blocks = nn.ModuleList(
            Block(e, dims.heads[i], dims.qk[i], dims.v[i], dims.mlp[i], dims.scale[i], dims.ln_eps)
            for i in range(dims.depth)
        )
        self.norm = MaskedLayerNorm(e, eps=dims.ln_eps)
        self.head = nn.Linear(e, dims.num_classes)
        self.head_dist = nn.Linear(e, dims.num_classes) if dims.distillation_token else None
        self.register_buffer("emb_mask", torch.ones(e))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- forward
    def _emb_mask(self) -> torch.Tensor | None:
        return None if bool(self.emb_mask.all()) else self.emb_mask

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """``patch_embed.proj`` (a conv with kernel = stride = patch size) applied as the matrix product it is, on
        the non-overlapping patches: the same numbers up to float rounding, ~3x faster fwd+bwd than the CPU conv
        for these tiny inputs. Returns (batch, patches, EMB)."""
        conv = self.patch_embed.proj
        p, (b, c, hh, ww) = self.dims.patch_size, x.shape
        patches = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of the class token and (with a distillation token) of the distillation token."""
        mask = self._emb_mask()
        x = self.embed_patches(x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        if mask is not None:
            x = x * mask
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x, mask)
        cls_logits = self.head(x[:, 0])
        return cls_logits, (self.head_dist(x[:, 1]) if self.head_dist is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class-token logits, or the average of both heads for a distilled model (timm's inference output)."""
        cls_logits, dist_logits = self.forward_heads(x)
        return cls_logits if dist_logits is None else (cls_logits + dist_logits) / 2

    # ---------------------------------------------------------------- masks
    def structure_masks(self) -> dict[str, list[torch.Tensor]]:
        """The mask buffers by structure: EMB has one, H/QK/V/MLP one per block."""
        return {
            "EMB": [self.emb_mask],
            "H": [b.attn.head_mask for b in self.blocks],
            "QK": [b.attn.qk_mask for b in self.blocks],
            "V": [b.attn.v_mask for b in self.blocks],
            "MLP": [b.mlp.mlp_mask for b in self.blocks],
        }

    def current_dims(self) -> ViTDims:
        """The dims the masked model would have after :func:`to_dense`."""
        m = self.structure_masks()
        kept = {s: tuple(int(t.sum()) for t in ts) for s, ts in m.items()}
        return ViTDims(
            emb=kept["EMB"][0], heads=kept["H"], qk=kept["QK"], v=kept["V"], mlp=kept["MLP"],
            **{k: getattr(self.dims, k) for k in ("image_size", "patch_size", "in_chans", "num_classes",
                                                  "distillation_token", "scale", "ln_eps")},
        )  # fmt: skip

    def param_masks(self) -> dict[str, torch.Tensor]:
        """For every parameter, 1 where the weight survives the current masks and 0 where it is pruned.

        This is each structure's dependency set (notes §1.1): EMB zeroes a channel of the patch embedding, tokens,
        position embedding, every LayerNorm, every read (q, k, v, fc1, head columns) and write (proj, fc2 rows);
        a head zeroes its q/k/v rows and proj columns; a QK index its q and k rows in every head; a V index its
        v rows and proj columns in every head; an MLP neuron its fc1 row and fc2 column.
        """
        e = self.emb_mask
        out: dict[str, torch.Tensor] = {
            "patch_embed.proj.weight": e[:, None, None, None].expand_as(self.patch_embed.proj.weight),
            "patch_embed.proj.bias": e,
            "cls_token": e.view(1, 1, -1),
            "pos_embed": e.view(1, 1, -1).expand_as(self.pos_embed),
            "norm.weight": e,
            "norm.bias": e,
            "head.weight": e[None, :].expand_as(self.head.weight),
            "head.bias": torch.ones_like(self.head.bias),
        }
        if self.dist_token is not None:
            out["dist_token"] = e.view(1, 1, -1)
            out["head_dist.weight"] = e[None, :].expand_as(self.head_dist.weight)
            out["head_dist.bias"] = torch.ones_like(self.head_dist.bias)
        for i, b in enumerate(self.blocks):
            a, p = b.attn, f"blocks.{i}."
            qk_rows = (a.head_mask[:, None] * a.qk_mask[None, :]).flatten()
            v_rows = (a.head_mask[:, None] * a.v_mask[None, :]).flatten()
            hidden = b.mlp.mlp_mask
            out |= {
                p + "norm1.weight": e, p + "norm1.bias": e, p + "norm2.weight": e, p + "norm2.bias": e,
                p + "attn.q.weight": qk_rows[:, None] * e[None, :], p + "attn.q.bias": qk_rows,
                p + "attn.k.weight": qk_rows[:, None] * e[None, :], p + "attn.k.bias": qk_rows,
                p + "attn.v.weight": v_rows[:, None] * e[None, :], p + "attn.v.bias": v_rows,
                p + "attn.proj.weight": e[:, None] * v_rows[None, :], p + "attn.proj.bias": e,
                p + "mlp.fc1.weight": hidden[:, None] * e[None, :], p + "mlp.fc1.bias": hidden,
                p + "mlp.fc2.weight": e[:, None] * hidden[None, :], p + "mlp.fc2.bias": e,
            }  # fmt: skip
        return out

    @torch.no_grad()
    def apply_masks_(self) -> FlexViT:
        """Zero every pruned weight in place (after each optimiser step; NViT's ``enforce_pruning``)."""
        if _all_kept(self):
            return self  # nothing is pruned: multiplying by ones would change nothing
        masks = self.param_masks()
        for name, p in self.named_parameters():
            if name in masks:
                p.mul_(masks[name].to(p.dtype))
        return self


# ---------------------------------------------------------------------------------------------------------
# Dense conversion, export, timm


def kept_indices(model: FlexViT) -> dict:
    """Indices of the kept units: ``emb`` and per block ``heads``, ``qk``, ``v``, ``mlp``."""

    def nz(t: torch.Tensor) -> torch.Tensor:
        return t.nonzero().flatten()

    return {
        "emb": nz(model.emb_mask),
        "blocks": [
            {"heads": nz(b.attn.head_mask), "qk": nz(b.attn.qk_mask), "v": nz(b.attn.v_mask), "mlp": nz(b.mlp.mlp_mask)}
            for b in model.blocks
        ],
    }


@torch.no_grad()
def to_dense(model: FlexViT) -> FlexViT:
    """The physically smaller model with the pruned rows/columns removed (official ``finetune_dense.py``).

    It computes what the masked model computes (the attention scale of the unpruned QK width is kept).
    """
    dims = model.current_dims()
    idx = kept_indices(model)
    e = idx["emb"]
    small = FlexViT(dims).to(device=model.emb_mask.device, dtype=model.cls_token.dtype)
    sd = model.state_dict()
    new = {
        "patch_embed.proj.weight": sd["patch_embed.proj.weight"][e],
        "patch_embed.proj.bias": sd["patch_embed.proj.bias"][e],
        "cls_token": sd["cls_token"][..., e],
        "pos_embed": sd["pos_embed"][..., e],
        "norm.weight": sd["norm.weight"][e],
        "norm.bias": sd["norm.bias"][e],
        "head.weight": sd["head.weight"][:, e],
        "head.bias": sd["head.bias"],
    }
    if model.dist_token is not None:
        new |= {"dist_token": sd["dist_token"][..., e], "head_dist.weight": sd["head_dist.weight"][:, e],
                "head_dist.bias": sd["head_dist.bias"]}  # fmt: skip
    for i, (b, ix) in enumerate(zip(model.blocks, idx["blocks"], strict=True)):
        p, a = f"blocks.{i}.", b.attn
        qk_rows = (ix["heads"][:, None] * a.qk_dim + ix["qk"][None, :]).flatten()
        v_rows = (ix["heads"][:, None] * a.v_dim + ix["v"][None, :]).flatten()
        for n in ("norm1", "norm2"):
            new[p + n + ".weight"], new[p + n + ".bias"] = sd[p + n + ".weight"][e], sd[p + n + ".bias"][e]
        for n, rows in (("q", qk_rows), ("k", qk_rows), ("v", v_rows)):
            new[p + f"attn.{n}.weight"] = sd[p + f"attn.{n}.weight"][rows][:, e]
            new[p + f"attn.{n}.bias"] = sd[p + f"attn.{n}.bias"][rows]
        new[p + "attn.proj.weight"] = sd[p + "attn.proj.weight"][e][:, v_rows]
        new[p + "attn.proj.bias"] = sd[p + "attn.proj.bias"][e]
        new[p + "mlp.fc1.weight"] = sd[p + "mlp.fc1.weight"][ix["mlp"]][:, e]
        new[p + "mlp.fc1.bias"] = sd[p + "mlp.fc1.bias"][ix["mlp"]]
        new[p + "mlp.fc2.weight"] = sd[p + "mlp.fc2.weight"][e][:, ix["mlp"]]
        new[p + "mlp.fc2.bias"] = sd[p + "mlp.fc2.bias"][e]
    buffers = {k: v for k, v in small.state_dict().items() if k.endswith("_mask")}
    small.load_state_dict(new | buffers, strict=True)
    small.train(model.training)
    return small


def export_pruned(model: FlexViT, path: str | Path) -> Path:
    """Save a (dense-converted) model as ``{"dims": ..., "state_dict": ...}``; :func:`load_pruned` rebuilds it."""
    model = to_dense(model) if not _all_kept(model) else model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "nvit.FlexViT/1", "dims": model.dims.to_json(), "state_dict": model.state_dict()}, path)
    return path


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu") -> FlexViT:
    blob = torch.load(path, map_location=map_location, weights_only=False)
    if blob.get("format") != "nvit.FlexViT/1":
        raise ValueError(f"{path} is not a checkpoint written by nvit.models.export_pruned")
    model = FlexViT(ViTDims.from_json(blob["dims"]))
    model.load_state_dict(blob["state_dict"])
    return model


def set_drop_path(model: FlexViT, rate: float) -> FlexViT:
    """Stochastic depth rising linearly from 0 in the first block to ``rate`` in the last (timm/DeiT's
    ``drop_path_rate``); active in training mode only. Not part of the state dict (a training setting)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
    n = len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.drop_path_rate = rate * i / (n - 1) if n > 1 else rate
    return model


def set_fused_attention(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every :class:`Attention` of ``model`` between torch's fused kernel and plain matrix products."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused = fused
    return model


def _all_kept(model: FlexViT) -> bool:
    return all(bool(t.all()) for ts in model.structure_masks().values() for t in ts)


def from_timm(timm_model: nn.Module) -> FlexViT:
    """A :class:`FlexViT` with the weights of a timm ``VisionTransformer`` / ``VisionTransformerDistilled``.

    Supported: class-token pooling, pre-norm blocks without layer scale or q/k norm, absolute position
    embeddings. The fused ``attn.qkv`` (rows ordered q, k, v; heads contiguous within each) is split.
    """
    m = timm_model
    if getattr(m, "global_pool", "token") != "token" or not getattr(m, "has_class_token", True):
        raise ValueError("only timm ViTs with a class token and global_pool='token' are supported")
    if getattr(m, "no_embed_class", False) or not isinstance(getattr(m, "fc_norm", nn.Identity()), nn.Identity):
        raise ValueError("timm ViTs with no_embed_class or fc_norm are not supported")
    blk = m.blocks[0]
    if getattr(blk.attn.qkv, "bias", None) is None:
        raise ValueError(
            "timm ViTs without qkv bias (qkv_bias=False) are not supported: FlexViT's q/k/v layers have biases; "
            "create the timm model with qkv_bias=True or add zero biases to its state dict"
        )
    for name in ("ls1", "ls2"):
        if not isinstance(getattr(blk, name, nn.Identity()), nn.Identity):
            raise ValueError("timm ViTs with layer scale are not supported")
    emb, heads = m.embed_dim, blk.attn.num_heads
    head_dim = emb // heads
    img = m.patch_embed.img_size
    dims = ViTDims.uniform(
        depth=len(m.blocks), emb=emb, heads=heads, qk=head_dim, v=head_dim, mlp=blk.mlp.fc1.out_features,
        image_size=img[0] if isinstance(img, tuple) else img, patch_size=m.patch_embed.patch_size[0],
        in_chans=m.patch_embed.proj.in_channels, num_classes=m.num_classes,
        distillation_token=getattr(m, "dist_token", None) is not None, ln_eps=m.norm.eps,
        scale=(float(blk.attn.scale),) * len(m.blocks),
    )  # fmt: skip
    model = FlexViT(dims)
    model.load_state_dict(convert_timm_state_dict(m.state_dict(), dims), strict=True)
    return model


def convert_timm_state_dict(sd: dict[str, torch.Tensor], dims: ViTDims) -> dict[str, torch.Tensor]:
    """timm ViT state dict -> :class:`FlexViT` state dict (splits the fused qkv; adds all-ones masks)."""
    out: dict[str, torch.Tensor] = {}
    for k, t in sd.items():
        if ".attn.qkv." in k:
            q, kk, v = t.chunk(3, dim=0)
            base = k.replace("qkv.", "")
            prefix, kind = base.rsplit(".", 1)
            out[f"{prefix}.q.{kind}"], out[f"{prefix}.k.{kind}"], out[f"{prefix}.v.{kind}"] = q, kk, v
        elif k.startswith(("patch_embed.proj", "cls_token", "dist_token", "pos_embed", "norm.", "head")) or (
            k.startswith("blocks.") and any(s in k for s in (".norm1.", ".norm2.", ".attn.proj.", ".mlp.fc"))
        ):
            out[k] = t
        else:
            raise ValueError(f"unexpected timm parameter {k!r}; this ViT variant is not supported")
    out["emb_mask"] = torch.ones(dims.emb)
    for i in range(dims.depth):
        p = f"blocks.{i}."
        out[p + "attn.head_mask"] = torch.ones(dims.heads[i])
        out[p + "attn.qk_mask"] = torch.ones(dims.qk[i])
        out[p + "attn.v_mask"] = torch.ones(dims.v[i])
        out[p + "mlp.mlp_mask"] = torch.ones(dims.mlp[i])
    return out


# ---------------------------------------------------------------------------------------------------------
# ReViT (paper §5, Table 6)


def revit_dims(
    emb: int, depth: int = 12, *, head_dim: int = 64, base: ViTDims | None = None, rule: str = "table6", **kwargs
) -> ViTDims:
    """Widths of the ReViT rule (Table 6): H = ε·EMB/100, QK = ε·EMB/20, V = 64, MLP = 3·ε·EMB per block.

    ``rule="official"``: the widths of the official ``revit_scratch.py`` builder instead (:func:`revit_dims_official`),
    which differ from Table 6's text at the ends and in the QK rounding, and give Table 7's ReViT-S size.

    ε = 2 in the middle half of the blocks (blocks 4-9 of 12) and 1 elsewhere; H is rounded to the nearest even
    number, QK to the nearest multiple of 8. The constants are written for DeiT's per-head width 64; for a
    model with another reference ``head_dim`` d they are rescaled so the rule keeps its ratios: H = ε·EMB·64/(100
    d), QK = ε·EMB·d/(20·64) rounded to a multiple of max(1, d/8), V = d. Every width is at least 1 (rounding
    unit). ``kwargs`` are the non-width fields of :class:`ViTDims` (image size, classes, ...).
    """
    if rule == "official":
        return revit_dims_official(emb, depth, head_dim=head_dim, base=base, **kwargs)
    if rule != "table6":
        raise ValueError(f"rule must be 'table6' or 'official', got {rule!r}")
    if depth < 1 or emb < 1:
        raise ValueError("depth and emb must be >= 1")
    r = head_dim / 64
    qk_unit = max(1, round(8 * r))
    heads, qks, mlps = [], [], []
    for i in range(depth):
        eps = 2 if depth // 4 <= i < depth - depth // 4 else 1
        h = eps * emb / (100 * r)
        heads.append(max(2, 2 * round(h / 2)))
        qks.append(max(qk_unit, qk_unit * round(eps * emb * r / 20 / qk_unit)))
        mlps.append(3 * eps * emb)
    if base is not None:
        kwargs = {
            k: getattr(base, k) for k in ("image_size", "patch_size", "in_chans", "num_classes", "ln_eps")
        } | kwargs
    return ViTDims(emb=emb, heads=tuple(heads), qk=tuple(qks), v=(head_dim,) * depth, mlp=tuple(mlps), **kwargs)


def revit_dims_official(
    emb: int, depth: int = 12, *, head_dim: int = 64, base: ViTDims | None = None, **kwargs
) -> ViTDims:
    """The widths the official ``revit_scratch.py`` builds for ``--EMB emb`` (notes §1.8; read from its code).

    With u = round(EMB·0.005) and w = round(EMB·0.05/8) (Python's rounding, half to even): heads 10 in blocks 1
    and 12, 4u in blocks 4-9, 2u elsewhere; QK 16w in blocks 1, 4-9 and 12, 8w elsewhere; V 64; MLP 6·EMB in
    blocks 4-9, 3·EMB elsewhere. Against Table 6's text: the end blocks get 10 heads and the wide QK, and QK moves
    in steps of 16 (8) instead of 8. Only defined for DeiT's 12 blocks of head width 64 (the builder's lists).
    """
    if depth != 12 or head_dim != 64:
        raise ValueError("the official ReViT builder is written for 12 blocks of head width 64")
    if emb < 1:
        raise ValueError("emb must be >= 1")
    u, w = max(1, round(emb * 0.005)), max(1, round(emb * 0.05 / 8))
    wide = [i == 0 or i == 11 or 3 <= i <= 8 for i in range(12)]
    heads = tuple(10 if i in (0, 11) else (4 * u if 3 <= i <= 8 else 2 * u) for i in range(12))
    qks = tuple(16 * w if wide[i] else 8 * w for i in range(12))
    mlps = tuple(6 * emb if 3 <= i <= 8 else 3 * emb for i in range(12))
    if base is not None:
        kwargs = {
            k: getattr(base, k) for k in ("image_size", "patch_size", "in_chans", "num_classes", "ln_eps")
        } | kwargs
    return ViTDims(emb=emb, heads=heads, qk=qks, v=(64,) * 12, mlp=mlps, **kwargs)


def count_dims_params(dims: ViTDims) -> int:
    """Parameters of a FlexViT with these dims (closed form, masks excluded)."""
    e = dims.emb
    n = e * dims.in_chans * dims.patch_size**2 + e + e + dims.tokens * e + 2 * e
    n += (e * dims.num_classes + dims.num_classes) * (2 if dims.distillation_token else 1)
    n += e if dims.distillation_token else 0
    for h, q, v, m in zip(dims.heads, dims.qk, dims.v, dims.mlp, strict=True):
        n += 4 * e + 2 * (e * h * q + h * q) + (e * h * v + h * v) + (h * v * e + e) + (e * m + m) + (m * e + e)
    return n


def scale_revit_to(
    target_params: int, depth: int, head_dim: int, base: ViTDims, step: int = 4, rule: str = "table6"
) -> ViTDims:
    """The ReViT dims whose EMB (a multiple of ``step``) gives the parameter count closest to ``target_params``."""
    best = None
    for emb in range(step, 8 * int(math.sqrt(target_params)) + step, step):
        d = revit_dims(emb, depth, head_dim=head_dim, base=base, rule=rule)
        gap = abs(count_dims_params(d) - target_params)
        if best is None or gap < best[0]:
            best = (gap, d)
    return best[1]
