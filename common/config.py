"""Typed, frozen experiment configs: help text, stable hashes, and type-checked `key=value` overrides.

Each paper's ``config.py`` defines frozen dataclasses whose fields carry help text through
:func:`param`, and three preset functions (``smoke``, ``mini``, ``paper``) collected in a
``PRESETS`` dict. Nothing here knows about any paper.

Example::

    @dataclass(frozen=True)
    class TrainConfig:
        lr: float = param(0.1, "peak learning rate")
        epochs: int = param(10, "training epochs")

    cfg = override(TrainConfig(), ["lr=0.05"])      # type-checked: "lr='x'" raises ConfigError
    config_hash(cfg)                                  # 12 hex chars, stable across runs and machines
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .errors import UserError

C = TypeVar("C")

Preset = Callable[[], Any]
"""A preset is a no-argument function returning a config; its docstring is its documentation."""


class ConfigError(UserError, ValueError):
    """A config override or preset name that cannot be applied; the message says what is allowed."""


def param(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and help text (shown by ``python -m <paper> presets``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (or a nested frozen dataclass) for container defaults in frozen configs")
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists), nested dataclasses as dicts."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any, length: int = 12) -> str:
    """A short hash of the config's canonical JSON, stable across processes, machines and key order."""
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` where the conversion is lossless, else raise."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} matches none of {annotation}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}={value!r} must be one of {list(args)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}={value!r} is not None")
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            value = (value,)  # `seeds=3` means `(3,)`
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key} takes {len(args)} values, got {len(value)}")
        return tuple(_check_type(v, a, key) for v, a in zip(value, args, strict=True))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be True or False")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be an int")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}={value!r} must be a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r} must be a string")
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ConfigError(f"{key}={value!r} cannot be set from the command line (field type {annotation})")


def _accepts_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return any(isinstance(a, str) for a in typing.get_args(annotation))
    return any(_accepts_str(a) for a in typing.get_args(annotation))


def _parse_value(text: str, annotation: Any) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        # A bare word is a string only where the field accepts strings: `path=/data/x` needs no quotes.
        if _accepts_str(annotation):
            return text
        raise ConfigError(f"cannot parse {text!r} as a Python literal") from None


def override(cfg: C, assignments: Sequence[str] | Mapping[str, Any]) -> C:
    """Return a copy of ``cfg`` with ``key=value`` assignments applied, checked against field types.

    Keys may be dotted to reach nested dataclasses (``train.lr=0.01``). Values are Python literals
    (``3``, ``0.5``, ``(0, 1, 2)``, ``True``, ``'text'``); a bare word is accepted for string fields.
    Unknown keys and mistyped values raise :class:`ConfigError` naming the valid choices.
    """
    if isinstance(assignments, Mapping):  # Python values, taken as they are
        items = [(key, value, False) for key, value in assignments.items()]
    else:  # command-line text, parsed as literals
        items = [(*_split(a), True) for a in assignments]
    for key, value, is_text in items:
        cfg = _set(cfg, key.split("."), value, key, is_text)
    return cfg


def _split(assignment: str) -> tuple[str, str]:
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected key=value, got {assignment!r}")
    return key.strip(), value.strip()


def _set(cfg: Any, path: list[str], raw: Any, full_key: str, is_text: bool) -> Any:
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"{full_key}: {type(cfg).__name__} has no fields")
    names = {f.name for f in dataclasses.fields(cfg)}
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config key {full_key!r}; valid keys here: {', '.join(sorted(names))}")
    current = getattr(cfg, head)
    if len(path) > 1:
        return dataclasses.replace(cfg, **{head: _set(current, path[1:], raw, full_key, is_text)})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"{full_key} is a group; set one of its fields, e.g. {full_key}.<field>=...")
    annotation = _field_types(type(cfg))[head]
    value = _parse_value(raw, annotation) if is_text else raw
    return dataclasses.replace(cfg, **{head: _check_type(value, annotation, full_key)})


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, help) for every leaf field, in declaration order."""
    rows = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, prefix=f"{key}."))
        else:
            rows.append((key, value, f.metadata.get("help", "")))
    return rows


def get_preset(presets: Mapping[str, Preset], name: str) -> Any:
    """The config of preset ``name``; an unknown name raises :class:`ConfigError` listing the presets."""
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return presets[name]()
