"""Data splits (validation held out of the training set, the quick test subset) and the crop augmentation."""

from __future__ import annotations

import torch

from common.runtime import generator
from masksparsity import config
from masksparsity.train import Data, augment, augment_reference


def test_validation_split_is_held_out_of_the_training_set():
    cfg = config.smoke().data
    data = Data(cfg, torch.device("cpu"))
    train, val = data.splits["train"], data.splits["val"]
    assert len(train.y) == cfg.train_subset and len(val.y) == cfg.val_subset
    assert len(data.splits["test_quick"].y) == cfg.quick_test_subset and len(data.splits["test"].y) == cfg.test_subset
    flat = lambda x: {tuple(row.tolist()) for row in x.flatten(1)}  # noqa: E731
    assert not flat(train.x) & flat(val.x)
    assert flat(data.splits["test_quick"].x) <= flat(data.splits["test"].x)
    assert torch.bincount(val.y, minlength=10).min() >= cfg.val_subset // 10 - 1  # class-balanced


def test_vectorised_augmentation_equals_the_per_image_loop():
    x = torch.randn(64, 3, 14, 14)
    torch.testing.assert_close(augment(x, generator(3)), augment_reference(x, generator(3)), rtol=0, atol=0)
