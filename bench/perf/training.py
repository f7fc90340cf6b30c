"""The training and data paths of one protocol, as :class:`~bench.perf.meter.Path` objects.

- :func:`compute_path`: the real training step (:meth:`Trainer.train`) on one batch
  already on the device, repeated: the compute limit (``compute_ips``);
- :func:`plain_path`: that step in plain float32, NCHW (no autocast, no channels_last):
  ``plain_fp32_ips``, the baseline of ``fast_path_speedup``;
- :func:`train_path`: the same step fed by a real loader, epoch after epoch
  (``pipeline_ips`` on the cache, ``dicom_step_ips`` on the per-sample DICOM path);
- :func:`data_path`: a loader alone, each batch moved to the device, no model
  (``loader_ips``, ``dicom_ips``).
"""

from __future__ import annotations

import torch

from bench.perf.meter import Path, forever, take, to_device
from bench.perf.setup import Trainer


def compute_path(name: str, trainer: Trainer, batch) -> Path:
    """``batch`` must already be on the device (:func:`~bench.perf.meter.to_device`)."""
    return Path(name, lambda n: trainer.train([batch] * n))


def plain_path(name: str, trainer: Trainer, batch) -> Path:
    """:func:`compute_path` inside :func:`~bench.models.device.plain_fp32` (no autocast, NCHW):
    ``trainer`` must have been built inside it too."""
    from bench.models.device import plain_fp32

    def run(n: int) -> int:
        with plain_fp32():
            return trainer.train([batch] * n)

    return Path(name, run)


def train_path(name: str, trainer: Trainer, loader) -> Path:
    batches = forever(loader)
    return Path(name, lambda n: trainer.train(take(batches, n)))


def data_path(name: str, loader, device: torch.device) -> Path:
    batches = forever(loader)

    def run(n: int) -> int:
        images = 0
        for batch in take(batches, n):
            images += len(to_device(batch, device)[0])
        return images

    return Path(name, run)


def first_batch(loader, device: torch.device):
    """The loader's first batch, on the device (the compute limit's input)."""
    return to_device(next(iter(loader)), device)
