"""MaskSparsity and Network Slimming on BN scaling factors, pruning masks, and physical channel pruning.

The objects (research notes §1):

- a :class:`PruneSpec` lists the prunable *units* of a ResNet. A unit is a set of channels that must be removed
  together: its BNs (whose γ rank and mark the channels), the convs that *produce* those channels (output
  filters removed) and the convs/linears that *consume* them (input channels removed). ``inner`` units are the
  channels inside a residual branch (conv1/bn1 of a basic block; conv1/bn1 and conv2/bn2 of a bottleneck).
  ``residual`` units are a stage's residual stream: every BN that meets at the stage's additions (the last BN
  of each block and the projection shortcut's BN), as in the official code's per-stage groups.
- a *mask* is ``{unit name: bool keep-vector}`` (True = keep), as the official ``*_mask.pth`` files.
- Network Slimming (Liu et al. 2017) adds λ·g'(γ) to the gradient of every γ; MaskSparsity (Eq. in notes §1.2)
  adds it only to the γ of the channels the mask removes: grad(γ) += λ·g'(γ)·(1 − keep).
- :func:`prune` removes the masked channels and returns a smaller model. With ``fold_beta`` the constant
  relu(β) that a removed channel of an inner unit still feeds forward is folded into the consumer (exact where
  the consumer sees no zero padding); :func:`recalibrate_bn` re-estimates BN statistics instead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .models import CifarResNet, ConvBN

Mask = dict[str, torch.Tensor]
"""unit name -> bool keep-vector over the unit's channels (True = keep)."""


@dataclass
class Unit:
    """Channels removed together: their BNs, the convs producing them and the layers consuming them."""

    name: str
    kind: str  # "inner" or "residual"
    bns: list[str]
    producers: list[str]
    consumers: list[str]
    folds: dict[str, str] = field(default_factory=dict)
    """consumer conv -> the BN right after it, where relu(β) of removed channels can be folded (inner units)."""


@dataclass
class PruneSpec:
    units: list[Unit]

    def __getitem__(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]


# ----------------------------------------------------------------------------------------------------
# Which channels are coupled


@dataclass
class _Block:
    prefix: str
    input_consumers: list[str]  # convs reading the block input (conv1, and a projection's conv)
    shortcut: tuple[str, str] | None  # (conv, bn) of a projection shortcut
    last: tuple[str, str]  # (conv, bn) whose output is added to the stream
    inner: list[tuple[str, str, str, str]]  # (producer conv, bn, consumer conv, bn after consumer)


def _blocks(model: nn.Module) -> tuple[tuple[str, str], list[_Block], str]:
    """(stem conv, stem bn), the residual blocks in order, and the head linear, for both architectures."""
    from torchvision.models.resnet import Bottleneck

    blocks = []
    if isinstance(model, CifarResNet):
        for s, stage in enumerate(model.stages):
            for b, block in enumerate(stage):
                p = f"stages.{s}.{b}"
                proj = isinstance(block.shortcut, ConvBN)
                if not proj and not isinstance(block.shortcut, nn.Identity):
                    blocks.append(_Block(p, [f"{p}.conv1"], "zero_pad", (f"{p}.conv2", f"{p}.bn2"), []))  # type: ignore[arg-type]
                else:
                    blocks.append(
                        _Block(
                            prefix=p,
                            input_consumers=[f"{p}.conv1"] + ([f"{p}.shortcut.0"] if proj else []),
                            shortcut=(f"{p}.shortcut.0", f"{p}.shortcut.1") if proj else None,
                            last=(f"{p}.conv2", f"{p}.bn2"),
                            inner=[],
                        )
                    )
                blocks[-1].inner = [(f"{p}.conv1", f"{p}.bn1", f"{p}.conv2", f"{p}.bn2")]
        return ("stem.conv", "stem.bn"), blocks, "fc"
    names = [n for n, m in model.named_modules() if isinstance(m, Bottleneck)]
    if not names or not hasattr(model, "fc"):
        raise TypeError(f"cannot find the prunable structure of {type(model).__name__}: CifarResNet or ResNet-50")
    for p in names:
        block = model.get_submodule(p)
        proj = block.downsample is not None
        blocks.append(
            _Block(
                prefix=p,
                input_consumers=[f"{p}.conv1"] + ([f"{p}.downsample.0"] if proj else []),
                shortcut=(f"{p}.downsample.0", f"{p}.downsample.1") if proj else None,
                last=(f"{p}.conv3", f"{p}.bn3"),
                inner=[(f"{p}.conv1", f"{p}.bn1", f"{p}.conv2", f"{p}.bn2"),
                       (f"{p}.conv2", f"{p}.bn2", f"{p}.conv3", f"{p}.bn3")],
            )
        )  # fmt: skip
    return ("conv1", "bn1"), blocks, "fc"


