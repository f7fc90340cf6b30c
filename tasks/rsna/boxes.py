"""RSNA Pneumonia's boxes: clipped to their image, drawn as masks, and reported.

Owns: :func:`clip_boxes` (CSV x, y, width, height -> xyxy inside the image, with every
clipped or dropped box listed), :func:`boxes_to_mask` (filled boxes as the ``linear``
protocol's target) and :func:`warn_boxes` (clipping is always reported, never silent).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from tasks.rsna.labels import BoxRow


def clip_boxes(
    patient_id: str, rows: list[BoxRow], height: int, width: int
) -> tuple[np.ndarray, list[dict], list[dict]]:
    """CSV boxes of one image -> (xyxy float64 (M, 4) clipped to the image, clipped, dropped).

    A box reaching past the image (x < 0, y < 0, x + width > width of the image or
    y + height > its height) is clipped and listed in `clipped` ({"patientId", "line",
    "box_xywh", "clipped_xywh", "image_hw"}); one with no area left inside the image is
    left out and listed in `dropped` ({"patientId", "line", "box_xywh", "image_hw"}).
    """
    boxes, clipped, dropped = [], [], []
    for line, x, y, w, h in rows:
        x1, y1, x2, y2 = x, y, x + w, y + h
        c = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
        record = {
            "patientId": patient_id,
            "line": line,
            "box_xywh": [x, y, w, h],
        }
        if c[2] <= c[0] or c[3] <= c[1]:
            dropped.append({**record, "image_hw": [height, width]})
            continue
        if c != (x1, y1, x2, y2):
            clipped.append(
                {
                    **record,
                    "clipped_xywh": [c[0], c[1], c[2] - c[0], c[3] - c[1]],
                    "image_hw": [height, width],
                }
            )
        boxes.append(c)
    return np.asarray(boxes, np.float64).reshape(-1, 4), clipped, dropped


def boxes_to_mask(boxes, height: int, width: int) -> np.ndarray:
    """Union of filled xyxy boxes as a uint8 {0,1} (height, width) mask.

    Pixel (r, c) is inside a box when its centre (c + 0.5, r + 0.5) is in [x1, x2) x
    [y1, y2), so an integer-valued box covers exactly columns x1..x2-1 and rows y1..y2-1.
    A box too small to contain any pixel centre marks the pixel holding its centre, so
    no box vanishes from the mask at small image sizes.
    """
    mask = np.zeros((int(height), int(width)), np.uint8)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        c0, c1 = _pixel_span(x1, x2, width)
        r0, r1 = _pixel_span(y1, y2, height)
        mask[r0:r1, c0:c1] = 1
    return mask


def _pixel_span(lo: float, hi: float, n: int) -> tuple[int, int]:
    a, b = max(math.ceil(lo - 0.5), 0), min(math.ceil(hi - 0.5), n)
    if b <= a:  # no pixel centre inside: take the pixel holding the box centre
        a = min(max(math.floor((lo + hi) / 2), 0), n - 1)
        b = a + 1
    return a, b


def warn_boxes(clipped: list[dict], dropped: list[dict], label_csv, where: str | None) -> None:
    """One warning for clipped boxes, one for dropped ones; where = the manifest listing them.

    The warnings point at the caller of the function that calls this one (`prepare`,
    `load_ground_truth`).
    """
    listed = f"in {where}" if where else "in the manifest `prepare` writes"
    if clipped:
        c = clipped[0]
        warnings.warn(
            f"{label_csv}: {len(clipped)} box(es) extend outside their image and were clipped "
            f"to it (listed under 'boxes_clipped' {listed}); first: line {c['line']}, "
            f"patientId {c['patientId']}, x,y,w,h {_fmt(c['box_xywh'])} -> "
            f"{_fmt(c['clipped_xywh'])} in a {c['image_hw'][0]}x{c['image_hw'][1]} image",
            stacklevel=3,
        )
    if dropped:
        d = dropped[0]
        warnings.warn(
            f"{label_csv}: {len(dropped)} box(es) lie entirely outside their image and were "
            f"dropped (listed under 'boxes_dropped' {listed}); first: line {d['line']}, "
            f"patientId {d['patientId']}, x,y,w,h {_fmt(d['box_xywh'])} in a "
            f"{d['image_hw'][0]}x{d['image_hw'][1]} image",
            stacklevel=3,
        )


def _fmt(box) -> str:
    return ",".join(f"{v:g}" for v in box)
