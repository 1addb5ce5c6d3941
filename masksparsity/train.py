"""Data and training loops: baseline training, sparsity training (with a γ sub-gradient hook), fine-tuning.

The sparse penalty enters as in the official trainer: after ``loss.backward()`` and before ``optimizer.step()``
the regulariser adds λ·g'(γ) to grad(γ) (``regularizer(epoch_lr)``, with the learning rate at the start of the
epoch, as the official trainer passes it; only smoothL1/huber use it). SGD's weight decay applies to every parameter,
BN included (pycls ``BN.USE_CUSTOM_WEIGHT_DECAY: false``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common import data as cdata
from common.errors import check_finite
from common.runtime import generator, progress

from .config import DataConfig, Schedule
from .method import recalibrate_bn

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
        if self.loaders:
            dl = cdata.loader(self.loaders["train"], batch_size, shuffle=True, seed=seed, drop_last=True,
                              num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda")  # fmt: skip
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
                x = augment(x, g)
            yield x.to(self.device), split.y[idx].to(self.device)

    def eval_batches(self, split: str, batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loaders:
            dl = cdata.loader(self.loaders[split], batch_size, num_workers=self.cfg.workers)
            for x, y in dl:
                yield x.to(self.device), y.to(self.device)
            return
        s = self.splits[split]
        for start in range(0, len(s.y), batch_size):
            yield s.x[start : start + batch_size].to(self.device), s.y[start : start + batch_size].to(self.device)

    def example(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.in_channels, self.image_size, self.image_size, device=self.device)


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


def train_phase(
    model: nn.Module,
    data: Data,
    schedule: Schedule,
    seed: int,
    regularizer: Callable[[float], None] | None = None,
    amp: bool = False,
    desc: str = "train",
    where: str | None = None,
) -> nn.Module:
    """SGD (Nesterov) over ``schedule``; ``regularizer(epoch_lr)`` adds the γ sub-gradient before each step (the
    learning rate at the start of the epoch, which the official smoothL1 threshold uses; L1/L2 ignore it).

    A NaN or infinite loss raises :class:`common.errors.TrainingDivergedError` naming ``where`` (default:
    ``desc``) and the step.
    """
    model.to(data.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                          nesterov=schedule.nesterov and schedule.momentum > 0,
                          weight_decay=schedule.weight_decay)  # fmt: skip
    steps = max(data.n_train() // schedule.batch_size, 1)
    use_amp = amp and data.device.type == "cuda"
    for epoch in progress(range(schedule.epochs), desc=desc, leave=False):
        epoch_lr = lr_at(schedule, epoch)
        for i, (x, y) in enumerate(data.train_batches(schedule.batch_size, seed * 100_003 + epoch)):
            lr = lr_at(schedule, epoch + i / steps)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = F.cross_entropy(model(x), y)
            check_finite(loss, step=epoch * steps + i, where=where or desc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if regularizer is not None:
                regularizer(epoch_lr)
            opt.step()
        if schedule.precise_bn_images:
            recalibrate_bn(model, calibration_batches(data, schedule.precise_bn_images, seed + epoch))
            model.train()
    return model


def calibration_batches(data: Data, n_images: int, seed: int, batch_size: int = 128) -> Iterator[torch.Tensor]:
    """About ``n_images`` augmented training images, in batches (for BN re-estimation)."""
    seen = 0
    for x, _ in data.train_batches(batch_size, seed):
        if seen >= n_images:
            return
        yield x
        seen += len(x)


@torch.inference_mode()
def evaluate(model: nn.Module, data: Data, split: str = "test") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in %) on a split, in inference mode with large batches."""
    was_training = model.training
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in data.eval_batches(split):
        logits = model(x)
        loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return loss / n, 100.0 * correct / n