def prune_spec(model: nn.Module, residual_groups: bool = False) -> PruneSpec:
    """The prunable units of a CIFAR-style ResNet or a torchvision ResNet-50.

    Without ``residual_groups`` only the channels inside residual branches are units. With it, every stage's
    residual stream is one more unit (the official code's per-stage group); the stem's channels join the first
    stage's stream when that stage has no projection (CIFAR-style), else they are a unit of their own (ResNet-50:
    stem BN → max-pool → the first block's conv1 and projection).
    """
    (stem_conv, stem_bn), blocks, head = _blocks(model)
    units = []
    for block in blocks:
        for producer, bn, consumer, after in block.inner:
            units.append(Unit(bn, "inner", [bn], [producer], [consumer], folds={consumer: after}))
    if not residual_groups:
        return PruneSpec(units)
    if any(block.shortcut == "zero_pad" for block in blocks):
        raise ValueError("residual groups need projection shortcuts (zero-padded shortcuts fix the stream's width)")
    stream = Unit(f"{stem_bn} (stem)", "residual", [stem_bn], [stem_conv], [])
    streams = [stream]
    for block in blocks:
        stream.consumers += block.input_consumers
        if block.shortcut is not None:
            stream = Unit(f"{block.prefix} (stream)", "residual", [block.shortcut[1]], [block.shortcut[0]], [])
            streams.append(stream)
        stream.bns.append(block.last[1])
        stream.producers.append(block.last[0])
    stream.consumers.append(head)
    return PruneSpec(units + streams)


def unit_gammas(model: nn.Module, unit: Unit) -> torch.Tensor:
    """|γ| of the unit's BNs, shape (len(bns), channels)."""
    return torch.stack([model.get_submodule(bn).weight.detach().abs() for bn in unit.bns])


# ----------------------------------------------------------------------------------------------------
# Masks


def full_mask(model: nn.Module, spec: PruneSpec) -> Mask:
    return {u.name: torch.ones(model.get_submodule(u.bns[0]).num_features, dtype=torch.bool) for u in spec.units}


def _ensure_min(keep: torch.Tensor, score: torch.Tensor, min_channels: int) -> torch.Tensor:
    keep = keep.clone()
    if int(keep.sum()) < min_channels:
        keep[torch.argsort(score, descending=True)[:min_channels]] = True
    return keep


def group_vote(gammas: torch.Tensor, threshold: float) -> torch.Tensor:
    """The official code's conservative shared mask for a residual group (notes §1.4); returns a keep-vector.

    Every BN of the group votes "prune" for its channels with |γ| <= threshold. With k_min the fewest channels
    any BN votes to prune, the number of agreeing votes required starts at unanimity and is lowered one at a time
    until at least k_min channels are selected; those channels (the ones with most votes first) are pruned.
    """
    votes = (gammas <= threshold).sum(0)
    k_min = int((gammas <= threshold).sum(1).min())
    n_bns = gammas.shape[0]
    for required in range(n_bns, 0, -1):
        if int((votes >= required).sum()) >= k_min:
            return ~(votes >= required)
    return torch.ones(gammas.shape[1], dtype=torch.bool)


def threshold_mask(model: nn.Module, spec: PruneSpec, threshold: float = 0.01, min_channels: int = 1) -> Mask:
    """Mask the channels with |γ| <= threshold, layer by layer (official prune.sh); groups by :func:`group_vote`."""
    mask = {}
    for unit in spec.units:
        g = unit_gammas(model, unit)
        keep = group_vote(g, threshold) if len(unit.bns) > 1 else g[0] > threshold
        mask[unit.name] = _ensure_min(keep, g.mean(0), min_channels)
    return mask


def uniform_mask(model: nn.Module, spec: PruneSpec, keep_fraction: float, min_channels: int = 1) -> Mask:
    """Every unit keeps round(keep_fraction x channels), those with the largest (group-mean) |γ|."""
    mask = {}
    for unit in spec.units:
        score = unit_gammas(model, unit).mean(0)
        k = max(min_channels, round(keep_fraction * len(score)))
        keep = torch.zeros(len(score), dtype=torch.bool)
        keep[torch.argsort(score, descending=True)[:k]] = True
        mask[unit.name] = keep
    return mask


