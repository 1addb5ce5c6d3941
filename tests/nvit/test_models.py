"""FlexViT: timm loading, masks that stay zero, dense conversion, FLOPs, export, ReViT."""

from __future__ import annotations

import copy

import pytest
import torch

from common.counting import count_flops, count_params
from nvit.models import (
    FlexViT,
    ViTDims,
    count_dims_params,
    export_pruned,
    from_timm,
    load_pruned,
    revit_dims,
    to_dense,
    vit_macs,
)
from nvit.train import make_optimizer


def tiny(distill: bool = False) -> FlexViT:
    dims = ViTDims.uniform(depth=2, emb=16, heads=3, qk=4, v=6, mlp=24, image_size=8, patch_size=4,
                           in_chans=2, num_classes=5, distillation_token=distill)  # fmt: skip
    torch.manual_seed(0)
    model = FlexViT(dims)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def prune_some(model: FlexViT) -> FlexViT:
    model.emb_mask[[1, 5, 6]] = 0
    model.blocks[0].attn.head_mask[1] = 0
    model.blocks[0].attn.qk_mask[2] = 0
    model.blocks[1].attn.v_mask[[0, 3]] = 0
    model.blocks[1].mlp.mlp_mask[:10] = 0
    return model.apply_masks_()


@pytest.mark.parametrize(
    "name,kwargs",
    [("test_vit", dict(img_size=32)), ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2))],
)
def test_timm_state_dict_gives_identical_logits(name, kwargs):
    timm = pytest.importorskip("timm")
    tm = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (timm zero-inits some)
        for p in tm.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    model = from_timm(tm).eval()
    assert "blocks.0.attn.q.weight" in model.state_dict() and "blocks.0.attn.qkv.weight" in tm.state_dict()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # compared in float64 (same weights), so float64's default tolerances apply
        torch.testing.assert_close(model.double()(x.double()), tm.double()(x.double()))


@pytest.mark.parametrize("distill", [False, True])
def test_masked_model_equals_converted_dense_model(distill):
    model = prune_some(tiny(distill)).eval()
    small = to_dense(model).eval()
    assert small.dims.emb == 13 and small.dims.heads == (2, 3) and small.dims.qk == (3, 4)
    assert small.dims.v == (6, 4) and small.dims.mlp == (24, 14)
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():  # in float64 (float64's default tolerances): only the summation order differs
        torch.testing.assert_close(model.double()(x), small.double()(x))
    assert count_params(small) == count_dims_params(small.dims)  # masks are buffers, not parameters


def test_unpruned_masked_layernorm_is_plain_layernorm():
    model = tiny().double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    ln = model.blocks[0].norm1  # float64 (default tolerances): two algorithms for the same mean and variance
    torch.testing.assert_close(ln(x, torch.ones(16, dtype=torch.float64)), ln(x))


def test_pruned_units_stay_zero_after_optimizer_steps_and_deepcopy():
    x, y = torch.randn(8, 2, 8, 8), torch.randint(0, 5, (8,))

    def steps(model, opt, n, reapply=True):
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if reapply:
                model.apply_masks_()

    for reapply in (True, False):
        model = tiny()
        opt = make_optimizer(model, lr=1e-2, weight_decay=0.05)
        steps(model, opt, 3)  # Adam momentum builds up on every weight
        prune_some(model)
        masks = {k: v.clone() for k, v in model.param_masks().items()}
        steps(model, opt, 3, reapply=reapply)
        params = dict(model.named_parameters())
        stray = sum(int((params[name][mask == 0] != 0).sum()) for name, mask in masks.items())
        if not reapply:
            assert stray > 0  # momentum and weight decay do move pruned weights: re-applying is needed
            continue
        assert stray == 0
        clone = copy.deepcopy(model)
        cparams = dict(clone.named_parameters())
        assert all(torch.all(cparams[name][mask == 0] == 0) for name, mask in masks.items())
        assert torch.equal(clone.emb_mask, model.emb_mask) and clone.current_dims() == model.current_dims()
        steps(clone, make_optimizer(clone, lr=1e-2, weight_decay=0.05), 2)
        assert clone.current_dims() == model.current_dims()
        cparams = dict(clone.named_parameters())
        assert all(torch.all(cparams[name][mask == 0] == 0) for name, mask in masks.items())
    # the forward pass ignores pruned weights even if something writes into them
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.blocks[1].mlp.fc1.weight[:10].fill_(3.0)
        model.emb_mask.mul_(1.0)
        torch.testing.assert_close(model(x), before)


