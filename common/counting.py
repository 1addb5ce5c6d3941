"""Parameters and FLOPs of any torch model, and their ratios to a dense reference.

FLOPs come from torch's own ``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix
products of a real forward pass: linear/matmul/bmm/addmm, convolutions and scaled-dot-product
attention, at 2 FLOPs per multiply-accumulate. Two gaps of the counter are closed here, both of which
silently count attention as 0 on the CPU (seen with torch 2.14): the CPU kernel of
``F.scaled_dot_product_attention`` (``_scaled_dot_product_flash_attention_for_cpu``) has no formula,
so one is registered; and ``nn.MultiheadAttention``'s inference fast path is a fused op the counter
does not know, so the fast path is switched off while counting. Element-wise ops (norms, activations, softmax, adds)
are not counted, as in the pruning literature's MAC counts. ``macs`` is therefore ``flops / 2``.
Papers that report "FLOPs" but mean MACs (many CNN pruning papers do) should be compared on MACs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .latency import Inputs, call_with_inputs


def count_params(model: torch.nn.Module, *, nonzero: bool = False, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once); ``nonzero`` counts only non-zero entries."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += int(torch.count_nonzero(p)) if nonzero else p.numel()
    return total


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def count_flops(model: torch.nn.Module, example_inputs: Inputs, *, by_module: bool = False) -> int | dict[str, int]:
    """FLOPs of one forward pass of ``model`` (eval mode, no grad) on ``example_inputs``.

    With ``by_module=True`` returns ``{module name: FLOPs}`` from the counter's hierarchy ("Global" is
    the total), useful to see where the cost of a pruned model went.
    """
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), counter:
            call_with_inputs(model, example_inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    if by_module:
        return {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Cost:
    """What a model costs: parameters and forward FLOPs for the given input (2 FLOPs per MAC)."""

    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"macs": self.macs}


def model_cost(model: torch.nn.Module, example_inputs: Inputs) -> Cost:
    return Cost(params=count_params(model), flops=count_flops(model, example_inputs))


@dataclass(frozen=True)
class RelativeCost:
    """A model's cost next to its dense reference, with both ways of stating the ratio."""

    dense: Cost
    model: Cost

    @property
    def params_ratio(self) -> float:
        """model / dense parameters (0.4 means 40% of the dense parameters remain)."""
        return self.model.params / self.dense.params

    @property
    def flops_ratio(self) -> float:
        """model / dense FLOPs."""
        return self.model.flops / self.dense.flops

    @property
    def params_reduction(self) -> float:
        """1 - params_ratio: the fraction of parameters removed (0.6034 is the papers' "60.34%")."""
        return 1.0 - self.params_ratio

    @property
    def flops_reduction(self) -> float:
        return 1.0 - self.flops_ratio

    @property
    def params_compression(self) -> float:
        """dense / model parameters: the "×" factor (2.5 means 2.5× fewer parameters)."""
        return self.dense.params / self.model.params

    @property
    def flops_compression(self) -> float:
        return self.dense.flops / self.model.flops

    def to_json(self) -> dict[str, Any]:
        keys = ("params_ratio", "flops_ratio", "params_reduction", "flops_reduction",
                "params_compression", "flops_compression")  # fmt: skip
        return {"dense": self.dense.to_json(), "model": self.model.to_json()} | {k: getattr(self, k) for k in keys}


def relative_cost(
    model: torch.nn.Module,
    dense: torch.nn.Module | Cost,
    example_inputs: Inputs | Mapping[str, Any],
) -> RelativeCost:
    """Cost of ``model`` and of its dense reference (a module, or its precomputed :class:`Cost`)."""
    dense_cost = dense if isinstance(dense, Cost) else model_cost(dense, example_inputs)
    return RelativeCost(dense=dense_cost, model=model_cost(model, example_inputs))
