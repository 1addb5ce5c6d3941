"""Data, the training objective (Eq. 8-9) and the loops: dense training, KD fine-tuning, evaluation.

No pruning logic here (``nvit.prune`` has it). Loops run on whatever device the caller picked
(``common.runtime.select_device``) and re-apply the pruning masks after every optimiser step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from common import data as cdata
from common import distributed, resume
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


RA_REPEATS = 3
"""Copies of each image per epoch in DeiT's repeated-augmentation sampler."""


def epoch_order(n: int, seed: int, epoch: int, *, repeated_augmentation: bool = False) -> torch.Tensor:
    """The item order of one epoch of :func:`batches`: a seeded permutation (the one ``common.data.loader`` draws:
    the same generator, after the one draw the DataLoader's iterator takes for its base seed).

    With ``repeated_augmentation`` (DeiT's sampler, implemented from its description): every item repeated
    :data:`RA_REPEATS` times in a row, and the epoch cut after N//256*256 draws (all N for N < 256), so an epoch
    shows about a third of the images three times. :func:`batches` gives process r the rows r, r + P, r + 2P, ... of
    each batch, so the copies of an image land in different processes, as DeiT's strided split does.
    """
    g = generator(seed * 1000 + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader iterator's base-seed draw
    perm = torch.randperm(n, generator=g)
    if not repeated_augmentation:
        return perm
    return perm.repeat_interleave(RA_REPEATS)[: (n // 256) * 256 if n >= 256 else n]


def batches(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    *,
    num_workers: int = 0,
    repeated_augmentation: bool = False,
    shard: tuple[int, int] | None = None,
    start_epoch: int = 0,
    skip: int = 0,
) -> Iterator[tuple]:
    """An endless stream of shuffled batches (a new seeded order each epoch); drops the last partial batch.
    ``start_epoch``, ``skip``: begin with that epoch's order, after its first ``skip`` batches (a resumed run,
    :class:`BatchStream`; a loader reads the skipped batches, so its workers' random augmentations stay in step).

    An in-memory :class:`TensorDataset` is sliced directly, in exactly the order ``common.data.loader`` gives
    (the same permutation of the same seeded generator, after the one draw the DataLoader's iterator takes for
    its base seed), without the per-item indexing and collation (``tests/nvit/test_train.py``). Its tensors
    may include a third one, the teacher's logits of each image (:func:`with_teacher_logits`).

    Data parallel: ``shard=(rank, processes)`` (default: this process's, from ``common.distributed``) yields this
    process's share of every *global* batch of ``batch_size`` items: its rows rank, rank + P, ... So P processes
    together see exactly the batches one process sees (``batch_size`` must be a multiple of P), and only load
    their own items. ``repeated_augmentation``: DeiT's repeated-augmentation order (:func:`epoch_order`).
    """
    rank, world = shard if shard is not None else (distributed.rank(), distributed.world_size())
    if world > 1 or repeated_augmentation:
        yield from _sharded_batches(dataset, batch_size, seed, rank, world, num_workers, repeated_augmentation,
                                    start_epoch, skip)  # fmt: skip
        return
    epoch = start_epoch
    if len(dataset) < batch_size:  # an endless stream of no batches would hang its consumer
        raise ValueError(f"{len(dataset)} items make no full batch of {batch_size}; use a smaller batch size")
    if isinstance(dataset, TensorDataset) and num_workers == 0:
        tensors, n = dataset.tensors, len(dataset)
        while True:
            g = generator(seed * 1000 + epoch)
            torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader iterator's base-seed draw
            perm = torch.randperm(n, generator=g)
            for i in range(skip, n // batch_size):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                yield tuple(t[idx] for t in tensors)
            epoch, skip = epoch + 1, 0
    while True:
        loader = cdata.loader(dataset, batch_size, shuffle=True, seed=seed * 1000 + epoch, drop_last=True,
                              num_workers=num_workers)  # fmt: skip
        yield from itertools.islice(loader, skip, None)
        skip = 0
        epoch += 1


@dataclass(frozen=True)
class BatchStream:
    """The :func:`batches` stream of ``dataset``, restartable at an epoch, so that :func:`train_steps` can resume a
    killed run from its last saved epoch (:mod:`common.resume`). Iterating it starts at epoch 0."""

    dataset: Dataset
    batch_size: int
    seed: int
    num_workers: int = 0
    repeated_augmentation: bool = False

    def __call__(self, start_epoch: int = 0, skip: int = 0) -> Iterator[tuple]:
        return batches(self.dataset, self.batch_size, self.seed, num_workers=self.num_workers,
                       repeated_augmentation=self.repeated_augmentation, start_epoch=start_epoch,
                       skip=skip)  # fmt: skip

    def from_batch(self, index: int) -> Iterator[tuple]:
        """The stream after its first ``index`` batches (a loop resumed mid-epoch)."""
        return self(index // self.epoch_steps, index % self.epoch_steps)

    def __iter__(self) -> Iterator[tuple]:
        return self()

    @property
    def epoch_steps(self) -> int:
        """Batches per epoch (the length of one :func:`epoch_order`, cut to whole batches)."""
        n = len(self.dataset)
        if self.repeated_augmentation:
            n = min(n * RA_REPEATS, (n // 256) * 256 if n >= 256 else n)
        return n // self.batch_size


def local_batch_size(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise ValueError(
            f"the global batch size {batch_size} is not a multiple of the {world} processes; choose a batch size "
            f"divisible by NPROC (each process takes an equal share of every batch)"
        )
    return batch_size // world


def _sharded_batches(dataset, batch_size, seed, rank, world, num_workers, repeated_augmentation,
                     start_epoch=0, skip=0) -> Iterator[tuple]:  # fmt: skip
    """:func:`batches` for P processes or with repeated augmentation: this process's rows of each global batch."""
    local = local_batch_size(batch_size, world)
    n, epoch = len(dataset), start_epoch
    while True:
        order = epoch_order(n, seed, epoch, repeated_augmentation=repeated_augmentation)
        steps = len(order) // batch_size
        if steps == 0:
            raise ValueError(f"an epoch of {len(order)} items has no full batch of {batch_size}")
        mine = order[: steps * batch_size].view(steps, batch_size)[:, rank::world].reshape(-1)
        if isinstance(dataset, TensorDataset) and num_workers == 0:
            for i in range(skip, steps):
                idx = mine[i * local : (i + 1) * local]
                yield tuple(t[idx] for t in dataset.tensors)
        else:
            loader = torch.utils.data.DataLoader(dataset, batch_size=local, sampler=mine.tolist(), drop_last=True,
                                                 num_workers=num_workers)  # fmt: skip
            yield from itertools.islice(loader, skip, None)
        epoch, skip = epoch + 1, 0


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


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, tau: float, reduction: str) -> torch.Tensor:
    """KL(ψ(z_t/τ) ‖ ψ(z_s/τ)) of the softened distributions, reduced over images and classes.

    ``"batchmean"``: summed over classes, averaged over the B images (torch's ``batchmean``, unchanged);
    ``"mean"``: sum / (B · classes), written out here: it is what torch's ``KLDivLoss()`` default computes and
    what the official coefficient 1e5 multiplies, and spelling it out keeps it that size whatever torch's
    ``reduction="mean"`` does in the future (``tests/nvit/test_train.py``).
    """
    log_s, log_t = F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1)
    if reduction == "batchmean":
        return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    if reduction == "mean":
        return F.kl_div(log_s, log_t, log_target=True, reduction="sum") / student.numel()
    raise ValueError(f"kl reduction must be 'batchmean' or 'mean', got {reduction!r}")


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
    kl_per_head: bool = False,
) -> torch.Tensor:
    """L = α·L_full + L_CNN (Eq. 8-9).

    L_full = KL(ψ(z_s/τ) ‖ ψ(z_t/τ)) to the dense model, on the (averaged) output; reduction per
    ``kd.kl_reduction`` (:func:`kl_divergence`). With ``kl_per_head`` and a distillation token: the mean of the KL
    of the cls heads and the KL of the dist heads (official fine-tune); the teacher is then run on the batch.
    L_CNN = ``label_loss_coeff`` × [CE(cls, y), or with a distillation token and a CNN
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
    if kl_per_head and dist_logits is not None and kl_coeff:
        if teacher is None or not hasattr(teacher, "forward_heads"):
            raise ValueError("a per-head KL needs the dense teacher model (with its distillation head), not logits")
        with torch.no_grad():
            t_cls, t_dist = teacher.forward_heads(x)
        if t_dist is None:
            raise ValueError("a per-head KL needs a teacher with a distillation token")
        kl = (kl_divergence(cls_logits, t_cls, tau, kd.kl_reduction)
              + kl_divergence(dist_logits, t_dist, tau, kd.kl_reduction)) / 2  # fmt: skip
        loss = loss + kl_coeff * kl
    elif (teacher is not None or teacher_logits is not None) and kl_coeff:
        if teacher_logits is not None:
            t_logits = teacher_logits
        else:
            with torch.no_grad():
                t_logits = teacher(x)
        loss = loss + kl_coeff * kl_divergence(out, t_logits, tau, kd.kl_reduction)
    return loss


def cosine_lr(base: float, step: int, total: int, warmup: int = 0, min_lr: float = 0.0) -> float:
    """Linear warm-up, then cosine decay from ``base`` to ``min_lr`` (timm's cosine schedule with ``lr_min``)."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if min_lr:
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, t)))


def sync_gradients(model: nn.Module) -> None:
    """Data parallel: replace every gradient by its mean over the processes (one all-reduce of one flat buffer).

    Each process's loss is the mean over its equal share of the global batch, so the mean of their gradients is
    the gradient of the global batch's mean loss: every process then takes the same optimiser step (the reduced
    buffer is bitwise the same on every process), and a score computed from these gradients (Σ w·∂L/∂w, Eq. 6)
    equals the one-process score on the same global batch up to float summation order. A no-op in one process.
    """
    if distributed.world_size() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = distributed.all_reduce(torch.cat([p.grad.reshape(-1) for p in params]), op="mean")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def global_mean(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of a per-process number (e.g. a loss) over the processes; itself in one process. ``device``: where
    the collective runs (the processes' device: NCCL reduces CUDA tensors only)."""
    if distributed.world_size() == 1:
        return value
    return float(distributed.all_reduce(torch.tensor([value], dtype=torch.float64, device=device), op="mean")[0])


def backward_accumulated(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, loss_fn, accumulation: int = 1
) -> float:
    """Backward of the mean loss of this process's batch in ``accumulation`` micro-batches (gradient accumulation,
    to keep the global batch on fewer or smaller devices), then :func:`sync_gradients`. ``loss_fn(x, y, t)`` is the
    mean loss of a micro-batch; each is weighted by its share of the rows, so the gradients are those of the whole
    batch. Returns the loss of the global batch (mean over the processes), for logging and divergence checks."""
    n = len(x)
    if accumulation < 1 or n % accumulation:
        raise ValueError(f"a batch of {n} rows per process cannot be split into {accumulation} equal micro-batches")
    total = 0.0
    parts = zip(x.chunk(accumulation), y.chunk(accumulation),
                t.chunk(accumulation) if t is not None else [None] * accumulation, strict=True)  # fmt: skip
    for xm, ym, tm in parts:
        loss = loss_fn(xm, ym, tm)
        scaled = loss if accumulation == 1 else loss * (len(xm) / n)
        scaled.backward()
        total += float(scaled.detach())
    sync_gradients(model)
    return global_mean(total, x.device)


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
    stream: Iterator[tuple] | BatchStream,
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
    min_lr: float = 0.0,
    ema=None,
    kl_per_head: bool = False,
    accumulation: int = 1,
) -> list[float]:
    """``steps`` AdamW steps with a cosine schedule on ``stream``; masks re-applied after each step. Returns losses.

    ``mixup`` (e.g. timm's ``Mixup``) mixes each batch and returns soft targets; ``amp`` runs the forward pass in
    bfloat16 autocast on CUDA (ignored on the CPU). A NaN or infinite loss raises
    :class:`common.errors.TrainingDivergedError` naming ``where`` (default: ``desc``) and the step.
    ``min_lr``: floor of the cosine; ``ema``: a timm ``ModelEmaV2`` of ``model``, updated after every step;
    ``kl_per_head``: see :func:`kd_objective`. Data parallel: ``stream`` yields this process's share of each global
    batch (:func:`batches`) and the gradients are averaged over the processes before each step
    (:func:`backward_accumulated`, which also splits a batch into ``accumulation`` micro-batches).

    Resuming: with a :class:`BatchStream` inside a cached stage (:meth:`common.runtime.ArtifactCache.resume_slot`),
    the model, optimizer, EMA, losses and random generators are saved every ``$PRUNE_REPRO_SAVE_EVERY`` epochs of
    the stream, and a re-run continues from the last save (:mod:`common.resume`) with what an uninterrupted run
    computes (the learning rate is a function of the step; the stream restarts at the saved epoch).
    """
    kd = kd or KDConfig()
    model.train()
    opt = make_optimizer(model, lr, weight_decay)
    losses = _Losses()
    start = 0
    saved = resume.checkpoint("train_steps", *(o for o in (model, opt, ema, losses) if o is not None))
    epoch_steps = stream.epoch_steps if isinstance(stream, BatchStream) else 0
    if epoch_steps:
        start = saved.restore() * epoch_steps
    stream = stream(start // epoch_steps) if epoch_steps else iter(stream)  # (no whole batch: batches() says so)

    def loss_fn(x, y, t_logits):
        with autocast(device, amp):
            return kd_objective(model, x, y, teacher=teacher, kl_coeff=kl_coeff, tau=tau, kd=kd,
                                cnn_teacher=cnn_teacher, label_smoothing=label_smoothing,
                                teacher_logits=t_logits, kl_per_head=kl_per_head)  # fmt: skip

    for step in progress(range(start, steps), desc=desc, leave=False, initial=start, total=steps):
        x, y, t_logits = unpack(next(stream), device)
        if mixup is not None:
            if t_logits is not None:
                raise ValueError("precomputed teacher logits cannot be used with mixup/cutmix")
            x, y = mixup(x, y)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, step, steps, warmup, min_lr)
        opt.zero_grad(set_to_none=True)
        value = backward_accumulated(model, x, y, t_logits, loss_fn, accumulation)
        check_finite(value, step=step, where=where or desc)
        opt.step()
        model.apply_masks_()
        if ema is not None:
            ema.update(model)
        losses.values.append(value)
        if epoch_steps and (step + 1) % epoch_steps == 0:
            saved.epoch_done((step + 1) // epoch_steps - 1, last=step + 1 == steps)
    return losses.values


class _Losses:
    """The losses of a :func:`train_steps` run, saved with its state."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def state_dict(self) -> dict[str, list[float]]:
        return {"values": list(self.values)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.values = list(state["values"])


def unpack(batch: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images, labels, teacher logits or None) of a batch of 2 or 3 tensors, on ``device``."""
    x, y, *rest = batch
    t = rest[0].to(device, non_blocking=True) if rest else None
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True), t


def train_dense(
    model: FlexViT, data: Data, cfg: DenseTrainConfig, seed: int, device: torch.device, *, num_workers: int = 0,
    repeated_augmentation: bool = False, **kwargs,
) -> list[float]:  # fmt: skip
    """Train the dense ViT from scratch: AdamW, cosine to 0, label smoothing (CPU recipe, notes §5.2)."""
    steps = cfg.epochs * batches_per_epoch(data, cfg.batch_size)
    stream = BatchStream(data.train, cfg.batch_size, seed, num_workers=num_workers,
                         repeated_augmentation=repeated_augmentation)  # fmt: skip
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
    """Top-1 accuracy (%) and mean cross-entropy on ``dataset``.

    Data parallel: process r evaluates items r, r + P, ... and the counts and loss sums are added over the
    processes, so every process returns the top-1 of the whole set (the same count as one process; the loss up to
    float summation order)."""
    model.eval()
    world = distributed.world_size()
    if world > 1:
        r = distributed.rank()
        dataset = (TensorDataset(*(t[r::world] for t in dataset.tensors)) if isinstance(dataset, TensorDataset)
                   else Subset(dataset, list(range(r, len(dataset), world))))  # fmt: skip
    correct, loss, n = 0, 0.0, 0
    for x, y, *_ in _eval_batches(dataset, batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    if world > 1:
        with torch.inference_mode(False):
            totals = distributed.all_reduce(torch.tensor([correct, loss, n], dtype=torch.float64, device=device))
        correct, loss, n = int(totals[0]), float(totals[1]), int(totals[2])
    return {"top1": 100.0 * correct / n, "loss": loss / n}
