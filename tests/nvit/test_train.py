"""The speed-ups of the training loops change nothing they compute (or only float rounding, tested in float64)."""

from __future__ import annotations

import copy
import itertools
import warnings

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


def test_kl_mean_is_sum_over_images_and_classes():
    """'mean' = sum / (B·C), what torch's KLDivLoss() default gives on probabilities (the official loss); 'batchmean'
    = sum / B. Float64: the two computations differ in summation order only."""
    from nvit.train import kl_divergence

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():  # torch warns that its 'mean' will change: the reason to write it out
        warnings.simplefilter("ignore")
        official = torch.nn.KLDivLoss()(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1))
    torch.testing.assert_close(kl_divergence(s, t, 3.0, "mean"), official, rtol=1e-12, atol=0.0)
    per_image = (F.softmax(t / 3, -1) * (F.log_softmax(t / 3, -1) - F.log_softmax(s / 3, -1))).sum(-1)
    torch.testing.assert_close(kl_divergence(s, t, 3.0, "batchmean"), per_image.mean(), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(kl_divergence(s, t, 3.0, "mean") * 10, kl_divergence(s, t, 3.0, "batchmean"))
    with pytest.raises(ValueError):
        kl_divergence(s, t, 3.0, "sum")


def test_per_head_kl_is_the_mean_of_the_two_heads():
    from nvit.train import kl_divergence

    teacher, student = tiny(distill=True).double().eval(), prune_some(tiny(distill=True)).double()
    x, y = dataset(8).tensors
    x = x.double()
    kd = KDConfig(kl_reduction="mean", label_loss_coeff=0.0)
    got = kd_objective(student, x, y, teacher=teacher, kl_coeff=1.0, tau=20.0, kd=kd, kl_per_head=True)
    (sc, sd), (tc, td) = student.forward_heads(x), teacher.forward_heads(x)
    want = (kl_divergence(sc, tc, 20.0, "mean") + kl_divergence(sd, td, 20.0, "mean")) / 2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)
    averaged = kd_objective(student, x, y, teacher=teacher, kl_coeff=1.0, tau=20.0, kd=kd)
    assert not torch.allclose(got, averaged)  # the two objectives differ
    with pytest.raises(ValueError, match="teacher"):
        kd_objective(student, x, y, teacher=None, teacher_logits=tc, kl_coeff=1.0, tau=2.0, kd=kd, kl_per_head=True)


def test_cosine_schedule_floor():
    from nvit.train import cosine_lr

    assert cosine_lr(1e-3, 0, 100) == 1e-3 and cosine_lr(1e-3, 100, 100) == 0.0
    assert cosine_lr(1e-3, 0, 100, min_lr=1e-5) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 100, 100, min_lr=1e-5) == pytest.approx(1e-5)
    assert cosine_lr(1e-3, 50, 100, min_lr=1e-5) == pytest.approx((1e-3 + 1e-5) / 2)


