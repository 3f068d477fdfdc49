"""`key=value` overrides on an OrganismConfig (dotted keys reach nested stages: pretrain.steps=800)."""

from __future__ import annotations

import dataclasses
import json

from .config import OrganismConfig


def _parse(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def apply_overrides(cfg: OrganismConfig, overrides: list[str]) -> OrganismConfig:
    cfg = dataclasses.replace(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        obj = cfg
        for part in path:
            if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:  # noqa: E501
                raise ValueError(f"unknown config key {key!r}")
            child = getattr(obj, part)
            child = dict(child) if isinstance(child, dict) else dataclasses.replace(child)
            setattr(obj, part, child)
            obj = child
        if isinstance(obj, dict):
            obj[last] = _parse(value)
        elif dataclasses.is_dataclass(obj) and last in {f.name for f in dataclasses.fields(obj)}:
            setattr(obj, last, _parse(value))
        else:
            raise ValueError(f"unknown config key {key!r}")
    cfg.validate()
    return cfg
