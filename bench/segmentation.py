"""Segmentation specifics for the training loop: the loss step, evaluation, and predictions.

Loss is BCE + soft Dice (MONAI's ``DiceLoss``) on logits. Evaluation thresholds
sigmoid probabilities at 0.5 at the cache resolution and scores every image once
with :class:`bench.metrics.SegMetrics`. Predictions for a Kaggle-format submission
are upsampled to each image's original size before thresholding and RLE encoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.data import Normalize
from bench.metrics import SegMetrics
from bench.train import autocast


def make_loss_step(normalize: Normalize, channels_last: bool = False):
    from monai.losses import DiceLoss

    dice_loss = DiceLoss(sigmoid=True)

    def loss_step(model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        images, masks, _ = batch
        x = normalize(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = masks.to(device, non_blocking=True).unsqueeze(1).float()
        logits = model(x)
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)

    return loss_step


@torch.no_grad()
def predict_probs(model: nn.Module, loader, normalize: Normalize, device: torch.device):
    """Yield (cache indices, probabilities (N,H,W) float32 on CPU, masks) batch by batch."""
    model.eval()
    for images, masks, idx in loader:
        x = normalize(images.to(device, non_blocking=True))
        with autocast(device):
            logits = model(x)
        probs = torch.sigmoid(logits.float())[:, 0].cpu()
        yield idx.tolist(), probs, masks


def make_evaluate(normalize: Normalize, device: torch.device, ids: list[str]):
    """Return ``evaluate(model, loader) -> metrics dict`` scoring each image exactly once."""

    def evaluate(model: nn.Module, loader) -> dict:
        metrics = SegMetrics()
        for idx, probs, masks in predict_probs(model, loader, normalize, device):
            metrics.update(probs, masks, [ids[i] for i in idx])
        return metrics.compute()

    return evaluate