def test_repeated_augmentation_order_and_shards():
    """DeiT's sampler: each image 3 times in a row, N//256*256 draws an epoch; P shards of a batch are its rows
    r::P, so together they are the one-process batch and an image's copies go to different processes."""
    from nvit.train import epoch_order

    order = epoch_order(600, seed=1, epoch=0, repeated_augmentation=True)
    first = order[:510]  # 512 draws: 170 whole triples, then the first two copies of one more image
    assert len(order) == 512 and torch.equal(first[0::3], first[1::3]) and torch.equal(first[0::3], first[2::3])
    assert torch.equal(epoch_order(50, 1, 0), torch.randperm(50, generator=_dataloader_generator(1000)))
    ds = dataset(48)
    for ra in (False, True):
        one = list(itertools.islice(batches(ds, 12, 5, repeated_augmentation=ra, shard=(0, 1)), 6))
        two = [list(itertools.islice(batches(ds, 12, 5, repeated_augmentation=ra, shard=(r, 2)), 6)) for r in (0, 1)]
        for i, (x, _y) in enumerate(one):
            x0, x1 = two[0][i][0], two[1][i][0]
            assert len(x0) == len(x1) == 6 and torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
            if ra:  # rows 3k, 3k+1, 3k+2 are one image: rows 0 and 1 go to different processes
                assert torch.equal(x[0], x[1]) and torch.equal(x0[0], x1[0])
    with pytest.raises(ValueError, match="multiple"):
        next(batches(ds, 12, 5, shard=(0, 5)))
    loader_path = list(itertools.islice(batches(Subset(ds, range(48)), 12, 5, shard=(1, 2)), 3))
    tensor_path = list(itertools.islice(batches(ds, 12, 5, shard=(1, 2)), 3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(loader_path, tensor_path, strict=True))


def _dataloader_generator(seed):
    from common.runtime import generator

    g = generator(seed)
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return g


def test_gradient_accumulation_gives_the_batch_gradient():
    """Two micro-batches weighted by their rows give the gradient of the batch's mean loss (float64)."""
    from nvit.train import backward_accumulated

    x, y = dataset(8).tensors
    grads = []
    for k in (1, 2, 4):
        model = tiny().double()
        loss = backward_accumulated(model, x.double(), y, None, lambda a, b, _t, m=model: F.cross_entropy(m(a), b), k)
        grads.append(([p.grad.clone() for p in model.parameters()], loss))
    for g, loss in grads[1:]:
        assert loss == pytest.approx(grads[0][1], rel=1e-12)
        for a, b in zip(grads[0][0], g, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    with pytest.raises(ValueError, match="micro-batches"):
        backward_accumulated(tiny(), x, y, None, lambda a, b, _t: a.sum(), 3)


def test_official_finetune_recipe_runs_at_tiny_scale():
    """The paper preset's fine-tune path: per-head KL at T = 20 ('mean'), cosine floor, weight EMA, drop path,
    repeated augmentation; the EMA moves towards the trained weights."""
    from timm.utils import ModelEmaV2

    from nvit.models import set_drop_path
    from nvit.train import train_steps

    teacher, student = tiny(distill=True).eval(), to_dense_copy(prune_some(tiny(distill=True)))
    set_drop_path(student, 0.1)
    ema = ModelEmaV2(student, decay=0.5)
    start = [p.detach().clone() for p in ema.module.parameters()]
    kd = KDConfig(kl_reduction="mean", finetune_kl_per_head=True)
    stream = batches(dataset(48), 12, 0, repeated_augmentation=True)
    losses = train_steps(student, stream, 4, lr=1e-3, weight_decay=0.05, device=torch.device("cpu"),
                         teacher=teacher, kl_coeff=1e5, tau=20.0, kd=kd, min_lr=1e-5, ema=ema,
                         kl_per_head=True)  # fmt: skip
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    moved = [not torch.equal(a, b) for a, b in zip(start, ema.module.parameters(), strict=True)]
    assert any(moved)


def to_dense_copy(model):
    from nvit.models import to_dense

    return to_dense(model).train()


@pytest.mark.kernel_independent  # both runs use the same kernels
def test_a_killed_fine_tune_resumes_to_the_uninterrupted_result(kill_and_resume):
    """train_steps on a BatchStream inside a cached stage, with the official recipe's stateful parts (weight EMA,
    drop path drawing from torch's generator, repeated augmentation): killed after its first epoch and run again, it
    continues from step 4 and ends with the weights, EMA and losses of an uninterrupted run, bit for bit."""
    from timm.utils import ModelEmaV2

    from nvit.models import set_drop_path
    from nvit.train import BatchStream, train_steps

    teacher = tiny(distill=True).eval()

    def run() -> tuple[dict, dict, list]:
        torch.manual_seed(0)
        student = to_dense_copy(prune_some(tiny(distill=True)))
        set_drop_path(student, 0.1)
        ema = ModelEmaV2(student, decay=0.5)
        stream = BatchStream(dataset(48), 12, 0, repeated_augmentation=True)
        assert stream.epoch_steps == 4
        losses = train_steps(student, stream, 10, lr=1e-3, weight_decay=0.05, device=torch.device("cpu"),
                             teacher=teacher, kl_coeff=1.0, tau=2.0, ema=ema)  # fmt: skip
        return student.state_dict(), ema.state_dict(), losses

    reference, resumed, restored = kill_and_resume(run, after=0)
    assert restored == [1], "the second run restored the state saved after the first epoch"
    for ref, got in zip(reference[:2], resumed[:2], strict=True):
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert resumed[2] == reference[2] and len(resumed[2]) == 10


@pytest.mark.kernel_independent
def test_a_stream_with_no_full_batch_is_refused_instead_of_hanging():
    for extra in ({}, {"repeated_augmentation": True}):
        with pytest.raises(ValueError, match="full batch"):
            next(batches(dataset(5), 8, 0, **extra))
