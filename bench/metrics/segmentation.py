"""Evaluation metrics: the numbers of design §6, computed exactly once per image.

Owns the segmentation metrics (detection metrics: :mod:`bench.metrics.detection`):

- ``dice_per_image``: per-image Dice of boolean masks, with the empty-mask convention of
  Kaggle's per-image Dice (empty target and empty prediction = 1, empty target and any
  prediction = 0).
- ``SegMetrics``: a streaming accumulator fed batch by batch with probabilities,
  targets and image ids. It keeps integer per-image counts keyed by image id, so the
  result does not depend on batch size, batch order, shuffling or ``drop_last`` (design
  §8.4), and it refuses to see the same image twice.

Probabilities are binarized with ``prob > threshold`` (threshold 0.5) at the evaluation
resolution; targets are binarized with ``target > 0.5`` unless they are already bool.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable

import numpy as np
import torch

THRESHOLD = 0.5


def _as_3d(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray | torch.Tensor:
    """Accept (N,H,W) or (N,1,H,W); return (N,H,W)."""
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name}: expected one channel, got shape {tuple(x.shape)}")
        return x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected (N,H,W) or (N,1,H,W), got shape {tuple(x.shape)}")
    return x


def _to_bool(x: np.ndarray | torch.Tensor, threshold: float) -> np.ndarray | torch.Tensor:
    """Bool arrays pass through; anything else becomes ``x > threshold``."""
    if isinstance(x, torch.Tensor):
        return x if x.dtype == torch.bool else x > threshold
    x = np.asarray(x)
    return x if x.dtype == bool else x > threshold


def _check_probabilities(probs: np.ndarray | torch.Tensor) -> None:
    """Refuse values outside [0, 1]: those are logits, and 0.5 would be the wrong cut."""
    if isinstance(probs, torch.Tensor):
        if probs.dtype == torch.bool or probs.numel() == 0:
            return
        lo, hi = float(probs.min()), float(probs.max())
    else:
        probs = np.asarray(probs)
        if probs.dtype == bool or probs.size == 0:
            return
        lo, hi = float(probs.min()), float(probs.max())
    if lo < 0.0 or hi > 1.0 or math.isnan(lo) or math.isnan(hi):
        raise ValueError(
            f"predictions must be probabilities in [0, 1] (got min {lo}, max {hi}); "
            "apply a sigmoid to logits before thresholding"
        )


def mask_counts(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (intersection, |pred|, |target|) as int64 arrays of shape (N,).

    ``pred`` and ``target`` are boolean (N,H,W) or (N,1,H,W), numpy or torch (counted on
    the tensor's device; only N integers per array are moved to the CPU).
    """
    pred, target = _as_3d(pred, "pred"), _as_3d(target, "target")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
        )
    if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
        pred, target = torch.as_tensor(pred).bool(), torch.as_tensor(target).bool()
        target = target.to(pred.device)
        n = pred.shape[0]
        counts = [
            (pred & target).reshape(n, -1).sum(1, dtype=torch.int64),
            pred.reshape(n, -1).sum(1, dtype=torch.int64),
            target.reshape(n, -1).sum(1, dtype=torch.int64),
        ]
        return tuple(c.cpu().numpy() for c in counts)
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    n = pred.shape[0]
    inter = (pred & target).reshape(n, -1).sum(1, dtype=np.int64)
    return (
        inter,
        pred.reshape(n, -1).sum(1, dtype=np.int64),
        target.reshape(n, -1).sum(1, dtype=np.int64),
    )


def dice_from_counts(inter: np.ndarray, psum: np.ndarray, tsum: np.ndarray) -> np.ndarray:
    """Per-image Dice from counts; both masks empty gives 1, empty target with any
    prediction gives 0 (the intersection is 0 there)."""
    inter, denom = (
        np.asarray(inter, np.int64),
        np.asarray(psum, np.int64) + np.asarray(tsum, np.int64),
    )
    safe = np.where(denom == 0, 1, denom)
    return np.where(denom == 0, 1.0, 2.0 * inter / safe)


