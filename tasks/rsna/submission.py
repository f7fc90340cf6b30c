"""RSNA Pneumonia's submission file: ``patientId,PredictionString``, one row per image.

Owns: :func:`parse_prediction_string` (Kaggle's ``conf x y w h ...`` -> xyxy boxes and
scores, every value checked) and the three functions of the task's
:class:`~tasks.registry.SubmissionFormat`: :func:`check_row`, :func:`parse_rows` and
:func:`format_boxes`.
"""

from __future__ import annotations

import numpy as np

from tasks.errors import DataError


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


def check_row(text: str, where: str) -> None:
    """Syntax check of one submission row's PredictionString."""
    parse_prediction_string(text, where)


def parse_rows(rows, entry: dict, where: str) -> dict:
    """The one PredictionString row of a patientId -> boxes (xyxy) and scores."""
    if len(rows) > 1:
        raise DataError(
            f"{where}, line {rows[1][0]}: patientId listed twice (put all boxes in one PredictionString)"
        )
    boxes, scores = parse_prediction_string(rows[0][1], f"{where}, line {rows[0][0]}")
    return {"boxes": boxes, "scores": scores}


def format_boxes(pred: dict) -> str:
    """Boxes xyxy + scores in original pixels -> "conf x y w h conf x y w h ..."."""
    parts = []
    for (x1, y1, x2, y2), score in zip(np.asarray(pred["boxes"]).tolist(), np.asarray(pred["scores"]).tolist()):
        parts.append(f"{score:.4f} {x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f}")
    return " ".join(parts)