def mask_from_bool(spec: PruneSpec, keep_by_bn: Mapping[str, torch.Tensor]) -> Mask:
    """A mask from ``{bn name: keep-vector}`` (the official mask files); a group needs the same vector on all BNs."""
    mask = {}
    for unit in spec.units:
        vectors = [torch.as_tensor(keep_by_bn[bn], dtype=torch.bool) for bn in unit.bns if bn in keep_by_bn]
        if not vectors:
            continue
        if any(not torch.equal(v, vectors[0]) for v in vectors[1:]):
            raise ValueError(f"unit {unit.name}: its BNs have different keep-vectors; a residual group shares one")
        mask[unit.name] = vectors[0].clone()
    return mask


def global_mask_for_reduction(
    model: nn.Module, spec: PruneSpec, cost: MacModel, reduction: float, min_channels: int = 1
) -> Mask:
    """Mask the globally smallest |γ| (group mean for residual units) until ``reduction`` of the dense MACs
    are gone (Network Slimming's global ranking, stopped at a FLOPs target); >= ``min_channels`` per unit."""
    entries = []
    for unit in spec.units:
        score = unit_gammas(model, unit).mean(0)
        entries += [(float(s), unit.name, c) for c, s in enumerate(score)]
    entries.sort()
    dense = cost.macs(full_mask(model, spec))

    def mask_removing(k: int) -> Mask:
        mask = full_mask(model, spec)
        for _, name, c in entries[:k]:
            mask[name][c] = False
        for unit in spec.units:
            g = unit_gammas(model, unit).mean(0)
            mask[unit.name] = _ensure_min(mask[unit.name], g, min_channels)
        return mask

    lo, hi = 0, len(entries)
    while lo < hi:  # smallest k whose mask reaches the target (MACs fall monotonically with k)
        mid = (lo + hi) // 2
        if 1 - cost.macs(mask_removing(mid)) / dense >= reduction:
            hi = mid
        else:
            lo = mid + 1
    return mask_removing(lo)


def invert(mask: Mask) -> Mask:
    """Keep-mask -> the channels to penalise (the official trainer inverts the saved keep-masks the same way)."""
    return {name: ~keep for name, keep in mask.items()}


def mask_iou(a: Mask, b: Mask) -> float:
    """Intersection over union of the two masks' pruned channels (the repo's compare_IOU_channel.py)."""
    inter = sum(int((~a[n] & ~b[n]).sum()) for n in a)
    union = sum(int((~a[n] | ~b[n]).sum()) for n in a)
    return inter / union if union else 1.0


# ----------------------------------------------------------------------------------------------------
# MACs of a masked model, without building it


