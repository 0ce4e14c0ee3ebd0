"""A grid of settings: TUNE's and SWEEP's `key=v1,v2,...[;key2=...]`, every combination of the
keys' values, and how a setting reads back on a command line."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import yaml

from ..errors import ConfigError


def value_text(value) -> str:
    return "null" if value is None else str(value)

def _axis(text: str, name: str, example: str) -> tuple[str, list]:
    """'data.train_per_class=5,20,null' -> ('data.train_per_class', [5, 20, None]), values typed as YAML."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ConfigError(f"{name}={text!r} is not of the form key=v1,v2,... (e.g. {example})")
    parsed = [yaml.safe_load(v.strip()) if v.strip() else None for v in values.split(",")]
    if len({repr(v) for v in parsed}) != len(parsed):
        raise ConfigError(f"{name}={text!r} repeats a value")
    return key.strip(), parsed

@dataclass(frozen=True)
class Grid:
    """TUNE='optim.lr=1e-4,1e-3;optim.weight_decay=0,1e-4' or SWEEP='data.train_per_class=10,100;
    model.name=resnet18,resnet50': every combination of the keys' values, the last key varying
    fastest."""
    axes: tuple[tuple[str, tuple], ...]

    @classmethod
    def parse(cls, text: str, name: str = "TUNE", example: str = "optim.lr=1e-4,3e-4,1e-3") -> "Grid":
        axes = [_axis(part, name, example) for part in text.split(";") if part.strip()]
        if not axes:
            raise ConfigError(f"{name}={text!r} names no key; e.g. {name}='{example}'")
        keys = [k for k, _ in axes]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{name}={text!r} names a key twice")
        return cls(tuple((k, tuple(v)) for k, v in axes))

    @classmethod
    def from_json(cls, axes: list) -> "Grid":
        return cls(tuple((k, tuple(v)) for k, v in axes))

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.axes]

    def points(self) -> list[dict]:
        return [dict(zip(self.keys, combo)) for combo in itertools.product(*(v for _, v in self.axes))]

    def to_json(self) -> list:
        return [[k, list(v)] for k, v in self.axes]

def setting_args(point: dict) -> list[str]:
    """{'optim.lr': 0.001} -> ['optim.lr=0.001'], as a command line gives them."""
    return [f"{k}={value_text(v)}" for k, v in point.items()]

def setting_text(value) -> str:
    """A YAML value as a command line's key=value gives it, read back the same by load_config: a
    string that would read as another type ("1", "null") is quoted."""
    if isinstance(value, str):
        try:
            plain = isinstance(yaml.safe_load(value), str)
        except yaml.YAMLError:
            plain = True
        return value if plain else json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value_text(value)