def dice_per_image(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Per-image Dice of boolean masks (N,H,W) -> float64 array (N,)."""
    return dice_from_counts(*mask_counts(pred, target))


class SegMetrics:
    """Streaming segmentation metrics keyed by image id (design §6, §8.4).

    ``update(probs, targets, ids)`` with probabilities (N,1,H,W) or (N,H,W) in [0, 1]
    (bool predictions are taken as already thresholded), targets of the same shape and
    N image ids. ``compute()`` returns ``dice``, ``dice_pooled``, ``dice_pos``,
    ``n_images``, ``n_positive``; ``per_image()`` returns {image id: Dice}.
    """

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold
        self._counts: dict[Hashable, tuple[int, int, int]] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def reset(self) -> None:
        self._counts = {}

    def update(
        self,
        probs: np.ndarray | torch.Tensor,
        targets: np.ndarray | torch.Tensor,
        ids: Iterable[Hashable],
    ) -> None:
        # tensors hash by identity, so a tensor of ids would never look repeated
        ids = ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else list(ids)
        probs = _as_3d(probs, "probs")
        if len(ids) != probs.shape[0]:
            raise ValueError(f"{len(ids)} image ids for a batch of {probs.shape[0]} images")
        dup = sorted({str(i) for i in ids if i in self._counts} | _repeated(ids))
        if dup:
            raise ValueError(f"image id(s) seen twice, each image must count once: {dup[:5]}")
        _check_probabilities(probs)
        pred = _to_bool(probs, self.threshold)
        target = _to_bool(_as_3d(targets, "targets"), 0.5)
        inter, psum, tsum = mask_counts(pred, target)
        for i, a, b, c in zip(ids, inter.tolist(), psum.tolist(), tsum.tolist()):
            self._counts[i] = (a, b, c)

    def add(self, ids: Iterable[Hashable], preds, targets) -> None:
        """``update`` with the argument order every head's accumulator takes (ids first);
        ``preds`` and ``targets`` are per-image (H, W) arrays, sizes may differ between images."""
        for i, p, t in zip(ids, preds, targets, strict=True):
            self.update(np.asarray(p)[None], np.asarray(t)[None], [i])

    def _arrays(self) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
        ids = list(self._counts)
        c = np.array([self._counts[i] for i in ids], dtype=np.int64).reshape(-1, 3)
        return ids, c[:, 0], c[:, 1], c[:, 2]

    def per_image(self) -> dict[Hashable, float]:
        """{image id: Dice} in the order the images were added."""
        ids, inter, psum, tsum = self._arrays()
        return dict(zip(ids, dice_from_counts(inter, psum, tsum).tolist()))

    def compute(self) -> dict:
        """Metrics over every image added so far (plain Python numbers, JSON-ready)."""
        if not self._counts:
            raise ValueError("SegMetrics.compute() called before any image was added")
        _, inter, psum, tsum = self._arrays()
        dice = dice_from_counts(inter, psum, tsum)
        positive = tsum > 0
        denom = int(psum.sum() + tsum.sum())
        return {
            "dice": _mean(dice),
            "dice_pooled": 1.0 if denom == 0 else float(2 * int(inter.sum()) / denom),
            "dice_pos": _mean(dice[positive]) if positive.any() else None,
            "n_images": int(dice.size),
            "n_positive": int(positive.sum()),
        }


def _mean(values: np.ndarray) -> float:
    """Correctly rounded mean (math.fsum), so the result does not depend on image order."""
    return math.fsum(values.tolist()) / len(values)


def _repeated(ids: list) -> set[str]:
    seen, rep = set(), set()
    for i in ids:
        if i in seen:
            rep.add(str(i))
        seen.add(i)
    return rep
