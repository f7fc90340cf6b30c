"""Segmentation: the mask head, its models (smp U-Net, linear probe), loss, predictions, metrics.

Owns :class:`SegmentationHead` (the ``"mask"`` output kind of :mod:`bench.models.heads`),
:func:`build_segmenter` (a registry encoder inside an smp U-Net, or
:class:`LinearSegmenter` for ``linear``), the loss step and the evaluation.

Loss is BCE + soft Dice (MONAI's ``DiceLoss``) on logits. Evaluation thresholds
sigmoid probabilities at 0.5 at the cache resolution and scores every image once
with :class:`bench.metrics.SegMetrics`. Predictions for a Kaggle-format submission
are upsampled to each image's original size before thresholding and RLE encoding.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.metrics.segmentation import THRESHOLD, SegMetrics
from bench.models.datasets import Normalize, SegmentationDataset
from bench.models.device import autocast
from bench.models.device import channels_last as nhwc
from bench.models.protocols import ProtocolModel, load_into


class LinearSegmenter(nn.Module):
    """Linear probe for segmentation: 1x1 conv on C5, bilinear upsampling to the input size.

    C5 first goes through a BatchNorm without affine parameters (``self.norm``), as in
    MAE's linear probe (He et al. 2022, appendix A.3): at test time it is a fixed
    per-channel shift and scale, so the probe stays linear in the features, and it
    makes one learning rate fit every init. Without it the probe's step size depends on
    the init's feature scale (a random ResNet's C5 has a per-channel mean of ~2, and a
    logit sums 512-2048 channels): on the synthetic SIIM set at 256 px with resnet50,
    the first epoch's mean train loss was 31 at lr 1e-2 and 92 at lr 3e-2 (from 2.4 at
    the first step), against 2.0 and below with the norm; the resnet18 probe of the CI
    sweep predicted empty masks for every seed without it.
    """

    encoder_outputs_used = (-1,)  # C5 only (what feature reuse keeps, bench.models.reuse)

    def __init__(self, encoder: nn.Module, classes: int = 1):
        super().__init__()
        self.encoder = encoder
        channels = encoder.out_channels[-1]
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.head = nn.Conv2d(channels, classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5 = self.encoder(x)[-1]
        logits = self.head(self.norm(c5))
        return bilinear_upsample(logits, tuple(x.shape[-2:]))


def _linear_weights(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in): row i holds the weights 1-d linear interpolation gives output i,
    taken from ``F.interpolate`` itself on the one-hot inputs (so torch defines them);
    computed once per sizes, dtype and device (traced as constants under torch.compile)."""
    if torch.compiler.is_compiling():
        return _linear_weights_of(n_in, n_out, dtype, device)
    return _cached_linear_weights(n_in, n_out, dtype, device)


def _linear_weights_of(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in)
    rows = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0].T
    return rows.to(dtype=dtype, device=device).contiguous()


_cached_linear_weights = functools.lru_cache(maxsize=64)(_linear_weights_of)


def bilinear_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two matrix products.

    Bilinear interpolation is separable: ``out = A_h @ x @ A_w.T`` with the 1-d linear
    weights of each axis (:func:`_linear_weights`), equal to ``F.interpolate`` up to
    float rounding (tests/test_protocols.py). The linear probe upsamples its 1-channel
    logits from C5 (1/32 of the side) to the mask, and there torch's CPU kernel is the
    slowest part of a training step on stored features: forward + backward at batch 16,
    2 -> 64 px 800 us vs 351 us, 7 -> 224 px 7.4 ms vs 1.6 ms (2 threads of this project's
    2-core CPU machine, torch 2.14.1).
    """
    ah = _linear_weights(x.shape[-2], size[0], x.dtype, x.device)
    aw = _linear_weights(x.shape[-1], size[1], x.dtype, x.device)
    return ah @ x @ aw.T


def build_segmenter(encoder: nn.Module, arch: str, protocol: str, in_channels: int) -> ProtocolModel:
    """U-Net (frozen/finetune) or linear head (linear) around a registry ResNet's weights."""
    import segmentation_models_pytorch as smp

    unet = smp.Unet(encoder_name=arch, encoder_weights=None, in_channels=in_channels, classes=1)
    load_into(unet.encoder, encoder.state_dict())
    model = LinearSegmenter(unet.encoder) if protocol == "linear" else unet
    return ProtocolModel(model, protocol)


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


class SegmentationHead:
    """The ``"mask"`` output: U-Net or linear probe, BCE + Dice, per-image Dice metrics."""

    kind = "mask"
    collate = None

    def __init__(self, cfg, winfo: dict, device: torch.device):
        self.cfg, self.device = cfg, device
        self.channels = winfo["in_channels"]
        self.normalize = Normalize(winfo["mean"], winfo["std"], self.channels)
        self.loss_step = make_loss_step(self.normalize, nhwc(device))

    def build(self, encoder: nn.Module) -> ProtocolModel:
        return build_segmenter(encoder, self.cfg.arch, self.cfg.protocol, self.channels)

    def dataset(self, prepared, indices) -> SegmentationDataset:
        if prepared.masks is None:
            raise ValueError(f"{prepared.task} data has no masks for segmentation")
        return SegmentationDataset(prepared.images, prepared.masks, indices)

    def diagnostics(self, prepared, train_idx) -> dict:
        return {}  # nothing to check before training a mask head

    def predict(self, model: nn.Module, loader):
        """Yield (cache indices, probabilities (N, H, W) on CPU, target masks)."""
        return predict_probs(model, loader, self.normalize, self.device)

    def evaluator(self, ids: list[str]):
        return make_evaluate(self.normalize, self.device, ids)

    def examples(self, model: nn.Module, prepared, idx: list[int]) -> dict:
        images = torch.from_numpy(np.stack([np.asarray(prepared.images[i]) for i in idx]))
        masks = torch.from_numpy(np.stack([np.asarray(prepared.masks[i]) for i in idx]))
        _, probs, _ = next(self.predict(model, [(images, masks, torch.as_tensor(idx))]))
        return {
            "kind": np.array("segmentation"),
            "ids": np.array([prepared.ids[i] for i in idx]),
            "images": images.numpy(),
            "targets": masks.numpy(),
            "predictions": (probs.numpy() > THRESHOLD).astype(np.uint8),
        }

    @staticmethod
    def to_original(probs: torch.Tensor, orig_size: tuple[int, int], image_size: int) -> np.ndarray:
        """Probabilities at the cache size -> bool mask at the original (height, width)."""
        full = F.interpolate(probs[None, None], size=tuple(orig_size), mode="bilinear", align_corners=False)
        return (full[0, 0] > THRESHOLD).numpy()

    @staticmethod
    def new_metrics(spec) -> SegMetrics:
        return SegMetrics()

    @staticmethod
    def empty(entry: dict) -> np.ndarray:
        return np.zeros((entry["height"], entry["width"]), dtype=bool)
