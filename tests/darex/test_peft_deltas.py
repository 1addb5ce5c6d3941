"""`lora_delta_parameters` equals PEFT's own merge for every adapter kind it accepts, and refuses the rest.

The reference is PEFT's ``merge_and_unload()`` on a deep copy: merged tensor minus base tensor. Our deltas
are computed in float64; PEFT merges in float32, so the two agree to a tolerance derived from float32
rounding of that computation (a dot product of length k costs at most about k·eps relative to the
magnitude of the terms), never from what one machine happened to give.
"""

from __future__ import annotations

import copy

import pytest
import torch

from darex.method import DeltaMismatchError, apply_delta, delta_parameters, lora_delta_parameters
from darex.models import MLP

peft = pytest.importorskip("peft")

EPS32 = torch.finfo(torch.float32).eps


def float32_tolerance(merged: torch.Tensor, length: int) -> float:
    """Absolute error bound of a float32 merge whose entries come from sums of ``length`` terms of the size of
    the merged tensor's entries (plus the subtraction of the base): (length + 4) · eps · max |merged|."""
    return (length + 4) * EPS32 * float(merged.abs().max())


def randomise_adapter(model: torch.nn.Module, seed: int = 0) -> None:
    """LoRA's B (and its bias; A for embeddings) start at zero and DoRA's magnitude at ‖W‖, which make ΔW = 0:
    perturb them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("lora_B", "lora_embedding_A", "lora_magnitude_vector")):
                param.add_(0.5 * torch.randn(param.shape, generator=g))


def peft_merge_deltas(base: torch.nn.Module, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's merge of a copy, minus the base: the reference ΔW (and Δb)."""
    merged = copy.deepcopy(model).merge_and_unload()
    return delta_parameters(base, merged, exclude=None), merged.state_dict()


def assert_matches_merge(base, model, expected_names, length):
    deltas = lora_delta_parameters(model)
    reference, merged = peft_merge_deltas(base, model)
    changed = {n for n, d in reference.items() if d.abs().max() > 0}
    assert set(deltas) == set(expected_names) == changed, "every tensor the merge changes, and only those"
    for name, delta in deltas.items():
        assert delta.dtype == torch.float32
        torch.testing.assert_close(delta, reference[name], rtol=0, atol=float32_tolerance(merged[name], length))
    restored = apply_delta(base, deltas)
    for name, tensor in merged.items():
        torch.testing.assert_close(restored[name], tensor, rtol=0, atol=float32_tolerance(tensor, length))
    return deltas


def test_plain_lora_equals_the_merge():
    torch.manual_seed(0)
    base = MLP(6, 8, 2, 3)
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    randomise_adapter(model)
    assert_matches_merge(base, model, {"body.0.weight", "body.2.weight"}, length=8)


def test_dora_equals_the_merge_not_b_times_a():
    """DoRA rescales each output row of W + B·A·s to a learned magnitude, so ΔW is not B·A·s."""
    torch.manual_seed(0)
    base = MLP(6, 8, 2, 3)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"], use_dora=True)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    randomise_adapter(model)
    deltas = assert_matches_merge(base, model, {"body.0.weight", "body.2.weight"}, length=8)
    layer = model.base_model.model.body[0]
    plain = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
    relative = (deltas["body.0.weight"] - plain).norm() / deltas["body.0.weight"].norm()
    assert relative > 0.1, "B·A·s alone (what the code returned before) is far from DoRA's ΔW"


def test_dora_on_a_fan_in_fan_out_layer_equals_the_merge():
    """GPT-2's Conv1D stores W transposed (fan_in_fan_out): DoRA's row norms are over W's output rows."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    base = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)).eval()
    for use_dora in (False, True):
        config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True, use_dora=use_dora)
        model = peft.get_peft_model(copy.deepcopy(base), config)
        randomise_adapter(model, seed=int(use_dora))
        deltas = assert_matches_merge(base, model, {"h.0.attn.c_attn.weight"}, length=16)
        assert deltas["h.0.attn.c_attn.weight"].shape == (16, 48)


def test_lora_bias_adds_the_bias_delta():
    torch.manual_seed(0)
    base = MLP(6, 8, 2, 3)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"], lora_bias=True)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    randomise_adapter(model)
    deltas = assert_matches_merge(
        base, model, {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}, length=8
    )
    layer = model.base_model.model.body[2]
    torch.testing.assert_close(deltas["body.2.bias"], layer.lora_B["default"].bias * layer.scaling["default"])


def test_lora_on_an_embedding_equals_the_merge():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Linear(8, 3))
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "1"]))
    randomise_adapter(model)
    assert_matches_merge(base, model, {"0.weight", "1.weight"}, length=8)


def test_rslora_scaling_is_the_layers_own():
    torch.manual_seed(0)
    base = MLP(6, 8, 2, 3)
    config = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["0"], use_rslora=True)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    randomise_adapter(model)
    assert_matches_merge(base, model, {"body.0.weight"}, length=8)


def test_unsupported_adapters_are_refused_by_name():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    model = peft.get_peft_model(conv, peft.LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(DeltaMismatchError, match=r"LoRA layer 0 \(Conv2d\): LoRA on Conv2d is not supported"):
        lora_delta_parameters(model)

    embedding = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Linear(8, 3))
    model = peft.get_peft_model(embedding, peft.LoraConfig(r=2, target_modules=["0"], use_dora=True))
    with pytest.raises(DeltaMismatchError, match=r"DoraEmbeddingVariant variant of adapter 'default'"):
        lora_delta_parameters(model)


def test_a_merged_adapter_is_refused():
    """Once merged, the base layer holds W + ΔW, so neither DoRA's ΔW nor apply_delta would be right."""
    base = MLP(6, 8, 2, 3)
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["0"]))
    model.merge_adapter()
    with pytest.raises(DeltaMismatchError, match="unmerge"):
        lora_delta_parameters(model)


def test_an_adapter_name_that_is_not_there():
    model = peft.get_peft_model(MLP(6, 8, 2, 3), peft.LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(DeltaMismatchError, match="no LoRA layers with adapter 'other'"):
        lora_delta_parameters(model, adapter="other")
