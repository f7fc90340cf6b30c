"""Input normalization of an initialization: what it was trained with, or what the user says.

Owns :func:`family_normalization` (for a bare checkpoint path: the mean/std of the
catalogue entry with the same key layout, else ImageNet's) and
:func:`override_normalization` (``--mean/--std``, broadcast from one value and checked
against the encoder's input channels).
"""

from __future__ import annotations

from .catalogue import list_inits
from .errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def family_normalization(fmt: str, in_channels: int) -> tuple[list[float], list[float], str]:
    """Normalization for a checkpoint path: from the catalogue entry of its layout, else ImageNet."""
    if fmt not in ("plain", "lightning", "prefix"):
        for entry in list_inits():
            if entry.format == fmt and entry.in_channels == in_channels:
                return (
                    list(entry.mean),
                    list(entry.std),
                    f"catalogue entry {entry.name!r} (same layout)",
                )
    if in_channels == 3:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    else:
        mean, std = (
            [round(sum(IMAGENET_MEAN) / 3, 3)] * in_channels,
            [round(sum(IMAGENET_STD) / 3, 3)] * in_channels,
        )
    return mean, std, "ImageNet default (a checkpoint path does not say how it was normalized)"


def override_normalization(info: dict, mean, std) -> dict:
    """Apply a user's mean/std (broadcast from one value) after checking it fits the input."""
    if mean is None and std is None:
        return info
    if mean is None or std is None:
        raise WeightsError("mean and std go together (--mean and --std)")
    channels = int(info.get("in_channels") or len(info["mean"]))
    values = []
    for name, v in (("mean", mean), ("std", std)):
        v = [float(x) for x in v]
        if len(v) == 1:
            v = v * channels
        if len(v) != channels:
            raise WeightsError(
                f"--{name} has {len(v)} values but the encoder takes {channels} input channel(s)"
            )
        values.append(v)
    if not all(s > 0 for s in values[1]):
        raise WeightsError(f"--std values must be > 0, got {values[1]}")
    was = info.get("normalization")
    return {**info, "mean": values[0], "std": values[1],
            "normalization": f"given (--mean/--std; the init's own was: {was})"}  # fmt: skip
