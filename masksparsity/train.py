"""Data and training loops: baseline training, sparsity training (with a γ sub-gradient hook), fine-tuning.

The sparse penalty enters as in the official trainer: after ``loss.backward()`` and before ``optimizer.step()``
the regulariser adds λ·g'(γ) to grad(γ) (``regularizer(epoch_lr)``, with the learning rate at the start of the
epoch, as the official trainer passes it; only smoothL1/huber use it). SGD's weight decay applies to every parameter,
BN included (pycls ``BN.USE_CUSTOM_WEIGHT_DECAY: false``).

Data parallel (``make reproduce-masksparsity NPROC=N``; :mod:`common.distributed`): every process holds the whole
model and takes its share of every global batch (images r, r + N, ... of the batch the one-process run would use,
so the global batch is ``batch_size`` whatever N is); the model is wrapped in torch's DistributedDataParallel, so
after ``loss.backward()`` the gradients are averaged over the processes, and the γ sub-gradient is then added on
every process before its optimizer step (the same on all, since the γ are). BatchNorm normalises each training
batch with the statistics of the global batch (:func:`global_bn_forward`), and precise BN re-estimates the
statistics on the global batches, so N processes compute what one process computes with the same global batch,
to float rounding. Evaluation is split over the processes and its sums are added up.
"""

from __future__ import annotations

import contextlib
import math
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common import data as cdata
from common import distributed as dist
from common import resume
from common.errors import UserError, check_finite
from common.runtime import generator, progress

from .config import DataConfig, Schedule
from .method import all_bns, recalibrate_bn

Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class TensorSplit:
    x: torch.Tensor
    y: torch.Tensor


