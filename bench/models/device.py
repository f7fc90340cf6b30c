"""Devices and mixed precision: which device a run uses and how it computes there.

Owns :func:`resolve_device` (``auto`` = the GPU when there is one; a device this machine
cannot provide is a :class:`DeviceError`, bad input), :func:`autocast`
(bf16 on GPUs that have it, fp16 otherwise, nothing on CPU) and :func:`grad_scaler`
(only for fp16). On CPU everything runs in float32 and repeats exactly for a seed.
"""

from __future__ import annotations

import contextlib

import torch

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


class DeviceError(ValueError):
    """A ``--device`` that is not a device, or one this machine does not have (bad input)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; anything else checked here.

    Raises :class:`DeviceError` (one line, before any work) for a name torch does not
    parse, a device type this project does not run on, CUDA (or MPS) when the machine
    has none, and a CUDA index beyond the visible GPUs.
    """
    name = str(name).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"--device {name!r} is not a device; use {DEVICE_HELP}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise DeviceError(f"--device {name} asked for, but CUDA is not available here ({why}); "
                              "use --device cpu or auto")  # fmt: skip
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise DeviceError(f"--device {name}: this machine has {n} visible GPU(s) (cuda:0 to cuda:{n - 1})")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"--device {name} asked for, but MPS is not available here; use --device cpu or auto")
        return device
    raise DeviceError(f"--device {name}: device type {device.type!r} is not supported; use {DEVICE_HELP}")


def autocast(device: torch.device):
    """bf16 autocast on GPUs that have it, fp16 otherwise; nothing on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    enabled = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda", enabled=enabled)
