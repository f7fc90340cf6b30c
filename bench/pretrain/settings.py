"""The settings of one pretraining: every flag, with each method's published defaults filled in.

Owns :class:`PretrainSettings` (flat, JSON-able, recorded in full next to the
checkpoint), :func:`resolve` (the user's flags over the method's recipe defaults:
``None`` means "the recipe's value", and the record says which values came from the
recipe), and :func:`differences` (what ``--resume`` refuses on: every setting that
changes the result; the device, loader workers and progress bar do not).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# settings that change where or how fast a run goes, never what it computes
_NOT_RESULT = ("device", "workers", "out", "name")


@dataclass
class PretrainSettings:
    method: str
    data: str
    out: str
    name: str
    layout: str | None = None
    views: str = "frontal"
    arch: str = "resnet50"
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    # method options (None = the recipe's value; a method ignores the others)
    temperature: float | None = None
    proj_dim: int | None = None
    queue_size: int | None = None
    momentum: float | None = None
    positives: str | None = None
    laterality: str | None = None
    lam: float | None = None
    text_encoder: str | None = None
    text_max_length: int | None = None
    freeze_text_layers: int | None = None
    crop_scale: float | None = None
    from_recipe: list[str] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve(s: PretrainSettings) -> PretrainSettings:
    """``s`` with every ``None`` replaced by the method's recipe default (listed in ``from_recipe``)."""
    from bench.pretrain.methods import get_method

    method = get_method(s.method)
    values, taken = s.to_dict(), []
    for key, default in method.defaults.items():
        if key not in values:
            raise AssertionError(f"{method.name}: default for unknown setting {key!r}")
        if values[key] is None:
            values[key] = default
            taken.append(key)
    values["from_recipe"] = sorted(set(values.get("from_recipe") or []) | set(taken))
    values["data"] = str(Path(values["data"]).expanduser().resolve())
    out = PretrainSettings(**values)
    missing = [k for k in ("image_size", "epochs", "batch_size", "lr", "weight_decay", "optimizer")
               if getattr(out, k) is None]  # fmt: skip
    if missing:
        raise AssertionError(f"{method.name} has no default for {missing}")
    for key, low in (("epochs", 1), ("batch_size", 1), ("image_size", 32)):
        if getattr(out, key) < low:
            raise ValueError(f"--{key.replace('_', '-')} must be at least {low}, got {getattr(out, key)}")
    return out


def differences(recorded: dict[str, Any], now: PretrainSettings) -> list[str]:
    """'key: recorded -> now' for every result-changing setting that differs."""
    current = now.to_dict()
    keys = sorted((set(recorded) | set(current)) - set(_NOT_RESULT) - {"from_recipe"})
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys
            if recorded.get(k) != current.get(k)]  # fmt: skip
