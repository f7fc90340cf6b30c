"""Detection: the boxes head, the detector around a registry ResNet, its protocol, loss, metrics.

Owns :class:`DetectionHead` (the ``"boxes"`` output kind of :mod:`bench.models.heads`)
and, for detection tasks (design §5, §6):

- :func:`build_detector`: a torchvision ``RetinaNet`` (default) or ``FasterRCNN`` whose
  backbone body *is* the registry ResNet (its modules are reused, not copied) under an
  FPN. The body keeps the encoder's own ``nn.BatchNorm2d`` (never torchvision's
  ``FrozenBatchNorm2d``) and the protocol alone decides what trains:
  ``frozen`` = body without gradients and with BatchNorm in eval mode (via
  :class:`bench.models.ProtocolModel`), FPN and heads train; ``finetune`` = everything
  trains. ``linear`` is not a detection protocol (a detection task's ``linear``
  trains a mask output, e.g. of its box masks, design §5).
- :func:`make_loss_step`, :func:`make_evaluate`, :func:`predict`,
  :func:`detection_collate` for :func:`bench.train.fit`; :func:`iou_sweep_metrics`
  (a task's IoU-sweep scores, ``TaskSpec.metric_defs``).

Choices, all documented in code below:

- Classes: one foreground class, label ``FOREGROUND_LABEL = 1``, ``num_classes=2`` for
  both detectors. For Faster R-CNN index 0 is the background; RetinaNet has no
  background class, so its class 0 is a never-positive extra logit (the convention of
  torchvision's COCO RetinaNet, whose 91 classes include the unused 0). Predictions
  with another label are dropped before scoring.
- Input: float images in [0, 1], C channels; the detector's internal transform
  normalizes with the initialization's mean/std and keeps the size
  (``min_size = max_size = image_size``), so it never resizes the cached images.
- Anchors: torchvision's defaults, tied to the FPN strides (4x the stride of their
  level): RetinaNet 3 scales (x, x 2^(1/3), x 2^(2/3)) for x in (32, 64, 128, 256, 512)
  px on P3-P7, Faster R-CNN one size per level on P2-P6; aspect ratios 0.5, 1, 2. They
  are *not* scaled with the image size: the strides are not, and anchors smaller than
  their stride leave most boxes without an anchor to learn from. Measured on the
  synthetic RSNA boxes (the 87 boxes of the built-in set, ~0.2 of the image side), the
  share of boxes with some RetinaNet anchor at IoU >= 0.5 (its positive threshold) with
  these anchors vs anchors scaled by ``image_size / 1024``: 0.75 vs 0.17 at 128 px,
  1.00 vs 0.49 at 256 px, 1.00 vs 1.00 at 512 px; at 64 px neither has any (boxes of
  ~12 px under a 32 px smallest anchor).
  ``tests/test_detection.py`` checks the relation at 128 and 256 px. Every run records
  that share for its training boxes (:func:`anchor_coverage`, the record's
  ``anchor_coverage``) and warns below :data:`COVERAGE_WARN`.
- Inference keeps every box scoring >= 0.05 and at most 100 per image (COCO's
  ``maxDets``), as mAP needs the low-confidence tail; an IoU-sweep score only counts
  the boxes scoring at least the ``min_score`` its task declares
  (:func:`iou_sweep_metrics`), as a thresholded submission would.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from bench.metrics.detection import IOU_SWEEP_SCORE, DetMetrics
from bench.models.datasets import DetectionDataset
from bench.models.device import autocast
from bench.models.protocols import ProtocolModel

DETECTORS = ("retinanet", "fasterrcnn")
DETECTION_PROTOCOLS = ("frozen", "finetune")
FOREGROUND_LABEL = 1
NUM_CLASSES = 2  # background/unused + the one foreground class
SCORE_THRESH = 0.05
DETECTIONS_PER_IMAGE = 100
FPN_CHANNELS = 256
ANCHOR_BASE = (32, 64, 128, 256, 512)  # px on P3..P7 (P2..P6): torchvision's defaults, never scaled
ASPECT_RATIOS = (0.5, 1.0, 2.0)
LEVEL_STRIDES = {"retinanet": (8, 16, 32, 64, 128), "fasterrcnn": (4, 8, 16, 32, 64)}  # P3-P7 / P2-P6
POSITIVE_IOU = 0.5  # RetinaNet's foreground threshold (Faster R-CNN's RPN: 0.7)
COVERAGE_WARN = 0.5  # warn when fewer training boxes than this have an anchor at POSITIVE_IOU


class DetectionModel(ProtocolModel):
    """A torchvision detector whose backbone body (the registry ResNet) follows the protocol.

    ``forward(images, targets=None)`` is the detector's: a loss dict in train mode, a
    list of ``{"boxes", "scores", "labels"}`` in eval mode.
    """

    def __init__(self, detector: nn.Module, protocol: str, in_channels: int):
        super().__init__(detector, protocol)
        self.in_channels = in_channels

    @property
    def encoder(self) -> nn.Module:
        return self.model.backbone.body


def resnet_stage_channels(encoder: ResNet) -> list[int]:
    """Output channels of layer1..layer4 (64..512 for BasicBlock, 256..2048 for Bottleneck)."""
    c5 = encoder.inplanes  # torchvision leaves it at layer4's output channels
    return [c5 // 8, c5 // 4, c5 // 2, c5]


def _check_arch(encoder: ResNet, arch: str) -> None:
    expected = 512 if arch in ("resnet18", "resnet34") else 2048
    c5 = resnet_stage_channels(encoder)[-1]
    if c5 != expected:
        raise ValueError(f"--arch {arch} expects {expected} C5 channels, the encoder has {c5}")


def anchor_generator(detector: str, image_size: int) -> AnchorGenerator:
    """torchvision's default anchors, whatever ``image_size`` (see the module docstring)."""
    if detector == "retinanet":
        sizes = tuple(tuple(x * 2 ** (k / 3) for k in range(3)) for x in ANCHOR_BASE)
    else:
        sizes = tuple((x,) for x in ANCHOR_BASE)
    return AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes))


