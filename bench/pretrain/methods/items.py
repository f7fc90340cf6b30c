"""The training items the methods draw: two views, a query and its MedAug key, an image and a sentence.

Owns the small datasets over the decoded corpus (uint8 ``(N, S, S)``): each
``__getitem__`` draws its randomness from the torch RNG (seeded per loader worker by
PyTorch), so a seed repeats on one machine.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def _image(images: np.ndarray, i: int) -> torch.Tensor:
    return torch.from_numpy(np.array(images[i]))[None]  # (1, S, S) uint8


def _rng() -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))


class TwoViews(Dataset):
    """(view of image i, view of image key(i)); key(i) = i gives SimCLR's two views."""

    def __init__(self, images, transform, pairs=None):
        self.images, self.transform, self.pairs = images, transform, pairs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        j = i if self.pairs is None else self.pairs.key_index(i, _rng())[0]
        return self.transform(_image(self.images, i)), self.transform(_image(self.images, j))


class ImageSentence(Dataset):
    """(view of image i, one sentence drawn uniformly from its report's findings and impression)."""

    def __init__(self, images, sentences: list[list[str]], transform):
        assert len(images) == len(sentences) and all(sentences)
        self.images, self.sentences, self.transform = images, sentences, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        options = self.sentences[i]
        sentence = options[int(torch.randint(0, len(options), ()))]
        return self.transform(_image(self.images, i)), sentence


class ImageLabels(Dataset):
    """(view of image i, labels (L,) float, mask (L,) float: 1 where the label is known)."""

    def __init__(self, images, labels: np.ndarray, mask: np.ndarray, transform):
        self.images, self.transform = images, transform
        self.labels = torch.from_numpy(labels.astype(np.float32))
        self.mask = torch.from_numpy(mask.astype(np.float32))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(_image(self.images, i)), self.labels[i], self.mask[i]
