"""The speed-ups of the training loops change nothing they compute (or only float rounding, tested in float64)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from nvit import models
from nvit.config import KDConfig
from nvit.models import FlexViT, ViTDims
from nvit.train import batches, evaluate, kd_objective, logits_of, with_teacher_logits
from tests.nvit.test_models import prune_some, tiny


def dataset(n=50, seed=0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 2, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g))


def test_tensor_batches_are_the_dataloader_batches():
    ds = dataset()
    via_loader = Subset(ds, range(len(ds)))  # not a TensorDataset: the DataLoader path
    for seed in (0, 7):
        fast = list(itertools.islice(batches(ds, 8, seed), 14))  # 6 batches per epoch: crosses two epochs
        slow = list(itertools.islice(batches(via_loader, 8, seed), 14))
        for (xa, ya), (xb, yb) in zip(fast, slow, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_precomputed_teacher_logits_give_the_kd_loss_of_the_teacher():
    """Float64: the logits of a batch of 1000 and of the training batch differ only in summation order."""
    teacher, student = tiny().double().eval(), prune_some(tiny()).double()
    ds = TensorDataset(*(t.double() if t.is_floating_point() else t for t in dataset().tensors))
    kd_ds = with_teacher_logits(ds, logits_of(teacher, ds, torch.device("cpu")))
    x, y, t = next(batches(kd_ds, 8, 3))
    kw = {"kl_coeff": 1.0, "tau": 2.0, "kd": KDConfig()}
    cached = kd_objective(student, x, y, teacher=None, teacher_logits=t, **kw)
    live = kd_objective(student, x, y, teacher=teacher, **kw)
    torch.testing.assert_close(cached, live, rtol=1e-12, atol=0.0)  # float64: ~1e-16 relative
    with pytest.raises(TypeError):
        with_teacher_logits(kd_ds, t)  # already has a third tensor


def test_unpruned_models_skip_their_masks_exactly(monkeypatch):
    """x * 1.0 == x: skipping all-ones masks gives bit-identical outputs and gradients."""
    x, y = dataset(6).tensors
    results = []
    for skip in (True, False):
        if not skip:
            monkeypatch.setattr(models, "_unpruned", lambda *masks: False)
        model = tiny()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        results.append((model(x).detach(), [p.grad.clone() for p in model.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


@pytest.mark.parametrize("qk, v", [(4, 4), (4, 6)])
def test_patch_embedding_and_attention_compute_what_the_reference_does(qk, v):
    """The patch embedding as a matrix product vs the conv, and the fused attention vs softmax(qkᵀ·s)v, float64."""
    dims = ViTDims.uniform(depth=2, emb=16, heads=3, qk=qk, v=v, mlp=24, image_size=8, patch_size=4, in_chans=2,
                           num_classes=5)  # fmt: skip
    torch.manual_seed(0)
    model = FlexViT(dims).double().eval()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    conv = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.embed_patches(x), conv, rtol=1e-12, atol=1e-14)
    attn, h = model.blocks[0].attn, torch.randn(5, dims.tokens, 16, dtype=torch.float64)
    b, t = h.shape[:2]
    q = attn.q(h).view(b, t, 3, qk).transpose(1, 2)
    k = attn.k(h).view(b, t, 3, qk).transpose(1, 2)
    vv = attn.v(h).view(b, t, 3, v).transpose(1, 2)
    ref = attn.proj((((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1) @ vv).transpose(1, 2).reshape(b, t, -1))
    torch.testing.assert_close(attn(h), ref, rtol=1e-12, atol=1e-14)


def test_evaluate_matches_a_plain_loop():
    model, ds = prune_some(tiny()).eval(), dataset(30)
    got = evaluate(model, ds, torch.device("cpu"), batch_size=7)
    with torch.no_grad():
        logits = model(ds.tensors[0])
    assert got["top1"] == pytest.approx(100.0 * float((logits.argmax(-1) == ds.tensors[1]).float().mean()))
    assert got["loss"] == pytest.approx(float(F.cross_entropy(logits, ds.tensors[1])), rel=1e-5)  # float32 sums
    assert copy.deepcopy(got) == evaluate(model, Subset(ds, range(30)), torch.device("cpu"), batch_size=7)
