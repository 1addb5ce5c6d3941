"""Training: fixed masks keep pruned weights at zero, the step schedule, SAM, BN re-estimation, data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from three_regime import method
from three_regime.data import Data, augment_images, mnist1d
from three_regime.models import MLPBN, PreResNet
from three_regime.train import Schedule, _lr_at, error_rate, reestimate_bn, train


@pytest.fixture(scope="module")
def data():
    return mnist1d(num_samples=500, seed=3)


def test_mnist1d_is_generated_offline_and_deterministic(data):
    assert data.x_train.shape == (400, 40) and data.x_test.shape == (100, 40)
    assert data.num_classes == 10 and set(data.y_train.tolist()) <= set(range(10))
    again = mnist1d(num_samples=500, seed=3)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)


@pytest.mark.parametrize("sam_rho", [0.0, 0.05])
def test_pruned_weights_stay_zero_through_retraining(data, sam_rho):
    torch.manual_seed(0)
    model = MLPBN(40, 10, hidden_layers=2, hidden_width=32)
    masks = method.magnitude_masks(model, 0.1, "uniform")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = train(model, data, Schedule(epochs=2, batch_size=32, lr=0.1, weight_decay=5e-4, sam_rho=sam_rho),
                seed=0, masks=masks, eval_last_epochs=2)  # fmt: skip
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert torch.any(params[name][mask] != before[name][mask]), f"{name}: kept weights were trained"
    # exact unless a kept weight lands on exactly 0.0; 1e-3 of the 2304 masked weights tolerates two such
    assert method.achieved_density(model, masks) == pytest.approx(method.mask_density(masks), abs=1e-3)
    assert not torch.equal(params["classifier.weight"], before["classifier.weight"])
    assert sorted(log.test_error) == [1, 2]


def test_step_schedule():
    s = Schedule(epochs=60, batch_size=64, lr=0.1, lr_decay_at=(0.5, 0.75), lr_decay=0.1)
    assert _lr_at(s, 0.0) == 0.1 and _lr_at(s, 29 / 60) == 0.1
    assert _lr_at(s, 30 / 60) == pytest.approx(0.01) and _lr_at(s, 45 / 60) == pytest.approx(0.001)


def test_checkpoints_along_training_and_iterations_mode(data):
    torch.manual_seed(0)
    model = MLPBN(40, 10, hidden_layers=1, hidden_width=16)
    seen = {}
    train(model, data, Schedule(epochs=3, batch_size=100, lr=0.1), seed=0, checkpoint_epochs=(1, 3),
          on_checkpoint=lambda e, s: seen.__setitem__(e, s))  # fmt: skip
    assert sorted(seen) == [1, 3] and not torch.equal(seen[1]["classifier.weight"], seen[3]["classifier.weight"])
    assert torch.equal(seen[3]["classifier.weight"], model.state_dict()["classifier.weight"])
    # iterations mode: 7 steps of batch 100 with drop_last on 400 examples = 2 epochs (4 + 3 steps)
    counter = {"n": 0}
    model.register_forward_hook(lambda *a: counter.__setitem__("n", counter["n"] + 1))
    train(model, data, Schedule(epochs=99, batch_size=100, lr=0.1, iterations=7), seed=0)
    assert counter["n"] == 7


def test_same_seed_same_run(data):
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MLPBN(40, 10, hidden_layers=1, hidden_width=16)
        train(model, data, Schedule(epochs=1, batch_size=50, lr=0.1), seed=5)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_reestimate_bn_recovers_the_data_statistics(data):
    """In float64, so that the cumulative average and BatchNorm's variance match the direct ones to rounding."""
    torch.manual_seed(0)
    model = MLPBN(40, 10, hidden_layers=1, hidden_width=16).double()
    bn = model.features[1]
    x = data.x_train.double()
    with torch.no_grad():
        pre = model.features[0](x)
    reestimate_bn(model, x, batch_size=100)  # cumulative average of 4 equal batches
    # float64 (u = 1.1e-16): means of 400 values of |pre| <= 3, error <~ 400·u·3 ≈ 1e-13 (observed ~5e-17)
    torch.testing.assert_close(bn.running_mean, pre.mean(0), rtol=0, atol=1e-12)
    reestimate_bn(model, x, batch_size=len(x))
    # relative error of a 400-term variance <~ 400·u ≈ 4e-14 (observed ~2e-15); the biased estimate would be
    # off by 1/399 = 2.5e-3
    torch.testing.assert_close(bn.running_var, pre.var(0), rtol=1e-12, atol=0)  # unbiased, as BatchNorm keeps it
    assert bn.momentum == 0.1 and not model.training


def test_augment_images_crops_and_flips():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment_images(x, g, padding=2)
    assert out.shape == x.shape
    same = augment_images(x, torch.Generator().manual_seed(0), padding=0)
    assert all(torch.equal(s, x[i]) or torch.equal(s, x[i].flip(2)) for i, s in enumerate(same))


def test_preresnet_trains_on_image_tensors():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    images = Data(x, y, x[:4], y[:4], num_classes=10, augment=True)
    model = PreResNet(depth=8)
    masks = method.magnitude_masks(model, 0.2, "global")
    train(model, images, Schedule(epochs=1, batch_size=8, lr=0.05), seed=0, masks=masks)
    assert all(torch.all(dict(model.named_parameters())[n][~m] == 0) for n, m in masks.items())
    assert 0.0 <= error_rate(model, images.x_test, images.y_test) <= 1.0
    assert isinstance(model.classifier, nn.Linear)
