from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from common.config import ConfigError, config_hash, describe, get_preset, override, param, to_dict

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


@dataclass(frozen=True)
class Train:
    lr: float = param(0.1, "learning rate")
    epochs: int = param(10, "epochs")
    schedule: Literal["cosine", "step"] = param("cosine", "lr schedule")


@dataclass(frozen=True)
class Exp:
    name: str = param("run", "name")
    seeds: tuple[int, ...] = param((0, 1), "seeds")
    size: tuple[int, int] = param((28, 28), "image size")
    use_kd: bool = param(True, "distil")
    root: str | None = param(None, "data root")
    train: Train = param(Train(), "training")


def test_override_parses_and_type_checks_values():
    cfg = override(Exp(), ["train.lr=0.05", "train.epochs=3", "seeds=(0,1,2)", "use_kd=False", "name=abc"])
    assert cfg.train.lr == 0.05 and cfg.train.epochs == 3
    assert cfg.seeds == (0, 1, 2) and cfg.use_kd is False and cfg.name == "abc"
    assert Exp().train.lr == 0.1, "the original config is untouched (frozen copies)"


def test_override_conversions():
    assert override(Exp(), ["train.lr=1"]).train.lr == 1.0  # int widens to float
    assert isinstance(override(Exp(), ["train.lr=1"]).train.lr, float)
    assert override(Exp(), ["seeds=3"]).seeds == (3,)  # a scalar for a variadic tuple
    assert override(Exp(), ["seeds=[4, 5]"]).seeds == (4, 5)
    assert override(Exp(), ["root=/data/x"]).root == "/data/x"  # bare word for an optional string
    assert override(Exp(), ["root=None"]).root is None
    assert override(Exp(), {"train.schedule": "step"}).train.schedule == "step"


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("train.lr='fast'", "must be a number"),
        ("train.epochs=2.5", "must be an int"),
        ("use_kd=1", "True or False"),
        ("train.schedule=linear", "must be one of"),
        ("size=(1,2,3)", "takes 2 values"),
        ("nope=1", "unknown config key 'nope'"),
        ("train.nope=1", "valid keys here: epochs, lr, schedule"),
        ("train=1", "is a group"),
        ("seeds", "expected key=value"),
        ("train.epochs=abc", "cannot parse"),
    ],
)
def test_override_rejects_bad_input(assignment, message):
    with pytest.raises(ConfigError, match=message):
        override(Exp(), [assignment])


def test_hash_is_stable_and_sensitive():
    assert config_hash(Exp()) == config_hash(Exp())
    assert len(config_hash(Exp())) == 12
    assert config_hash(override(Exp(), ["train.lr=0.2"])) != config_hash(Exp())
    # Regression of the identity: changing this means every cached artifact keyed on it is orphaned.
    assert config_hash(Train()) == "e2b9f2d6135d"  # sha256 of {"epochs":10,"lr":0.1,"schedule":"cosine"}


def test_to_dict_and_describe():
    d = to_dict(Exp())
    assert d["seeds"] == [0, 1] and d["train"] == {"lr": 0.1, "epochs": 10, "schedule": "cosine"}
    keys = [k for k, _, _ in describe(Exp())]
    assert keys == ["name", "seeds", "size", "use_kd", "root", "train.lr", "train.epochs", "train.schedule"]
    assert dict((k, h) for k, _, h in describe(Exp()))["train.lr"] == "learning rate"


def test_mutable_defaults_are_refused():
    with pytest.raises(TypeError, match="tuple"):
        param([1, 2], "a list")


def test_get_preset():
    presets = {"smoke": lambda: Exp(name="s")}
    assert get_preset(presets, "smoke").name == "s"
    with pytest.raises(ConfigError, match="choose one of: smoke"):
        get_preset(presets, "large")