class Data:
    """A classification dataset held in memory (Fashion-MNIST subsets) or read through DataLoaders.

    Splits: ``train``; ``val`` (held out of the training set, for picking hyper-parameters; only with
    ``val_subset``); ``test``; ``test_quick`` (a class-balanced part of ``test``, or all of it); ``train_eval``
    (training images without augmentation, for train loss/accuracy).
    """

    def __init__(self, cfg: DataConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.loaders = None
        if cfg.dataset == "fashion_mnist":
            self.splits = {"test": self._fashion("test", cfg.test_subset)}
            if cfg.val_subset:
                # one class-balanced draw of train + val images, split class-balanced: disjoint by construction
                both = self._fashion("train", cfg.train_subset + cfg.val_subset if cfg.train_subset else 0)
                val = cdata.stratified_subset(both.y, cfg.val_subset, seed=cfg.subset_seed + 2)
                rest = torch.ones(len(both.y), dtype=torch.bool)
                rest[val] = False
                self.splits["val"] = TensorSplit(both.x[val], both.y[val])
                self.splits["train"] = TensorSplit(both.x[rest], both.y[rest])
            else:
                self.splits["train"] = self._fashion("train", cfg.train_subset)
            n_eval = cfg.train_eval_subset or len(self.splits["train"].y)
            idx = cdata.stratified_subset(self.splits["train"].y, n_eval, seed=cfg.subset_seed + 1)
            self.splits["train_eval"] = TensorSplit(self.splits["train"].x[idx], self.splits["train"].y[idx])
            test = self.splits["test"]
            if cfg.quick_test_subset and cfg.quick_test_subset < len(test.y):
                idx = cdata.stratified_subset(test.y, cfg.quick_test_subset, seed=cfg.subset_seed + 3)
                self.splits["test_quick"] = TensorSplit(test.x[idx], test.y[idx])
            else:
                self.splits["test_quick"] = test
            self.in_channels, self.num_classes = 1, 10
            self.image_size = self.splits["train"].x.shape[-1]
        else:
            self._folders()

    def _fashion(self, split: str, n: int) -> TensorSplit:
        ds = cdata.fashion_mnist(split, root=self.cfg.root or None, n=n or None, seed=self.cfg.subset_seed)
        x, y = ds.tensors
        if self.cfg.image_size and self.cfg.image_size != x.shape[-1]:
            x = F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="area")
        return TensorSplit(x, y)

    def _folders(self) -> None:  # pragma: no cover - paper-scale data, needs a user-given folder
        import torchvision.transforms as T

        cfg = self.cfg
        if cfg.dataset == "cifar10":
            norm = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
            aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if cfg.augment else []
            train = cdata.cifar10(cfg.root, True, T.Compose([*aug, T.ToTensor(), norm]))
            test = cdata.cifar10(cfg.root, False, T.Compose([T.ToTensor(), norm]))
            evalset = cdata.cifar10(cfg.root, True, T.Compose([T.ToTensor(), norm]))
            self.num_classes, self.image_size = 10, 32
        else:
            norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            aug = (
                [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
                if cfg.augment
                else [T.Resize(256), T.CenterCrop(224)]
            )
            val = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
            train = cdata.image_folder(cfg.root, "train", T.Compose([*aug, T.ToTensor(), norm]))
            test = cdata.image_folder(cfg.root, "val", val)
            evalset = cdata.image_folder(cfg.root, "train", val)
            self.num_classes, self.image_size = len(train.classes), 224
        self.in_channels = 3
        sets = {"train": train, "test": test, "train_eval": evalset}
        g = generator(cfg.subset_seed)
        if cfg.val_subset:  # held out of the training images, seen without augmentation
            order = torch.randperm(len(train), generator=generator(cfg.subset_seed + 2))
            sets["val"] = torch.utils.data.Subset(evalset, order[: cfg.val_subset])
            kept = order[cfg.val_subset :]
            kept = kept[torch.randperm(len(kept), generator=g)[: cfg.train_subset or len(kept)]]
            sets["train"] = torch.utils.data.Subset(train, kept)
            sets["train_eval"] = torch.utils.data.Subset(evalset, kept)
            sizes = {"test": cfg.test_subset, "train_eval": cfg.train_eval_subset}
        else:
            sizes = {"train": cfg.train_subset, "test": cfg.test_subset, "train_eval": cfg.train_eval_subset}
        for name, n in sizes.items():
            if n:
                sets[name] = torch.utils.data.Subset(sets[name], torch.randperm(len(sets[name]), generator=g)[:n])
        quick = cfg.quick_test_subset
        order = torch.randperm(len(sets["test"]), generator=generator(cfg.subset_seed + 3))
        sets["test_quick"] = torch.utils.data.Subset(sets["test"], order[:quick]) if quick else sets["test"]
        self.loaders = sets

    def has(self, split: str) -> bool:
        return split in (self.loaders if self.loaders else self.splits)

    def n_train(self) -> int:
        return len(self.loaders["train"]) if self.loaders else len(self.splits["train"].y)

    def train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled, augmented training batches of ``batch_size`` images (the last partial batch is dropped). In a
        data-parallel run each process gets its share of every such global batch: images r, r + N, ..."""
        rank, world = dist.rank(), dist.world_size()
        if batch_size % world:
            raise UserError(f"batch size {batch_size} is not divisible by the {world} processes")
        if self.loaders:
            pin = self.device.type == "cuda"
            if world == 1:
                dl = cdata.loader(self.loaders["train"], batch_size, shuffle=True, seed=seed, drop_last=True,
                                  num_workers=self.cfg.workers, pin_memory=pin)  # fmt: skip
            else:  # the same global batches as one process (each image's random augmentation is drawn apart)
                sampler = ShardedBatches(len(self.loaders["train"]), batch_size, seed, rank, world)
                dl = torch.utils.data.DataLoader(self.loaders["train"], batch_sampler=sampler, pin_memory=pin,
                                                 num_workers=self.cfg.workers,
                                                 generator=generator(seed + rank))  # fmt: skip
            for x, y in dl:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return
        split = self.splits["train"]
        g = generator(seed)
        order = torch.randperm(len(split.y), generator=g)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            x = split.x[idx]
            if self.cfg.augment:
                x = augment(x, g)  # the global batch's draws, so every process sees the one-process images
            y = split.y[idx]
            if world > 1:
                x, y = x[rank::world], y[rank::world]
            yield x.to(self.device), y.to(self.device)

    def eval_batches(self, split: str, batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in order, in batches; in a data-parallel run this process's share (images r, r + N, ...)."""
        rank, world = dist.rank(), dist.world_size()
        if self.loaders:
            ds = self.loaders[split]
            if world > 1:
                ds = torch.utils.data.Subset(ds, range(rank, len(ds), world))
            dl = cdata.loader(ds, batch_size, num_workers=self.cfg.workers)
            for x, y in dl:
                yield x.to(self.device), y.to(self.device)
            return
        s = self.splits[split]
        xs, ys = (s.x[rank::world], s.y[rank::world]) if world > 1 else (s.x, s.y)
        for start in range(0, len(ys), batch_size):
            yield xs[start : start + batch_size].to(self.device), ys[start : start + batch_size].to(self.device)

    def example(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.in_channels, self.image_size, self.image_size, device=self.device)


class ShardedBatches(torch.utils.data.Sampler):
    """Batch sampler of one process's share of the global batches a seeded shuffling DataLoader would draw
    (``common.data.loader(shuffle=True, seed=seed, drop_last=True)``): the same permutation of the dataset, cut
    into batches of ``batch_size``, of which this process takes positions ``rank::world``."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        g = generator(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the loader draws its workers' base seed first
        order = torch.randperm(self.n, generator=g).tolist()
        for start in range(0, self.n - self.batch_size + 1, self.batch_size):
            yield order[start : start + self.batch_size][self.rank :: self.world]

    def __len__(self) -> int:
        return self.n // self.batch_size


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` pixels, and random horizontal flip (per image).

    The offsets and flips are drawn as before (``dy``, ``dx``, then ``flip``) and the crops are gathered in one
    indexing operation, which gives exactly the per-image slices of :func:`augment_reference`.
    """
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    padded = F.pad(x, (pad,) * 4, value=float(x.min()))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
    cols = dx[:, None] + torch.arange(w)  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)[:, None, None, :]  # (n, 1, 1, w)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def augment_reference(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """:func:`augment` one image at a time (the original loop; the tests check that both agree exactly)."""
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    padded = F.pad(x, (pad,) * 4, value=float(x.min()))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def lr_at(schedule: Schedule, epoch_float: float) -> float:
    """The learning rate at a (fractional) epoch: cosine to 0, or x lr_decay at each of lr_steps."""
    if schedule.lr_schedule == "cosine":
        return schedule.lr * 0.5 * (1 + math.cos(math.pi * min(epoch_float / max(schedule.epochs, 1), 1.0)))
    return schedule.lr * schedule.lr_decay ** sum(epoch_float >= s for s in schedule.lr_steps if s > 0)


