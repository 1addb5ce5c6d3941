"""Data, the training objective (Eq. 8-9) and the loops: dense training, KD fine-tuning, evaluation.

No pruning logic here (``nvit.prune`` has it). Loops run on whatever device the caller picked
(``common.runtime.select_device``) and re-apply the pruning masks after every optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from common import data as cdata
from common.errors import check_finite
from common.runtime import generator, progress

from .config import DataConfig, DenseTrainConfig, KDConfig, ModelConfig
from .models import FlexViT


@dataclass
class Data:
    train: Dataset
    test: Dataset
    n_train: int
    n_test: int


def load_data(cfg: DataConfig, model: ModelConfig) -> Data:
    """The preset's dataset: digits (sklearn), Fashion-MNIST (offline Debian copy) or a local ImageNet."""
    if cfg.dataset == "digits":
        full = cdata.digits()
        n_train = cfg.train_subset or 1400
        perm = torch.randperm(len(full), generator=generator(0))
        x, y = full.tensors
        if model.image_size != 8:
            raise ValueError("digits are 8x8: set model.image_size=8")
        train, test = (
            TensorDataset(x[perm[:n_train]], y[perm[:n_train]]),
            TensorDataset(x[perm[n_train:]], y[perm[n_train:]]),
        )
    elif cfg.dataset == "fashion_mnist":
        size = None if model.image_size == 28 else model.image_size
        train = cdata.fashion_mnist("train", root=cfg.root or None, n=cfg.train_subset or None, seed=0, size=size,
                                    channels=model.in_chans)  # fmt: skip
        test = cdata.fashion_mnist("test", root=cfg.root or None, n=cfg.test_subset or None, seed=0, size=size,
                                   channels=model.in_chans)  # fmt: skip
    elif cfg.dataset == "imagenet":
        from timm.data import create_transform

        common_args = dict(input_size=(model.in_chans, model.image_size, model.image_size))
        train_tf = create_transform(**common_args, is_training=True, auto_augment=cfg.randaugment or None,
                                    re_prob=cfg.random_erasing, interpolation="bicubic")  # fmt: skip
        test_tf = create_transform(**common_args, is_training=False, interpolation="bicubic", crop_pct=0.875)
        train = cdata.image_folder(cfg.root, "train", transform=train_tf)
        test = cdata.image_folder(cfg.root, "val", transform=test_tf)
        if cfg.train_subset:
            train = Subset(train, torch.randperm(len(train), generator=generator(0))[: cfg.train_subset].tolist())
        if cfg.test_subset:
            test = Subset(test, list(range(cfg.test_subset)))
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    return Data(train=train, test=test, n_train=len(train), n_test=len(test))