def anchor_coverage(detector: str, image_size: int, boxes, generator: AnchorGenerator | None = None) -> float | None:
    """Share of ``boxes`` (xyxy at ``image_size``) with some anchor at IoU >= ``POSITIVE_IOU``.

    The anchors are the ones the detector places (``generator``, default the detector's
    :func:`anchor_generator`, on feature maps of the FPN levels' sizes). A box without
    such an anchor is learned only through a low-quality match, so a low share means the
    detector can hardly learn at this image size. None when there is no box. The IoU
    matrix is built a chunk of boxes at a time (~200k anchors at 1024 px).
    """
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    if not len(boxes):
        return None
    images = ImageList(torch.zeros(1, 1, image_size, image_size), [(image_size, image_size)])
    maps = [torch.zeros(1, 1, -(-image_size // s), -(-image_size // s)) for s in LEVEL_STRIDES[detector]]
    (anchors,) = (generator or anchor_generator(detector, image_size))(images, maps)
    best = torch.cat([box_iou(chunk, anchors).max(dim=1).values for chunk in boxes.split(256)])
    return float((best >= POSITIVE_IOU).float().mean())


def fpn_backbone(encoder: ResNet, detector: str) -> BackboneWithFPN:
    """FPN over the encoder's own modules; the FPN itself has no normalization layer.

    RetinaNet: C3-C5 plus P6/P7 from P5 (torchvision's ``retinanet_resnet50_fpn``);
    Faster R-CNN: C2-C5 plus a max-pooled P6. ``requires_grad`` is left alone here
    (torchvision's ``_resnet_fpn_extractor`` would freeze layers by itself).
    """
    layers = [2, 3, 4] if detector == "retinanet" else [1, 2, 3, 4]
    channels = resnet_stage_channels(encoder)
    if detector == "retinanet":
        extra = LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS)
    else:
        extra = LastLevelMaxPool()
    return BackboneWithFPN(
        encoder,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(layers)},
        in_channels_list=[channels[k - 1] for k in layers],
        out_channels=FPN_CHANNELS,
        extra_blocks=extra,
    )


def build_detector(
    encoder: ResNet,
    arch: str,
    protocol: str,
    in_channels: int,
    mean: list[float],
    std: list[float],
    detector: str = "retinanet",
    image_size: int = 512,
    num_classes: int = NUM_CLASSES,
) -> DetectionModel:
    """A RetinaNet or Faster R-CNN on the registry ResNet ``encoder``, under ``protocol``."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}, choose from {DETECTORS}")
    if protocol not in DETECTION_PROTOCOLS:
        raise ValueError(
            f"protocol {protocol!r} is not a detection protocol {DETECTION_PROTOCOLS} "
            "(a task's 'linear' protocol trains a mask output, e.g. of its box masks, design §5)"
        )
    if encoder.conv1.in_channels != in_channels or not len(mean) == len(std) == in_channels:
        raise ValueError(
            f"{in_channels} channels asked for, encoder takes {encoder.conv1.in_channels}, "
            f"normalization has {len(mean)} means and {len(std)} stds"
        )
    _check_arch(encoder, arch)
    for p in encoder.parameters():
        p.requires_grad_(True)  # ProtocolModel freezes the body when the protocol says so
    common = {
        "min_size": image_size,
        "max_size": image_size,
        "image_mean": list(mean),
        "image_std": list(std),
    }
    backbone = fpn_backbone(encoder, detector)
    anchors = anchor_generator(detector, image_size)
    if detector == "retinanet":
        model = RetinaNet(
            backbone,
            num_classes,
            anchor_generator=anchors,
            score_thresh=SCORE_THRESH,
            detections_per_img=DETECTIONS_PER_IMAGE,
            **common,
        )
    else:
        model = FasterRCNN(
            backbone,
            num_classes,
            rpn_anchor_generator=anchors,
            box_score_thresh=SCORE_THRESH,
            box_detections_per_img=DETECTIONS_PER_IMAGE,
            **common,
        )
    return DetectionModel(model, protocol, in_channels)


def to_inputs(images: torch.Tensor, channels: int, device: torch.device) -> list[torch.Tensor]:
    """uint8 (N,H,W) -> list of N float (C,H,W) images in [0, 1] on ``device``."""
    x = images.to(device, non_blocking=True).float().div_(255.0).unsqueeze(1)
    return list(x.expand(-1, channels, -1, -1))


def to_targets(targets: list[dict], device: torch.device) -> list[dict]:
    """Boxes (M,4) xyxy float32 on ``device``, every label the foreground class."""
    out = []
    for t in targets:
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        labels = torch.full((len(boxes),), FOREGROUND_LABEL, dtype=torch.int64, device=device)
        out.append({"boxes": boxes, "labels": labels})
    return out


def make_loss_step(channels: int):
    """``loss_step(model, batch, device)``: the sum of the detector's losses."""

    def loss_step(model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        images, targets, _ = batch
        losses = model(to_inputs(images, channels, device), to_targets(targets, device))
        return torch.stack([v.float() for v in losses.values()]).sum()

    return loss_step


def _foreground(output: dict) -> dict:
    keep = output["labels"] == FOREGROUND_LABEL
    return {
        "boxes": output["boxes"][keep].float().cpu(),
        "scores": output["scores"][keep].float().cpu(),
    }


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, channels: int | None = None):
    """Yield (dataset indices, predictions ``{"boxes", "scores"}`` on CPU, targets) per batch."""
    model.eval()
    channels = channels or model.in_channels
    for images, targets, idx in loader:
        with autocast(device):
            outputs = model(to_inputs(images, channels, device))
        yield idx.tolist(), [_foreground(o) for o in outputs], targets


def iou_sweep_metrics(spec) -> dict[str, float]:
    """``{metric: min_score}`` of the task's boxes metrics that are IoU-sweep scores: each
    ``TaskSpec.metric_defs`` entry of generic metric ``iou_sweep_score`` (its ``min_score``,
    default 0), and a metric named ``iou_sweep_score`` itself (min_score 0)."""
    out = {}
    for name in spec.metrics.get("boxes", ()):
        d = spec.metric_defs.get(name)
        metric, params = (d.metric, dict(d.params)) if d else (name, {})
        if metric != IOU_SWEEP_SCORE:
            if d:
                raise ValueError(f"task {spec.name!r}: metric {name!r} is {metric!r}, which the "
                                 f"boxes head does not compute (it has {IOU_SWEEP_SCORE!r})")  # fmt: skip
            continue
        unknown = sorted(set(params) - {"min_score"})
        if unknown:
            raise ValueError(
                f"task {spec.name!r}: metric {name!r}: unknown {metric} setting(s) {unknown}"
            )
        out[name] = float(params.get("min_score", 0.0))
    return out


def make_evaluate(
    device: torch.device,
    ids: list,
    channels: int | None = None,
    iou_sweep: dict[str, float] | None = None,
):
    """Return ``evaluate(model, loader) -> DetMetrics.compute()``, each image scored once.

    ``ids[i]`` is the image id of dataset index ``i``; ``channels`` defaults to the
    model's ``in_channels``; ``iou_sweep`` is ``DetMetrics``' (``{metric: min_score}``,
    default one ``iou_sweep_score`` counting every box).
    """

    def evaluate(model: nn.Module, loader) -> dict:
        metrics = DetMetrics(max_dets=DETECTIONS_PER_IMAGE, iou_sweep=iou_sweep)
        for idx, preds, targets in predict(model, loader, device, channels):
            metrics.update([ids[i] for i in idx], preds, targets)
        return metrics.compute()

    return evaluate


def detection_collate(batch):
    """[(uint8 HxW, {"boxes": (M,4)}, index)] -> (uint8 (N,H,W), [targets], int64 (N,))."""
    images, targets, indices = zip(*batch)
    targets = [
        {"boxes": torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)} for t in targets
    ]
    return torch.stack(list(images)), targets, torch.as_tensor(indices, dtype=torch.int64)


