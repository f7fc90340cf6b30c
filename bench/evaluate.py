"""`bench evaluate`: score a Kaggle-format submission file with the benchmark's metrics.

Scoring happens at each image's original resolution (read from the DICOM headers,
1024x1024 for the Kaggle data), on the same deterministic split as training runs
(or an external split file), with exactly the metrics of design §6. Predictions
for ids the dataset does not have are an error; images of the chosen split without
a prediction are scored as empty predictions and counted, so a partial submission
cannot look better than it is.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from tasks.common import DataError


def _read_submission(path: Path, id_col: str, value_col: str) -> list[tuple[int, str, str]]:
    """[(line number, id, value)] from a submission CSV; header names are stripped."""
    if not path.is_file():
        raise DataError(f"{path}: predictions file not found")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty file, expected header {id_col},{value_col}") from None
        if id_col not in header or value_col not in header:
            raise DataError(f"{path}: expected columns {id_col},{value_col}; found {header}")
        i, j = header.index(id_col), header.index(value_col)
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) <= max(i, j):
                raise DataError(f"{path}, line {line}: expected {len(header)} fields, got {row}")
            rows.append((line, row[i].strip(), row[j]))
    return rows


def _select(splits: dict[str, str], split: str) -> set[str]:
    return set(splits) if split == "all" else {i for i, s in splits.items() if s == split}


def evaluate_siim(root, predictions, split="test", split_file=None, rle_format=None) -> dict:
    from bench.metrics import SegMetrics
    from tasks import siim

    gt = siim.load_ground_truth(root, rle_format, progress=sys.stderr.isatty())
    fmt = next(iter(gt.values()))["rle_format"] if gt else (rle_format or "relative")
    splits = siim.ground_truth_splits(gt, split_file)
    selected = _select(splits, split)
    pred_rows: dict[str, list[str]] = {}
    path = Path(predictions)
    for line, image_id, rle in _read_submission(path, "ImageId", "EncodedPixels"):
        pred_rows.setdefault(image_id, []).append((line, rle))
    unknown = sorted(set(pred_rows) - set(gt))
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} ImageId(s) are not in the dataset at {root}: {unknown[:10]}"
        )
    metrics = SegMetrics()
    missing = 0
    for image_id in sorted(selected):
        entry = gt[image_id]
        h, w = entry["height"], entry["width"]
        pred = np.zeros((h, w), dtype=bool)
        rows = pred_rows.get(image_id)
        if rows is None:
            missing += 1
        for line, rle in rows or []:
            try:
                pred |= siim.rle_decode(rle, h, w, fmt).astype(bool)
            except ValueError as e:
                raise DataError(f"{path}, line {line}, ImageId {image_id}: {e}") from None
        target = siim.ground_truth_mask(entry).astype(bool)
        metrics.update(pred[None], target[None], [image_id])
    if missing:
        print(
            f"warning: {missing} of {len(selected)} {split} image(s) have no prediction; "
            "scored as empty masks",
            file=sys.stderr,
        )
    result = metrics.compute() if len(metrics) else {}
    return {
        "task": "siim",
        "split": split,
        "split_source": str(split_file) if split_file else "cxrbench-hash-v1 70/15/15 by patient",
        "resolution": "original",
        "rle_format": fmt,
        "metrics": result,
        "n_scored": len(selected),
        "missing_predictions": missing,
        "predictions_outside_split": len(set(pred_rows) - selected),
    }


def parse_prediction_string(text: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Kaggle RSNA "conf x y w h conf x y w h ..." -> (boxes xyxy (K,4), scores (K,))."""
    values = text.split()
    if len(values) % 5:
        raise DataError(f"{where}: PredictionString has {len(values)} numbers, expected groups of 5 "
                        "(conf x y w h)")
    try:
        arr = np.asarray([float(v) for v in values], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise DataError(f"{where}: PredictionString has a non-numeric value: {text[:80]!r}") from None
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: PredictionString has NaN or infinite values")
    conf, x, y, w, h = arr.T
    if ((conf < 0) | (conf > 1)).any():
        raise DataError(f"{where}: confidence outside [0, 1]: {conf[(conf < 0) | (conf > 1)][:5].tolist()}")
    if ((w <= 0) | (h <= 0)).any():
        raise DataError(f"{where}: box with non-positive width or height")
    return np.stack([x, y, x + w, y + h], axis=1), conf


def evaluate_rsna(root, predictions, split="test", split_file=None) -> dict:
    from bench.detmetrics import DetMetrics
    from tasks import rsna

    gt = rsna.load_ground_truth(root, progress=sys.stderr.isatty())
    splits = rsna.ground_truth_splits(gt, split_file)
    selected = _select(splits, split)
    path = Path(predictions)
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for line, pid, text in _read_submission(path, "patientId", "PredictionString"):
        where = f"{path}, line {line}, patientId {pid}"
        if pid in preds:
            raise DataError(f"{where}: patientId listed twice (put all boxes in one PredictionString)")
        preds[pid] = parse_prediction_string(text, where)
    unknown = sorted(set(preds) - set(gt))
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} patientId(s) are not in the dataset at {root}: {unknown[:10]}"
        )
    metrics = DetMetrics()
    missing = 0
    empty = np.zeros((0, 4)), np.zeros((0,))
    for pid in sorted(selected):
        if pid not in preds:
            missing += 1
        boxes, scores = preds.get(pid, empty)
        metrics.update([pid], [{"boxes": boxes, "scores": scores}], [{"boxes": gt[pid]["boxes"]}])
    if missing:
        print(
            f"warning: {missing} of {len(selected)} {split} image(s) have no prediction row; "
            "scored as no boxes",
            file=sys.stderr,
        )
    return {
        "task": "rsna",
        "split": split,
        "split_source": str(split_file) if split_file else "cxrbench-hash-v1 70/15/15 by patient",
        "resolution": "original",
        "metrics": metrics.compute() if len(metrics) else {},
        "n_scored": len(selected),
        "missing_predictions": missing,
        "predictions_outside_split": len(set(preds) - selected),
    }


def evaluate_submission(task, data_root, predictions, split="test", split_file=None, rle_format=None) -> dict:
    if task == "siim":
        return evaluate_siim(data_root, predictions, split, split_file, rle_format)
    if task == "rsna":
        return evaluate_rsna(data_root, predictions, split, split_file)
    raise ValueError(f"unknown task {task!r}")
