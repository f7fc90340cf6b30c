"""Owns: the image augmentations of each pretraining recipe (``torchvision.transforms.v2``).

Each function returns a callable from a cached uint8 image ``(1, H, W)`` to a float32
tensor ``(1, size, size)`` in ``[0, 1]`` (normalization and the expansion to three
channels belong to the model's input, as in :mod:`bench.pretrain.supervised`). Chest
X-rays are grayscale, so no recipe has hue, saturation, grayscale conversion or
solarization. Randomness comes from torch's generator: ``torch.manual_seed`` (or the
DataLoader's per-worker seeding) makes a view reproducible.

| recipe | source of the settings |
| --- | --- |
| :func:`simclr_transform` | LoVT's SimCLR baseline (Müller et al. 2022, ``baselines/baseline_utils.py``), i.e. SimCLR's (Chen et al. 2020, App. A) without colour |
| :func:`moco_cxr_transform` | MoCo-CXR (Sowrirajan et al. 2021, ``aihc_utils/image_transform.py``) |
| :func:`image_text_transform` | ConVIRT (Zhang et al. 2020, §3/App.), as LoVT's ``ScanAugmentationConfig`` spells it, less the flip |
| :func:`eval_transform` | resize only |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2


def _to_float() -> v2.Transform:
    return v2.ToDtype(torch.float32, scale=True)


def _blur_kernel(size: int) -> int:
    """10% of the image side, odd (SimCLR App. A; LoVT)."""
    k = int(0.1 * size)
    return k + 1 if k % 2 == 0 else k


def simclr_transform(size: int, min_scale: float = 0.08) -> Callable:
    """SimCLR views for chest X-rays, as in LoVT's SimCLR baseline.

    Random resized crop (scale ``min_scale``-1; 0.08 is SimCLR's and torchvision's
    default, which LoVT keeps; ``--crop-scale`` raises it for tiny images), brightness/contrast jitter 0.8 with p = 0.8 (SimCLR's strength, no
    saturation/hue), horizontal flip, Gaussian blur (kernel 10% of the side, σ 0.1-2)
    with p = 0.5.
    """
    return v2.Compose([
        _to_float(),
        v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(brightness=0.8, contrast=0.8)], p=0.8),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=0.5),
    ])  # fmt: skip


def moco_cxr_transform(size: int) -> Callable:
    """MoCo-CXR views: resize (shorter side to ``size``), horizontal flip, rotation ±10°, random crop.

    Sowrirajan et al. 2021, "MoCo-CXR: MoCo Pretraining Improves Representation and
    Transferability of Chest X-ray Models" (MIDL): ``Resize(img_size)`` keeping the
    aspect ratio, ``RandomHorizontalFlip``, ``RandomRotation(10)``, ``RandomCrop(crop)``
    with ``crop = img_size`` (320 for CheXpert), so the crop moves along the longer side.
    """
    return v2.Compose([
        _to_float(),
        v2.Resize(size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(10),
        v2.RandomCrop(size),
    ])  # fmt: skip


def image_text_transform(size: int) -> Callable:
    """The image branch of ConVIRT and CLIP pretraining on image-report pairs.

    ConVIRT's family (Zhang et al. 2020; the values of LoVT's ``ScanAugmentationConfig``):
    random resized crop (scale 0.6-1), random affine (rotation ±20°, translation 10%,
    scaling 0.95-1.05), brightness and contrast ratios in 0.6-1.4, Gaussian blur
    (kernel 10% of the side, σ 0.1-3). **No horizontal flip**, unlike ConVIRT and LoVT:
    reports say which side a finding is on ("left lower lobe"), and a flipped image
    paired with its report is a wrong pair.
    """
    return v2.Compose([
        _to_float(),
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
        v2.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.95, 1.05)),
        v2.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4)),
        v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 3.0)),
    ])  # fmt: skip


def eval_transform(size: int) -> Callable:
    """Resize to ``size × size`` (bilinear, antialiased), nothing random."""
    return v2.Compose([_to_float(), v2.Resize((size, size), antialias=True)])
