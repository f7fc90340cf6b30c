"""Devices and mixed precision: which device a run uses and how it computes there.

Owns :func:`resolve_device` (``auto`` = the GPU when there is one), :func:`autocast`
(bf16 on GPUs that have it, fp16 otherwise, nothing on CPU) and :func:`grad_scaler`
(only for fp16). On CPU everything runs in float32 and repeats exactly for a seed.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for, but CUDA is not available here")
    return device


def autocast(device: torch.device):
    """bf16 autocast on GPUs that have it, fp16 otherwise; nothing on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    enabled = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda", enabled=enabled)
