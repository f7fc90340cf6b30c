"""Supervised pretraining: image-level classification, the ``supervised`` initialization.

Owns :func:`pretrain_supervised`: a torchvision ResNet with a linear classifier trained
with binary cross-entropy on each image's labels (here the prepared dataset's
``positive`` flag, i.e. "has a finding", which every task's cache records), through the
same :func:`bench.engine.train.fit` loop as every run: Adam, early stopping on the
validation accuracy, best weights kept, NaN losses stop it. The validation images are
a split of the *pretraining* set (``tasks.splits.assign_splits`` by patient), never
the downstream data. The result is a plain torchvision state dict (``fc`` included;
``weights_registry`` drops it), written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bench.models.datasets import make_loader
from weights_registry.normalization import IMAGENET_MEAN, IMAGENET_STD


def _labels(prepared) -> torch.Tensor:
    return torch.tensor([float(bool(it["positive"])) for it in prepared.manifest["items"]])


def _normalize(images_u8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images_u8.float().div(255).unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std


def _loss_step(model: nn.Module, batch, device: torch.device) -> torch.Tensor:
    images, labels = batch
    logits = model(_normalize(images).to(device))[:, 0]
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(device))


@torch.no_grad()
def _accuracy(model: nn.Module, loader) -> dict:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(_normalize(images))[:, 0]
        correct += int(((logits > 0).float() == labels).sum())
        total += len(labels)
    return {"accuracy": correct / max(total, 1)}


def pretrain_supervised(prepared, out_file: Path, *, arch: str, epochs: int, batch_size: int = 32,
                        lr: float = 1e-3, seed: int = 1234, progress: bool = True) -> Path:  # fmt: skip
    """Train ``arch`` on ``prepared``'s image-level labels; save its state dict to ``out_file``."""
    import torchvision

    from bench.engine.train import fit, seed_everything
    from bench.util import atomic_write
    from tasks.splits import assign_splits

    if out_file.exists():
        return out_file
    split = assign_splits(prepared.ids, dict(zip(prepared.ids, prepared.groups)), (0.85, 0.15, 0.0))
    images = torch.from_numpy(np.array(prepared.images))  # a writable copy of the memmap
    labels = _labels(prepared)
    idx = {s: [i for i, image_id in enumerate(prepared.ids) if split[image_id] == s] for s in ("train", "val")}
    seed_everything(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1)

    def loader(s: str, train: bool):
        data = TensorDataset(images[idx[s]], labels[idx[s]])
        return make_loader(data, batch_size, train=train, seed=seed)

    fit(model, loader("train", True), loader("val", False), loss_step=_loss_step, evaluate=_accuracy,
        metric="accuracy", lr=lr, weight_decay=0.0, epochs=epochs, patience=epochs,
        device=torch.device("cpu"), progress=progress)  # fmt: skip
    return atomic_write(out_file, lambda f: torch.save(model.state_dict(), f), binary=True)
