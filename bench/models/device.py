"""Devices and mixed precision: which device a run uses and how it computes there.

Owns :func:`resolve_device` (``auto`` = the GPU when there is one; a device this machine
cannot provide is a :class:`DeviceError`, bad input), :func:`autocast`
(bf16 on GPUs that have it, fp16 otherwise, nothing on CPU), :func:`grad_scaler`
(only for fp16), :func:`channels_last` (the memory format of models and image batches:
NHWC on CUDA and on CPUs with oneDNN), :func:`plain_fp32` (both off, for ``bench perf``'s
baseline), :func:`loader_workers` (DataLoader workers when not given: none on
CPU, ``min(4, cores)`` on CUDA) and :func:`compile_model` (``--compile``). On CPU
everything runs in float32 and repeats exactly for a seed.
"""

from __future__ import annotations

import contextlib
import os

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


_PLAIN = {"on": False}  # inside plain_fp32(): no autocast, no channels_last


@contextlib.contextmanager
def plain_fp32():
    """Inside the block, :func:`autocast` does nothing and :func:`channels_last` is False
    (so :func:`grad_scaler` is off): the plain float32, NCHW path, which ``bench perf``
    times beside the default one (``fast_path_speedup``). Models and loss steps built
    inside keep NCHW; run them inside it too."""
    old = _PLAIN["on"]
    _PLAIN["on"] = True
    try:
        yield
    finally:
        _PLAIN["on"] = old


def autocast(device: torch.device):
    """bf16 autocast on GPUs that have it, fp16 otherwise; nothing on CPU."""
    if device.type != "cuda" or _PLAIN["on"]:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def channels_last(device: torch.device) -> bool:
    """Whether models and 4-d image batches go channels_last (NHWC) on ``device``: on CUDA,
    and on a CPU whose convolutions run through oneDNN, which computes NHWC faster.

    Measured on 2 AMD EPYC cores, one thread, training steps per second NHWC vs NCHW:
    smp U-Net resnet18 64 px batch 16 x1.09 (finetune) and x1.17 (its decoder alone, as
    under ``frozen`` with feature reuse); RetinaNet resnet18-FPN 128 px x1.04.
    """
    if _PLAIN["on"]:
        return False
    return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    enabled = device.type == "cuda" and not torch.cuda.is_bf16_supported() and not _PLAIN["on"]
    return torch.amp.GradScaler("cuda", enabled=enabled)


CUDA_LOADER_WORKERS = 4  # DataLoader workers on CUDA when --num-workers is not given


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def loader_workers(requested: int | None, device: torch.device) -> int:
    """DataLoader workers: ``requested`` when given, else 0 on CPU (the training threads
    use the cores) and ``min(4, cores)`` on CUDA (reading and collating overlap the GPU)."""
    if requested is not None:
        return int(requested)
    return min(CUDA_LOADER_WORKERS, available_cores()) if device.type == "cuda" else 0


def compile_target(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """(name, module) of the part of a ``ProtocolModel`` that ``--compile`` compiles.

    A segmenter's inner model (``model.model``: U-Net or linear probe) is one tensor
    graph of fixed shapes. A torchvision detector is not (its transform, anchors, box
    matching and post-processing are Python over lists of images and of a varying
    number of boxes): there only its backbone (``model.model.backbone``: the encoder and
    the FPN) is compiled.
    """
    inner = model.model
    backbone = getattr(inner, "backbone", None)
    if isinstance(backbone, torch.nn.Module):
        return "model.backbone", backbone
    return "model", inner


def compile_model(model: torch.nn.Module, enabled: bool) -> dict:
    """``--compile``: compile the tensor part of ``model`` in place, for the record.

    ``nn.Module.compile()`` on the inner module (:func:`compile_target`), not
    ``torch.compile(model)``: the model stays the same ``ProtocolModel`` (its protocol,
    ``train()``, ``encoder``), its state-dict keys keep their names (no ``_orig_mod.``),
    so ``fit``'s best-weights copy and ``load_state_dict`` work unchanged, and every
    caller (loss step, evaluation, predictions, examples) gets the compiled forward.
    Compilation happens at the first call; train and eval modes are compiled once each
    (and once more when feature reuse puts the encoder back, for the examples).
    """
    if not enabled:
        return {"enabled": False}
    torch._dynamo.reset()  # a fresh start per run: a sweep's runs in one process never reach dynamo's recompile limit
    name, target = compile_target(model)
    target.compile()
    return {"enabled": True, "target": name, "backend": "inductor"}