def test_flops_of_converted_model_match_the_counter():
    model = prune_some(tiny(distill=True)).eval()
    small = to_dense(model)
    x = torch.randn(1, 2, 8, 8)
    assert count_flops(small, x) == 2 * vit_macs(small.dims)
    dense = tiny()
    assert count_flops(dense, x) == 2 * vit_macs(dense.dims)


def test_export_roundtrip(tmp_path):
    model = prune_some(tiny()).eval()
    path = export_pruned(model, tmp_path / "pruned.pt")
    loaded = load_pruned(path).eval()
    assert loaded.dims == model.current_dims()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():  # the exported float32 weights, compared in float64 (default tolerances)
        torch.testing.assert_close(loaded.double()(x), model.double()(x))
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="export_pruned"):
        load_pruned(tmp_path / "other.pt")


def test_revit_rule_table6():
    for emb in (176, 384):
        d = revit_dims(emb, 12)
        middle = range(3, 9)  # blocks 4-9 of 12
        for i in range(12):
            eps = 2 if i in middle else 1
            assert d.heads[i] % 2 == 0 and abs(d.heads[i] - eps * emb / 100) <= 1
            assert d.qk[i] % 8 == 0 and abs(d.qk[i] - eps * emb / 20) <= 4
            assert d.v[i] == 64 and d.mlp[i] == 3 * eps * emb
    assert revit_dims(384, 12).heads == (4, 4, 4, 8, 8, 8, 8, 8, 8, 4, 4, 4)


def test_bad_dims_are_rejected():
    with pytest.raises(ValueError):
        ViTDims(emb=8, heads=(1, 2), qk=(2,), v=(2, 2), mlp=(4, 4))
    with pytest.raises(ValueError):
        ViTDims.uniform(depth=1, emb=8, heads=0, qk=2, v=2, mlp=4)


def test_revit_official_builder_gives_table7_sizes():
    """The official builder at EMB 384 with DeiT's distillation token: 23.1M params, 4.71G MACs (Table 7: ReViT-S
    23M, 4.7G); the Table 6 text gives 22.4M / 4.53G. Exact closed forms (integers)."""
    from nvit.models import revit_dims_official

    kw = dict(image_size=224, patch_size=16, in_chans=3, num_classes=1000, distillation_token=True)
    s = revit_dims(384, 12, rule="official", **kw)
    assert s == revit_dims_official(384, 12, **kw)
    assert s.heads == (10, 4, 4, 8, 8, 8, 8, 8, 8, 4, 4, 10) and s.qk == (32, 16, 16, *(32,) * 6, 16, 16, 32)
    assert s.v == (64,) * 12 and s.mlp == (1152,) * 3 + (2304,) * 6 + (1152,) * 3
    assert count_dims_params(s) == 23_123_280 and vit_macs(s) == 4_705_190_400
    table6 = revit_dims(384, 12, **kw)
    assert count_dims_params(table6) == 22_434_128 and vit_macs(table6) == 4_533_814_272
    t = revit_dims(176, 12, rule="official", **kw)  # ReViT-T: Table 7 says 5.9M / 1.3G, neither rule gives that
    assert t.heads == (10, 2, 2, 4, 4, 4, 4, 4, 4, 2, 2, 10) and count_dims_params(t) == 5_339_136
    with pytest.raises(ValueError, match="12 blocks"):
        revit_dims(64, 6, rule="official")
    with pytest.raises(ValueError, match="rule"):
        revit_dims(64, 6, rule="other")


def test_drop_path_trains_only_and_is_off_by_default():
    from nvit.models import set_drop_path

    model, x = tiny(), torch.randn(4, 2, 8, 8)
    model.train()
    with torch.no_grad():
        plain = model(x)
        set_drop_path(model, 0.5)
        assert [b.drop_path_rate for b in model.blocks] == [0.0, 0.5]  # linear in depth, as timm
        torch.manual_seed(3)
        dropped = model(x)
        model.eval()
        torch.testing.assert_close(model(x), plain, rtol=0, atol=0)  # eval: exactly the identity
        set_drop_path(model, 0.0)
        model.train()
        assert torch.equal(model(x), plain)
    assert not torch.allclose(dropped, plain)
    with pytest.raises(ValueError):
        set_drop_path(model, 1.0)
