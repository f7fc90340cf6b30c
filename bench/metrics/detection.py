"""Detection metrics of design §6: COCO-style mAP (pycocotools) and the IoU-sweep image score.

Owns the box conventions and :class:`DetMetrics`, a per-image accumulator:

- boxes are ``[x1, y1, x2, y2]`` float pixels here; Kaggle files use ``x y w h``
  (:func:`xywh_to_xyxy`, :func:`xyxy_to_xywh` convert);
- every image added counts, with or without target boxes, with or without
  predictions, so false positives on negative images lower the scores (MGCA skips
  images without targets, which inflates mAP: design §8.3);
- an image id can be added once; batch order does not change any number.

``map`` is COCO AP averaged over IoU 0.40:0.05:0.75 with 101 recall points, computed by
pycocotools over all images, one category, area range "all", at most ``max_dets``
detections per image (the highest scoring). ``map50`` and ``map75`` are read from the
same evaluation at IoU 0.50 and 0.75. A prediction matches a target there when IoU
>= t (pycocotools' convention). Special cases: no target box in the whole set makes AP
undefined (``None``); target boxes but no prediction at all gives 0.0.

``iou_sweep_score`` (:data:`IOU_SWEEP_SCORE`) is the mean over scored images of
:func:`iou_sweep_image_score`: per image, TP/(TP+FP+FN) averaged over the same IoU
thresholds (IoU > t), counting every prediction at or above a confidence threshold
``min_score``, no ``max_dets`` cut; ``None`` when no image is scored. A task reports it
under its own name and ``min_score`` (``tasks.registry.TaskSpec.metric_defs``); the
accumulator computes one per entry of its ``iou_sweep`` argument.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch

IOU_THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
RECALL_POINTS = 101
MAX_DETS = 100
_AREA_ALL = [0.0, 1e5**2]  # pycocotools' "all" area range
IOU_SWEEP_SCORE = "iou_sweep_score"
# the keys of DetMetrics.compute() besides the IoU-sweep scores
_FIXED_KEYS = ("map", "map50", "map75", "n_images", "n_positive_images", "n_gt_boxes",
               "n_pred_boxes")  # fmt: skip


def xywh_to_xyxy(boxes) -> np.ndarray:
    """(K,4) ``x y w h`` -> (K,4) ``x1 y1 x2 y2`` float64."""
    b = _as_boxes(boxes).copy()
    b[:, 2:] += b[:, :2]
    return b


def xyxy_to_xywh(boxes) -> np.ndarray:
    """(K,4) ``x1 y1 x2 y2`` -> (K,4) ``x y w h`` float64."""
    b = _as_boxes(boxes).copy()
    b[:, 2:] -= b[:, :2]
    return b


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_boxes(boxes) -> np.ndarray:
    b = _as_numpy(boxes)
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {b.shape}")
    return b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes, continuous areas (no +1 pixel).

    This is the IoU of pycocotools and of Kaggle's box-detection evaluations.
    """
    a, b = _as_boxes(a), _as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_sweep_image_score(
    gt: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> float | None:
    """The IoU-sweep TP/(TP+FP+FN) score of one image, ``None`` when it is not scored.

    The exact rule (as the Kaggle evaluation page of the challenge that defined it states
    it, with its open points decided; a task names the challenge in its metric notes):

    - no target box and no prediction: the image is not scored (``None``);
    - no target box and any prediction: 0.0;
    - otherwise, for each IoU threshold t in 0.40:0.05:0.75, predictions are taken in
      order of decreasing confidence (ties keep their input order) and each one matches
      the still unmatched target box of highest IoU (ties: the first box), if that IoU
      is *strictly greater* than t ("an IoU above the threshold"). Matched predictions
      are TP, other predictions FP, unmatched targets FN, and the image scores
      TP / (TP + FP + FN) at t; the image's score is the mean over the 8 thresholds.
    """
    gt, boxes = _as_boxes(gt), _as_boxes(boxes)
    if len(gt) == 0:
        return None if len(boxes) == 0 else 0.0
    order = np.argsort(-_as_numpy(scores).reshape(-1), kind="stable")
    iou = box_iou(boxes[order], gt)
    per_threshold = [_tp_fp_fn_score(iou, t) for t in thresholds]
    return math.fsum(per_threshold) / len(per_threshold)


def _tp_fp_fn_score(iou: np.ndarray, t: float) -> float:
    """TP/(TP+FP+FN) for IoU rows = predictions in confidence order, columns = targets."""
    n_pred, n_gt = iou.shape
    free = np.ones(n_gt, dtype=bool)
    tp = 0
    for row in iou:
        candidates = np.where(free, row, -1.0)
        j = int(np.argmax(candidates)) if n_gt else -1
        if j >= 0 and candidates[j] > t:
            free[j] = False
            tp += 1
    return tp / (n_pred + n_gt - tp)  # TP + FP + FN, never 0 here since n_gt > 0


class DetMetrics:
    """Streaming detection metrics keyed by image id (design §6, §8.3).

    ``update(ids, preds, targets)``: N image ids, N prediction dicts
    ``{"boxes": (K,4) xyxy, "scores": (K,)}`` and N target dicts ``{"boxes": (M,4)}``
    (numpy or torch; other keys such as ``labels`` are ignored: one category).
    ``compute()`` returns ``map``, ``map50``, ``map75``, one IoU-sweep score per entry of
    ``iou_sweep``, ``n_images``, ``n_positive_images``, ``n_gt_boxes``, ``n_pred_boxes``.

    ``iou_sweep``: ``{key: min_score}``, the IoU-sweep scores to compute, each under its
    key, counting only predictions scoring at least ``min_score`` (a thresholded
    submission; mAP needs every score); default one ``iou_sweep_score`` counting every
    prediction.
    """

    def __init__(self, max_dets: int = MAX_DETS, iou_sweep: Mapping[str, float] | None = None):
        self.max_dets = max_dets
        sweep = {IOU_SWEEP_SCORE: 0.0} if iou_sweep is None else iou_sweep
        self.iou_sweep = {str(name): float(t) for name, t in sweep.items()}
        clash = sorted(set(self.iou_sweep) & set(_FIXED_KEYS))
        if clash:
            raise ValueError(f"IoU-sweep score name(s) {clash} clash with DetMetrics' own keys")
        for name, t in self.iou_sweep.items():
            if not math.isfinite(t):
                raise ValueError(f"{name}: min_score must be finite, got {t!r}")
        self._images: dict[Hashable, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._images)

    def reset(self) -> None:
        self._images = {}

    def update(self, ids: Iterable[Hashable], preds: Sequence[dict], targets: Sequence[dict]):
        ids = ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else list(ids)
        if not len(ids) == len(preds) == len(targets):
            raise ValueError(f"{len(ids)} ids, {len(preds)} predictions, {len(targets)} targets")
        seen = set(self._images)
        for i in ids:
            if i in seen:
                raise ValueError(f"image id {i!r} seen twice, each image must count once")
            seen.add(i)
        for i, p, t in zip(ids, preds, targets):
            self._images[i] = _image_entry(p, t)

    add = update  # the accumulator interface of every head: add(ids, predictions, targets)

    def compute(self) -> dict:
        """Metrics over every image added so far (plain Python numbers, JSON-ready)."""
        if not self._images:
            raise ValueError("DetMetrics.compute() called before any image was added")
        n_gt = sum(len(g) for g, _, _ in self._images.values())
        n_pred = sum(len(b) for _, b, _ in self._images.values())
        return {
            **self._coco_ap(n_gt, n_pred),
            **{name: self._iou_sweep_score(t) for name, t in self.iou_sweep.items()},
            "n_images": len(self._images),
            "n_positive_images": sum(len(g) > 0 for g, _, _ in self._images.values()),
            "n_gt_boxes": n_gt,
            "n_pred_boxes": n_pred,
        }

    def per_image_iou_sweep(self, min_score: float = 0.0) -> dict[Hashable, float | None]:
        """{image id: IoU-sweep score of the predictions scoring >= ``min_score``, None
        where the image is not scored}, in insertion order."""
        out = {}
        for i, (gt, boxes, scores) in self._images.items():
            keep = scores >= min_score
            out[i] = iou_sweep_image_score(gt, boxes[keep], scores[keep])
        return out

    def _iou_sweep_score(self, min_score: float) -> float | None:
        # math.fsum is correctly rounded, so the order of the images does not matter
        scored = [s for s in self.per_image_iou_sweep(min_score).values() if s is not None]
        return math.fsum(scored) / len(scored) if scored else None

    def _sorted_ids(self) -> list[Hashable]:
        """A canonical image order, so nothing depends on the order images were added."""
        return sorted(self._images, key=lambda i: (str(i), type(i).__name__))

    def _coco_ap(self, n_gt: int, n_pred: int) -> dict:
        if n_gt == 0:
            return {"map": None, "map50": None, "map75": None}  # no positives: AP undefined
        if n_pred == 0:
            return {"map": 0.0, "map50": 0.0, "map75": 0.0}  # precision 0 at every recall level
        precision = self._coco_precision()  # (T, R)
        return {
            "map": float(precision.mean()),
            "map50": float(precision[IOU_THRESHOLDS.index(0.5)].mean()),
            "map75": float(precision[IOU_THRESHOLDS.index(0.75)].mean()),
        }

    def _coco_precision(self) -> np.ndarray:
        """pycocotools' interpolated precision, shape (IoU thresholds, recall points)."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gt_data, dt_data = self._coco_datasets()
        with contextlib.redirect_stdout(io.StringIO()):
            gt, dt = COCO(), COCO()
            gt.dataset, dt.dataset = gt_data, dt_data
            gt.createIndex()
            dt.createIndex()
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.params.imgIds = [im["id"] for im in gt_data["images"]]  # negatives included
            ev.params.catIds = [1]
            ev.params.iouThrs = np.array(IOU_THRESHOLDS, dtype=np.float64)
            ev.params.recThrs = np.linspace(0.0, 1.0, RECALL_POINTS)
            ev.params.maxDets = [self.max_dets]
            ev.params.areaRng = [_AREA_ALL]
            ev.params.areaRngLbl = ["all"]
            ev.evaluate()
            ev.accumulate()
        precision = ev.eval["precision"][:, :, 0, 0, 0]  # T, R, category, area, maxDets
        if (precision < 0).any():
            raise RuntimeError("pycocotools returned undefined precision with target boxes present")
        return precision

    def _coco_datasets(self) -> tuple[dict, dict]:
        """In-memory COCO gt and detection datasets; image ids 1..N in canonical order."""
        images, gt_anns, dt_anns = [], [], []
        for image_id, key in enumerate(self._sorted_ids(), start=1):
            images.append({"id": image_id})
            gt, boxes, scores = self._images[key]
            for b in xyxy_to_xywh(gt).tolist():
                gt_anns.append(_annotation(len(gt_anns) + 1, image_id, b))
            for b, s in zip(xyxy_to_xywh(boxes).tolist(), scores.tolist()):
                dt_anns.append({**_annotation(len(dt_anns) + 1, image_id, b), "score": s})
        categories = [{"id": 1, "name": "object"}]
        return (
            {"images": images, "annotations": gt_anns, "categories": categories},
            {"images": images, "annotations": dt_anns, "categories": categories},
        )


def _annotation(ann_id: int, image_id: int, xywh: list[float]) -> dict:
    # annotation ids start at 1: pycocotools treats id 0 as "unmatched"
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": xywh,
        "area": xywh[2] * xywh[3],
        "iscrowd": 0,
    }


def _image_entry(pred: dict, target: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target boxes, predicted boxes sorted by decreasing score, sorted scores)."""
    gt = _checked_xyxy(target["boxes"], "target")
    boxes = _checked_xyxy(pred["boxes"], "predicted")
    scores = _as_numpy(pred["scores"]).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} predicted boxes but {len(scores)} scores")
    if not np.isfinite(scores).all():
        raise ValueError("prediction scores must be finite")
    order = np.argsort(-scores, kind="stable")
    return gt, boxes[order], scores[order]


def _checked_xyxy(boxes, what: str) -> np.ndarray:
    b = _as_boxes(boxes)
    if not np.isfinite(b).all():
        raise ValueError(f"{what} boxes must be finite")
    if (b[:, 2:] < b[:, :2]).any():
        raise ValueError(f"{what} boxes must be x1 y1 x2 y2 with x1 <= x2 and y1 <= y2")
    return b