def batches(dataset: Dataset, batch_size: int, seed: int, *, num_workers: int = 0) -> Iterator[tuple]:
    """An endless stream of shuffled batches (a new seeded order each epoch); drops the last partial batch.

    An in-memory :class:`TensorDataset` is sliced directly, in exactly the order ``common.data.loader`` gives
    (the same permutation of the same seeded generator, after the one draw the DataLoader's iterator takes for
    its base seed), without the per-item indexing and collation (``tests/nvit/test_train.py``). Its tensors
    may include a third one, the teacher's logits of each image (:func:`with_teacher_logits`).
    """
    epoch = 0
    if isinstance(dataset, TensorDataset) and num_workers == 0:
        tensors, n = dataset.tensors, len(dataset)
        while True:
            g = generator(seed * 1000 + epoch)
            torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader iterator's base-seed draw
            perm = torch.randperm(n, generator=g)
            for i in range(n // batch_size):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                yield tuple(t[idx] for t in tensors)
            epoch += 1
    while True:
        loader = cdata.loader(dataset, batch_size, shuffle=True, seed=seed * 1000 + epoch, drop_last=True,
                              num_workers=num_workers)  # fmt: skip
        yield from loader
        epoch += 1


@torch.inference_mode()
def logits_of(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    """``model``'s logits (eval mode) on every item of ``dataset``, in order, on the CPU."""
    model.eval()
    return torch.cat([model(x.to(device)).cpu() for x, *_ in _eval_batches(dataset, batch_size)])


def with_teacher_logits(dataset: Dataset, logits: torch.Tensor) -> TensorDataset:
    """``dataset`` (an in-memory ``TensorDataset`` of images and labels) with a third tensor: the fixed teacher's
    logits of each image, computed once (:func:`logits_of`), so that KD steps need no teacher forward pass.

    Only valid when the training images are not augmented (no RandAugment, mixup or cutmix): the teacher must
    see exactly the student's input. The result is the KD target of Eq. 9 up to float32 summation order (a
    forward pass at another batch size).
    """
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2:
        raise TypeError("teacher logits need an in-memory TensorDataset of (images, labels)")
    if len(logits) != len(dataset):
        raise ValueError(f"{len(logits)} teacher logits for {len(dataset)} images")
    return TensorDataset(*dataset.tensors, logits)


def _eval_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple]:
    if isinstance(dataset, TensorDataset):
        n = len(dataset)
        for i in range(0, n, batch_size):
            yield tuple(t[i : i + batch_size] for t in dataset.tensors)
    else:
        yield from cdata.loader(dataset, batch_size)


def batches_per_epoch(data: Data, batch_size: int) -> int:
    return max(1, data.n_train // batch_size)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    if target.dim() == 1:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def kd_objective(
    student: FlexViT,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    teacher: nn.Module | None,
    kl_coeff: float,
    tau: float,
    kd: KDConfig,
    cnn_teacher: nn.Module | None = None,
    label_smoothing: float = 0.0,
    teacher_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = α·L_full + L_CNN (Eq. 8-9).

    L_full = KL(ψ(z_s/τ) ‖ ψ(z_t/τ)) to the dense model, on the (averaged) output; reduction per
    ``kd.kl_reduction``. L_CNN = ``label_loss_coeff`` × [CE(cls, y), or with a distillation token and a CNN
    teacher DeiT's hard distillation (1−a)·CE(cls, y) + a·CE(dist, argmax teacher)]. ``teacher_logits``: the
    dense model's logits z_t of this batch, computed beforehand (then ``teacher`` is not run).
    """
    cls_logits, dist_logits = student.forward_heads(x)
    out = cls_logits if dist_logits is None else (cls_logits + dist_logits) / 2
    if dist_logits is not None and cnn_teacher is not None:
        with torch.no_grad():
            hard = cnn_teacher(x).argmax(-1)
        a = kd.distillation_alpha
        label_loss = (1 - a) * soft_cross_entropy(cls_logits, y, label_smoothing) + a * F.cross_entropy(
            dist_logits, hard
        )
    else:
        label_loss = soft_cross_entropy(out, y, label_smoothing)
    loss = kd.label_loss_coeff * label_loss
    if (teacher is not None or teacher_logits is not None) and kl_coeff:
        if teacher_logits is not None:
            t_logits = teacher_logits
        else:
            with torch.no_grad():
                t_logits = teacher(x)
        kl = F.kl_div(F.log_softmax(out / tau, -1), F.log_softmax(t_logits / tau, -1), log_target=True,
                      reduction=kd.kl_reduction)  # fmt: skip
        loss = loss + kl_coeff * kl
    return loss


def cosine_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on norms, biases, tokens and position embeddings (timm/DeiT convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 or name in ("cls_token", "dist_token", "pos_embed") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel: one call per step instead of ~10 small ops per tensor (a tiny ViT's step is ~10% faster)
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a device or torch version without the fused AdamW
        return torch.optim.AdamW(groups, lr=lr)


def train_steps(
    model: FlexViT,
    stream: Iterator[tuple],
    steps: int,
    *,
    lr: float,
    weight_decay: float,
    device: torch.device,
    teacher: nn.Module | None = None,
    kl_coeff: float = 0.0,
    tau: float = 1.0,
    kd: KDConfig | None = None,
    label_smoothing: float = 0.0,
    warmup: int = 0,
    desc: str = "train",
    mixup=None,
    cnn_teacher: nn.Module | None = None,
    amp: bool = False,
    where: str | None = None,
) -> list[float]:
    """``steps`` AdamW steps with a cosine schedule on ``stream``; masks re-applied after each step. Returns losses.

    ``mixup`` (e.g. timm's ``Mixup``) mixes each batch and returns soft targets; ``amp`` runs the forward pass in
    bfloat16 autocast on CUDA (ignored on the CPU). A NaN or infinite loss raises
    :class:`common.errors.TrainingDivergedError` naming ``where`` (default: ``desc``) and the step.
    """
    kd = kd or KDConfig()
    model.train()
    opt = make_optimizer(model, lr, weight_decay)
    losses = []
    for step in progress(range(steps), desc=desc, leave=False):
        x, y, t_logits = unpack(next(stream), device)
        if mixup is not None:
            if t_logits is not None:
                raise ValueError("precomputed teacher logits cannot be used with mixup/cutmix")
            x, y = mixup(x, y)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, step, steps, warmup)
        with autocast(device, amp):
            loss = kd_objective(model, x, y, teacher=teacher, kl_coeff=kl_coeff, tau=tau, kd=kd,
                                cnn_teacher=cnn_teacher, label_smoothing=label_smoothing,
                                teacher_logits=t_logits)  # fmt: skip
        value = float(loss.detach())
        check_finite(value, step=step, where=where or desc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.apply_masks_()
        losses.append(value)
    return losses


def unpack(batch: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images, labels, teacher logits or None) of a batch of 2 or 3 tensors, on ``device``."""
    x, y, *rest = batch
    t = rest[0].to(device, non_blocking=True) if rest else None
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True), t


def train_dense(
    model: FlexViT, data: Data, cfg: DenseTrainConfig, seed: int, device: torch.device, **kwargs
) -> list[float]:
    """Train the dense ViT from scratch: AdamW, cosine to 0, label smoothing (CPU recipe, notes §5.2)."""
    steps = cfg.epochs * batches_per_epoch(data, cfg.batch_size)
    stream = batches(data.train, cfg.batch_size, seed)
    kwargs.setdefault("where", f"nvit dense training, seed {seed}")
    return train_steps(model, stream, steps, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device,
                       label_smoothing=cfg.label_smoothing, warmup=min(steps // 10, 200), desc="dense",
                       **kwargs)  # fmt: skip


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when ``enabled`` (the paper's ``--amp``); a no-op on the CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def make_mixup(cfg: DataConfig, num_classes: int, label_smoothing: float = 0.1):
    """timm's Mixup/CutMix with DeiT's label smoothing when ``cfg.mixup`` or ``cfg.cutmix`` > 0, else None."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=label_smoothing,
                 num_classes=num_classes)  # fmt: skip


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 1000) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy on ``dataset``."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y, *_ in _eval_batches(dataset, batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    return {"top1": 100.0 * correct / n, "loss": loss / n}