class DetectionHead:
    """The ``"boxes"`` output: RetinaNet or Faster R-CNN, the detector's losses, COCO mAP."""

    kind = "boxes"
    collate = staticmethod(detection_collate)
    EXAMPLE_MIN_SCORE = 0.3  # boxes drawn in the report's example figure

    def __init__(self, cfg, winfo: dict, device: torch.device):
        self.cfg, self.device, self.winfo = cfg, device, winfo
        self.channels = winfo["in_channels"]
        self.loss_step = make_loss_step(self.channels)

    def build(self, encoder: ResNet) -> DetectionModel:
        c = self.cfg
        return build_detector(encoder, c.arch, c.protocol, self.channels, self.winfo["mean"],
                              self.winfo["std"], detector=c.detector, image_size=c.image_size)  # fmt: skip

    def dataset(self, prepared, indices) -> DetectionDataset:
        if getattr(prepared, "boxes", None) is None:
            raise ValueError(f"{prepared.task} data has no boxes for detection")
        return DetectionDataset(prepared.images, prepared.boxes, indices)

    def diagnostics(self, prepared, train_idx) -> dict:
        """``{"anchor_coverage": ...}`` for the record: how many training boxes the anchors
        can learn from (:func:`anchor_coverage`); a warning when it is low."""
        import warnings

        c = self.cfg
        boxes = [np.asarray(prepared.boxes[i], dtype=np.float32).reshape(-1, 4) for i in train_idx]
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        share = anchor_coverage(c.detector, c.image_size, boxes)
        if share is not None and share < COVERAGE_WARN:
            side = np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
            warnings.warn(
                f"only {share:.0%} of the {len(boxes)} training boxes have a {c.detector} anchor at "
                f"IoU >= {POSITIVE_IOU} at --image-size {c.image_size} (median box side {side:.0f} px, "
                f"smallest anchor {ANCHOR_BASE[0]} px): the detector can hardly learn; raise "
                "--image-size", stacklevel=2)  # fmt: skip
        return {"anchor_coverage": {"share": share, "boxes": len(boxes), "iou": POSITIVE_IOU}}

    def predict(self, model: nn.Module, loader):
        """Yield (cache indices, [{"boxes", "scores"}] on CPU, targets)."""
        return predict(model, loader, self.device, self.channels)

    def evaluator(self, ids: list):
        return make_evaluate(self.device, ids, self.channels, iou_sweep_metrics(self.cfg.spec))

    def examples(self, model: nn.Module, prepared, idx: list[int]) -> dict:
        images = torch.from_numpy(np.stack([np.asarray(prepared.images[i]) for i in idx]))
        targets = [{"boxes": torch.as_tensor(np.asarray(prepared.boxes[i]).reshape(-1, 4))} for i in idx]
        _, preds, _ = next(self.predict(model, [(images, targets, torch.as_tensor(idx))]))
        keep = [p["scores"] >= self.EXAMPLE_MIN_SCORE for p in preds]
        boxes = [
            {
                "target": np.asarray(prepared.boxes[i]).reshape(-1, 4).tolist(),
                "pred": p["boxes"][k].tolist(),
                "scores": p["scores"][k].tolist(),
            }
            for i, p, k in zip(idx, preds, keep)
        ]
        return {
            "kind": np.array("detection"),
            "ids": np.array([prepared.ids[i] for i in idx]),
            "images": images.numpy(),
            "boxes": np.array(json.dumps(boxes)),
        }

    @staticmethod
    def to_original(pred: dict, orig_size: tuple[int, int], image_size: int) -> dict:
        """Boxes at the cache size -> xyxy in the original image's pixels (x by width, y by height)."""
        h, w = orig_size
        scale = np.array([w, h, w, h], dtype=np.float64) / image_size
        boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4) * scale
        return {"boxes": boxes, "scores": np.asarray(pred["scores"], dtype=np.float64)}

    @staticmethod
    def new_metrics(spec) -> DetMetrics:
        """The task's metrics for a submission file: its boxes are scored as written (no
        ``min_score`` cut: the submission's author thresholded them, as on Kaggle)."""
        return DetMetrics(iou_sweep=dict.fromkeys(iou_sweep_metrics(spec), 0.0))

    @staticmethod
    def empty(entry: dict) -> dict:
        return {"boxes": np.zeros((0, 4)), "scores": np.zeros((0,))}