def _sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """Σ over the processes of ``t``, differentiable (the gradient of each process's share flows back to it)."""
    if dist.world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated for the functional collectives, whose autograd is not public yet
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(t)


def global_bn_forward(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` where, in training mode, the batch statistics are those of the global batch: every process's share
    summed (two passes: the mean, then the centred squares), in at least float32; the gradient flows through the sums to
    every share, and the running statistics are updated as torch's BatchNorm does (unbiased variance, ``momentum``
    or, with ``momentum=None``, the cumulative average precise BN uses). In one process it computes what
    ``nn.BatchNorm2d`` computes, to float rounding (tested); in eval mode it is ``nn.BatchNorm2d``'s forward."""
    if not bn.training:
        return nn.BatchNorm2d.forward(bn, x)
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 under autocast: statistics in float32
    local = xf.new_tensor([xf.numel() // xf.shape[1]])  # values per channel in this share
    sums = _sum_over_processes(torch.cat([xf.sum((0, 2, 3)), local]))  # one reduction for the sums and the count
    n = float(sums[-1].detach())
    mean = sums[:-1] / n
    centred = xf - mean[None, :, None, None]
    var = _sum_over_processes((centred * centred).sum((0, 2, 3))) / n
    y = centred * torch.rsqrt(var + bn.eps)[None, :, None, None]
    if bn.affine:
        y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - factor).add_(mean.detach().to(bn.running_mean.dtype), alpha=factor)
            unbiased = var.detach() * (n / max(n - 1, 1.0))
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return y.to(x.dtype)


@contextlib.contextmanager
def global_batch_norm(model: nn.Module, force: bool = False):
    """Inside, every BatchNorm2d of ``model`` runs :func:`global_bn_forward` (only in a data-parallel run, or with
    ``force``); the modules and their state dicts stay plain BatchNorm2d."""
    installed = []
    if dist.world_size() > 1 or force:
        for bn in all_bns(model):
            if "forward" not in vars(bn):
                bn.forward = types.MethodType(global_bn_forward, bn)
                installed.append(bn)
    try:
        yield model
    finally:
        for bn in installed:
            del bn.forward


def precise_bn(model: nn.Module, data: Data, n_images: int, seed: int) -> nn.Module:
    """Re-estimate BN statistics on about ``n_images`` augmented training images (pycls precise BN; in a
    data-parallel run on the global batches, so every process ends with the same statistics)."""
    with global_batch_norm(model):
        return recalibrate_bn(model, calibration_batches(data, n_images, seed))


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """torch's DistributedDataParallel around ``model`` in a data-parallel run (gradients averaged in backward);
    ``model`` itself otherwise. Buffers are not broadcast: global BN keeps them equal on every process."""
    if dist.world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)  # fmt: skip


def train_phase(
    model: nn.Module,
    data: Data,
    schedule: Schedule,
    seed: int,
    regularizer: Callable[[float], None] | None = None,
    amp: bool = False,
    desc: str = "train",
    where: str | None = None,
    accumulation: int = 1,
) -> nn.Module:
    """SGD (Nesterov) over ``schedule``; ``regularizer(epoch_lr)`` adds the γ sub-gradient before each step (the
    learning rate at the start of the epoch, which the official smoothL1 threshold uses; L1/L2 ignore it). In a
    data-parallel run the sub-gradient is added after the gradients are averaged over the processes.

    A NaN or infinite loss raises :class:`common.errors.TrainingDivergedError` naming ``where`` (default:
    ``desc``) and the step (on every process: the loss checked is the global batch's).

    ``accumulation``: each process's share of a batch is split into this many equal micro-batches, each forward and
    backward on its own, the gradients summed (each micro-batch's loss weighted 1/accumulation, DDP's all-reduce
    only after the last) before the one optimizer step: the official global batch on fewer or smaller GPUs.
    BatchNorm then normalises with the statistics of the *global micro-batch* (micro-batch m of every process),
    so a run's result depends on the batch and the accumulation, not on the number of processes.

    Inside a cached stage (:meth:`common.runtime.ArtifactCache.resume_slot`) the model and optimizer are saved every
    ``$PRUNE_REPRO_SAVE_EVERY`` epochs and a re-run continues from the last save (:mod:`common.resume`); each
    epoch's batches, augmentations and precise-BN images depend only on ``seed`` and the epoch, so the resumed
    run computes what an uninterrupted one does.
    """
    model.to(data.device).train()
    net = _data_parallel(model, data.device)
    opt = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                          nesterov=schedule.nesterov and schedule.momentum > 0,
                          weight_decay=schedule.weight_decay)  # fmt: skip
    steps = max(data.n_train() // schedule.batch_size, 1)
    use_amp = amp and data.device.type == "cuda"
    saved = resume.checkpoint("train_phase", model, opt)  # inside a cached stage: resumable (common.resume)
    start = saved.restore()
    with global_batch_norm(model):
        for epoch in progress(range(start, schedule.epochs), desc=desc, leave=False, initial=start,
                              total=schedule.epochs):  # fmt: skip
            epoch_lr = lr_at(schedule, epoch)
            for i, (x, y) in enumerate(data.train_batches(schedule.batch_size, seed * 100_003 + epoch)):
                lr = lr_at(schedule, epoch + i / steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                if len(x) % accumulation:
                    raise UserError(
                        f"a share of {len(x)} images per process cannot be split into {accumulation} "
                        "equal micro-batches; choose an accumulation that divides batch_size / NPROC"
                    )
                opt.zero_grad(set_to_none=True)
                loss = torch.zeros((), device=data.device)
                for m, (xm, ym) in enumerate(zip(x.chunk(accumulation), y.chunk(accumulation), strict=True)):
                    last = m == accumulation - 1  # DDP averages the summed gradients over the processes here
                    with contextlib.nullcontext() if last or net is model else net.no_sync():
                        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=use_amp):
                            part = F.cross_entropy(net(xm), ym)
                        (part if accumulation == 1 else part / accumulation).backward()
                    loss = loss + part.detach().float() / accumulation
                check_finite(loss if net is model else dist.all_reduce(loss, op="mean"),
                             step=epoch * steps + i, where=where or desc)  # fmt: skip
                if regularizer is not None:
                    regularizer(epoch_lr)
                opt.step()
            if schedule.precise_bn_images:
                recalibrate_bn(model, calibration_batches(data, schedule.precise_bn_images, seed + epoch))
                model.train()
            saved.epoch_done(epoch, last=epoch == schedule.epochs - 1)
    return model


def calibration_batches(data: Data, n_images: int, seed: int, batch_size: int = 128) -> Iterator[torch.Tensor]:
    """About ``n_images`` augmented training images, in batches (for BN re-estimation); in a data-parallel run
    this process's share of each (global) batch."""
    seen = 0
    for x, _ in data.train_batches(batch_size, seed):
        if seen >= n_images:
            return
        yield x
        seen += batch_size


@torch.inference_mode()
def evaluate(model: nn.Module, data: Data, split: str = "test") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in %) on a split, in inference mode with large batches (in a data-parallel run
    split over the processes, the same on every process)."""
    was_training = model.training
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in data.eval_batches(split):
        logits = model(x)
        loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    if dist.world_size() > 1:  # each process evaluated its share: add the sums up
        sums = torch.tensor([loss, correct, n], dtype=torch.float64, device=data.device)
        loss, correct, n = dist.all_reduce(sums).tolist()
    return loss / n, 100.0 * correct / n