class MacModel:
    """MACs of the model pruned with any mask, from one forward pass that records each layer's output size.

    A conv costs out_h·out_w·k_h·k_w·(c_in/groups)·c_out multiply-accumulates and a linear c_in·c_out; the kept
    channel counts come from the mask (the same counting convention as common.counting, which the tests check).
    """

    def __init__(self, model: nn.Module, spec: PruneSpec, example: torch.Tensor):
        self.layers: dict[str, tuple[nn.Module, int]] = {}
        hooks = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):

                def hook(module, inputs, output, name=name):
                    spatial = output.shape[2] * output.shape[3] if output.dim() == 4 else 1
                    self.layers[name] = (module, spatial)

                hooks.append(m.register_forward_hook(hook))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(example[:1])
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        self.out_unit = {p: u.name for u in spec.units for p in u.producers}
        self.in_unit = {c: u.name for u in spec.units for c in u.consumers}

    def macs(self, mask: Mask) -> int:
        total = 0
        for name, (m, spatial) in self.layers.items():
            cin = int(mask[self.in_unit[name]].sum()) if name in self.in_unit else m.in_features if isinstance(
                m, nn.Linear) else m.in_channels  # fmt: skip
            cout = int(mask[self.out_unit[name]].sum()) if name in self.out_unit else (
                m.out_features if isinstance(m, nn.Linear) else m.out_channels)  # fmt: skip
            if isinstance(m, nn.Linear):
                total += cin * cout
            else:
                kh, kw = m.kernel_size
                total += spatial * kh * kw * (cin // m.groups) * cout
        return total


# ----------------------------------------------------------------------------------------------------
# Sparse regularisation of γ (applied between backward and the optimizer step)


def penalty_gradient(gamma: torch.Tensor, norm: str = "L1", lr: float = 0.0, lam: float = 0.0) -> torch.Tensor:
    """g'(γ) of the penalty g (notes §1.2); the sub-gradient added to grad(γ) is λ·g'(γ).

    - ``L1``: sign(γ) (the official default, used by every official script);
    - ``L2``: γ;
    - ``smoothL1``: the official code's (``SPARSE.REGULAR_METHOD smoothL1``): γ where |γ| < lr·λ, sign(γ)
      elsewhere, i.e. grad(γ) += λ·γ inside the threshold and λ·sign(γ) outside, with ``lr`` the learning rate of
      the current epoch (the official trainer passes the epoch's lr). It is not continuous at |γ| = lr·λ;
    - ``huber``: the Huber form δ = lr·λ (γ/δ inside, sign(γ) outside): our earlier reading of smoothL1, kept as
      an option; continuous, and inside the threshold it adds γ/lr instead of λ·γ.
    """
    if norm == "L1":
        return torch.sign(gamma)
    if norm == "L2":
        return gamma
    if norm in ("smoothL1", "huber"):
        delta = lr * lam
        if delta <= 0:
            return torch.sign(gamma)
        inside = gamma.abs() < delta
        return torch.where(inside, gamma if norm == "smoothL1" else gamma / delta, torch.sign(gamma))
    raise ValueError(f"unknown norm {norm!r}: L1, L2, smoothL1 or huber")


@torch.no_grad()
def add_sparsity_gradient(
    bns: Iterable[tuple[nn.BatchNorm2d, torch.Tensor | None]],
    lam: float,
    norm: str = "L1",
    lr: float = 0.0,
    regularize_beta: bool = False,
) -> None:
    """grad(γ) += λ·g'(γ)·m for each (BN, m); m = None penalises every channel (Network Slimming), a 0/1 vector
    only the channels marked 1 (MaskSparsity: m = 1 − keep). With ``regularize_beta`` β of those channels too."""
    for bn, penalised in bns:
        params = [bn.weight] + ([bn.bias] if regularize_beta else [])
        for p in params:
            step = lam * penalty_gradient(p.detach().float(), norm, lr, lam)
            if penalised is not None:
                step = step * penalised.to(step.device, step.dtype)
            if p.grad is None:
                p.grad = step.to(p.dtype)
            else:
                p.grad.add_(step.to(p.grad.dtype))


def all_bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def slimming_regularizer(
    model: nn.Module, lam: float, norm: str = "L1", spec: PruneSpec | None = None
) -> Callable[[float], None]:
    """Network Slimming: the penalty on every BN γ (or on the units' BNs when ``spec`` is given); call it with the
    epoch's learning rate (used by smoothL1 and huber only)."""
    bns = all_bns(model) if spec is None else [model.get_submodule(bn) for u in spec.units for bn in u.bns]
    targets = [(bn, None) for bn in bns]
    return lambda lr: add_sparsity_gradient(targets, lam, norm, lr)


def masksparsity_regularizer(
    model: nn.Module, spec: PruneSpec, mask: Mask, lam: float, norm: str = "L1", regularize_beta: bool = False
) -> Callable[[float], None]:
    """MaskSparsity: the penalty on the γ of the channels the (keep-)mask removes, nothing else; call it with the
    epoch's learning rate (used by smoothL1 and huber only)."""
    penalised = invert(mask)
    targets = [
        (model.get_submodule(bn), penalised[u.name].float()) for u in spec.units if u.name in mask for bn in u.bns
    ]
    return lambda lr: add_sparsity_gradient(targets, lam, norm, lr, regularize_beta)


# ----------------------------------------------------------------------------------------------------
# Masked dense twin, physical pruning, β folding, BN re-estimation


@torch.no_grad()
def apply_mask(model: nn.Module, spec: PruneSpec, mask: Mask, zero_beta: bool = True) -> nn.Module:
    """A copy of ``model`` whose masked channels are switched off: γ = 0 (and β = 0 with ``zero_beta``, so the
    channel outputs exactly 0, which is what removing it does)."""
    model = copy.deepcopy(model)
    for unit in spec.units:
        if unit.name not in mask:
            continue
        off = ~mask[unit.name]
        for bn in unit.bns:
            module = model.get_submodule(bn)
            module.weight[off] = 0.0
            if zero_beta:
                module.bias[off] = 0.0
    return model


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _slice_conv(conv: nn.Module, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> nn.Module:
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if out_keep is not None:
        w = w[out_keep]
        b = b[out_keep] if b is not None else None
    if in_keep is not None:
        w = w[:, in_keep]
    if isinstance(conv, nn.Linear):
        new: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    else:
        if conv.groups != 1:
            raise NotImplementedError("grouped/depthwise convs are not pruned here")
        new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                        bias=b is not None, padding_mode=conv.padding_mode)  # fmt: skip
    new = new.to(device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new.train(conv.training)


def _slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(int(keep.sum()), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats).to(bn.weight.device, bn.weight.dtype)  # fmt: skip
    new.weight.data.copy_(bn.weight.detach()[keep])
    new.bias.data.copy_(bn.bias.detach()[keep])
    new.running_mean.copy_(bn.running_mean[keep])
    new.running_var.copy_(bn.running_var[keep])
    new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


@torch.no_grad()
def prune(model: nn.Module, spec: PruneSpec, mask: Mask, fold_beta: bool = False) -> nn.Module:
    """A smaller copy of ``model`` without the masked channels (producer filters, BN entries, consumer inputs).

    Without ``fold_beta`` it computes what :func:`apply_mask` (zero_beta=True) computes. With ``fold_beta`` the
    constant relu(β_k) that each removed channel k of an inner unit still feeds its consumer is added back as
    relu(β_k)·Σ W[:, k] to the consumer's bias or subtracted from the next BN's running mean: then the pruned
    model equals ``apply_mask(zero_beta=False)`` wherever the consumer's window sees no zero padding (exactly
    for 1x1 consumers).
    """
    pruned = copy.deepcopy(model)
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    for unit in spec.units:
        if unit.name not in mask:
            continue
        keep = mask[unit.name].to(model.get_submodule(unit.bns[0]).weight.device)
        if bool(keep.all()):
            continue
        for p in unit.producers:
            out_keep[p] = keep
        for c in unit.consumers:
            in_keep[c] = keep
        if fold_beta and unit.kind == "inner":
            removed = ~keep
            bn = model.get_submodule(unit.bns[0])
            const = torch.relu(bn.bias.detach()[removed])
            for consumer, after in unit.folds.items():
                w = model.get_submodule(consumer).weight.detach()[:, removed]
                shift = (w * const.view(1, -1, *([1] * (w.dim() - 2)))).sum(dim=tuple(range(1, w.dim())))
                target = pruned.get_submodule(consumer)
                if target.bias is not None:
                    target.bias.add_(shift)
                else:
                    pruned.get_submodule(after).running_mean.sub_(shift)
    for name in set(out_keep) | set(in_keep):
        _set(pruned, name, _slice_conv(model.get_submodule(name), out_keep.get(name), in_keep.get(name)))
    for unit in spec.units:
        if unit.name in mask and not bool(mask[unit.name].all()):
            for bn in unit.bns:
                keep = mask[unit.name].to(model.get_submodule(bn).weight.device)
                _set(pruned, bn, _slice_bn(pruned.get_submodule(bn), keep))
    return pruned


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate every BN's running statistics as the plain average over ``batches`` (pycls precise BN)."""
    bns = all_bns(model)
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    for x in batches:
        model(x)
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    model.train(was_training)
    return model


def gamma_summary(model: nn.Module, spec: PruneSpec, mask: Mask, small: float = 0.01) -> dict[str, float]:
    """Mean |γ| of kept and masked channels, and the fraction of masked γ below ``small``."""
    kept, masked = [], []
    for unit in spec.units:
        if unit.name not in mask:
            continue
        g = unit_gammas(model, unit)
        kept.append(g[:, mask[unit.name]].flatten())
        masked.append(g[:, ~mask[unit.name]].flatten())
    kept_t, masked_t = torch.cat(kept), torch.cat(masked)
    nan = math.nan
    return {
        "kept_mean_abs_gamma": float(kept_t.mean()) if kept_t.numel() else nan,
        "masked_mean_abs_gamma": float(masked_t.mean()) if masked_t.numel() else nan,
        "masked_below_small": float((masked_t < small).float().mean()) if masked_t.numel() else nan,
    }


def gamma_values(model: nn.Module, spec: PruneSpec, mask: Mask) -> tuple[list[float], list[float]]:
    """All |γ| of kept and of masked channels (for histograms)."""
    kept, masked = [], []
    for unit in spec.units:
        if unit.name in mask:
            g = unit_gammas(model, unit)
            kept += g[:, mask[unit.name]].flatten().tolist()
            masked += g[:, ~mask[unit.name]].flatten().tolist()
    return kept, masked
