"""Torch datasets over a prepared (cached) task, with each initialization's input normalization.

Images come out of the cache as uint8; here they become float in [0, 1], are
repeated to the encoder's number of input channels and normalized with the mean and
std that the initialization's catalogue entry declares. Evaluation loaders never
shuffle and never drop the last batch, so every test image is scored exactly once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class Normalize:
    """uint8 (N, H, W) batch -> normalized float (N, C, H, W)."""

    def __init__(self, mean: list[float], std: list[float], channels: int):
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"normalization has {len(mean)} means for {channels} channels")
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = images_u8.float().div_(255.0).unsqueeze(1)
        x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class SegmentationDataset(Dataset):
    """(image uint8 HxW, mask uint8 HxW, index) for the given cache indices."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, indices: list[int]):
        self.images = images
        self.masks = masks
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        return (
            torch.from_numpy(np.array(self.images[j])),
            torch.from_numpy(np.array(self.masks[j])),
            j,
        )


class DetectionDataset(Dataset):
    """(image uint8 HxW, {"boxes": float (M,4) xyxy at the cache size}, index)."""

    def __init__(self, images: np.ndarray, boxes: list[np.ndarray], indices: list[int]):
        self.images = images
        self.boxes = boxes
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        boxes = torch.as_tensor(np.asarray(self.boxes[j], dtype=np.float32).reshape(-1, 4))
        return torch.from_numpy(np.array(self.images[j])), {"boxes": boxes}, j


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    num_workers: int = 0,
    collate_fn=None,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=False,  # never drop images (design §8.4)
        num_workers=num_workers,
        generator=generator,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )
