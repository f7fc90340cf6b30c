"""RSNA Pneumonia prepared for training and scoring: the cache, and ground truth at full size.

Owns: :func:`prepare` (dataset -> cached fixed-size images, xyxy boxes in the
image_size frame and filled-box masks via :func:`tasks.cache.build_cache`, with the
clipping report in the manifest), :func:`load_ground_truth` (clipped boxes at original
resolution from the label CSV and the DICOM headers only, for ``bench evaluate``) and
:data:`ground_truth_splits`.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from bench.util import sha256_file
from tasks import cache, errors, imageio, splits
from tasks.cache import Prepared
from tasks.rsna.boxes import boxes_to_mask, clip_boxes, warn_boxes
from tasks.rsna.layout import TASK, scan


def prepare(
    root,
    image_size: int,
    *,
    strict: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Prepared:
    """Dataset at root -> cached uint8 images, xyxy boxes and box masks at image_size.

    Boxes are clipped to their DICOM's Rows x Columns (reported: warning + manifest
    'boxes_clipped' / 'boxes_dropped'), then scaled with the image into the
    image_size pixel frame (`Prepared.boxes`, float32 (M, 4) xyxy, (0, 4) for
    negatives); `Prepared.masks` are those boxes filled (`boxes_to_mask`). The cache is
    reused when nothing it depends on changed (label and class-info CSV contents, the
    DICOM files, image_size). strict=True turns skipped corrupt DICOMs and label ids
    without DICOM into errors; label errors are errors in any mode. workers: processes
    that decode a build (None: ``$CXRBENCH_CACHE_WORKERS``, else one per usable core; 1:
    in-process); checked even when the cache is reused, never part of the cache key.
    """
    workers = cache.requested_workers(workers)
    found = scan(root, strict)
    root = found["root"].resolve()
    label_csv = found["label_csv"].resolve()
    class_csv = found["class_csv"].resolve() if found["class_csv"] is not None else None
    material = {
        "label_file": label_csv.name,
        "label_sha256": sha256_file(label_csv),
        "class_file": class_csv.name if class_csv else None,
        "class_sha256": sha256_file(class_csv) if class_csv else None,
        "boxes": "xyxy-clip-scale-v2",  # v2: repeated label rows counted once
    }
    key = cache.cache_key(TASK, image_size, material, found["dicoms"].values(), root)
    cache_dir = cache.cache_dir_for(TASK, key)
    prepared = cache.load_prepared(cache_dir)
    if prepared is None:
        prepared = cache.build_cache(
            cache_dir,
            task=TASK,
            root=root,
            items=_cache_items(found),
            image_size=image_size,
            load_item=functools.partial(_load_item, image_size=int(image_size)),
            manifest_extra=_manifest_extra(found, root, label_csv, class_csv, material),
            has_masks=True,
            has_boxes=True,
            finalize=functools.partial(_finalize, has_classes=found["classes"] is not None),
            strict=strict,
            progress=progress,
            workers=workers,
        )
    m = prepared.manifest
    warn_boxes(
        m["boxes_clipped"], m["boxes_dropped"], label_csv, prepared.cache_dir / "manifest.json"
    )
    cache.check_strict(prepared, strict)
    return prepared


def _cache_items(found: dict) -> list[dict]:
    """One `build_cache` item per matched patientId: its DICOM, boxes and class."""
    classes = found["classes"]
    return [
        {
            "id": i,
            "path": found["dicoms"][i],
            "rows": found["labels"][i],
            "n_label_rows": found["row_counts"][i],
            "class": classes[i][1] if classes is not None and i in classes else None,
        }
        for i in found["matched"]
    ]


def _manifest_extra(
    found: dict, root: Path, label_csv: Path, class_csv: Path | None, material: dict
) -> dict:
    """What the manifest records about the labels, the box frame and unmatched files."""
    return {
        "label_file": str(label_csv),
        "label_sha256": material["label_sha256"],
        "class_file": str(class_csv) if class_csv else None,
        "class_sha256": material["class_sha256"],
        "box_format": "xyxy",
        "box_frame": "image_size pixels: x scaled by image_size/Columns, y by image_size/Rows",
        "mask_source": "filled boxes at image_size (pixel centre inside a box)",
        "counts": {
            "n_label_rows": sum(found["row_counts"].values()),
            "n_label_ids": len(found["labels"]),
            "n_label_boxes": sum(len(v) for v in found["labels"].values()),
            "n_dicoms": len(found["dicoms"]),
            "n_label_ids_without_dicom": len(found["without_dicom"]),
            "n_dicoms_without_labels": len(found["without_labels"]),
            "n_label_ids_without_class": len(found["without_class"]),
        },
        "label_ids_without_dicom": found["without_dicom"],
        "dicoms_without_labels": [
            cache.relative_path(found["dicoms"][i], root) for i in found["without_labels"]
        ],
    }


def _load_item(item: dict, *, image_size: int) -> dict:
    image, header = imageio.read_dicom_with_header(item["path"])
    height, width = image.shape
    boxes, clipped, dropped = clip_boxes(item["id"], item["rows"], height, width)
    scaled = cache.scale_boxes(boxes, (height, width), image_size)
    return {
        "image": image,
        "mask": boxes_to_mask(scaled, image_size, image_size),
        "boxes": scaled,
        "patient_id": header["patient_id"],
        "meta": {
            "positive": bool(len(boxes)),
            "target": int(bool(item["rows"])),
            "n_boxes": len(boxes),
            "n_label_rows": item["n_label_rows"],
            "class": item["class"],
            "photometric": header["photometric"],
            "transfer_syntax": header["transfer_syntax"],
            "boxes_clipped": clipped,  # moved to the manifest's top level by _finalize
            "boxes_dropped": dropped,
        },
    }


def _finalize(manifest: dict, *, has_classes: bool) -> None:
    """Gather per-item clip reports into top-level lists and add box / class counts."""
    clipped, dropped = [], []
    for item in manifest["items"]:
        c, d = item.pop("boxes_clipped"), item.pop("boxes_dropped")
        item["n_boxes_clipped"], item["n_boxes_dropped"] = len(c), len(d)
        clipped += c
        dropped += d
    manifest["boxes_clipped"] = clipped
    manifest["boxes_dropped"] = dropped
    items = manifest["items"]
    counts = manifest["counts"]
    counts["n_boxes"] = sum(it["n_boxes"] for it in items)
    counts["n_multi_box"] = sum(it["n_boxes"] > 1 for it in items)
    counts["n_boxes_clipped"] = len(clipped)
    counts["n_boxes_dropped"] = len(dropped)
    if has_classes:
        by_class = Counter(it["class"] or "null" for it in items)
        counts["by_class"] = dict(sorted(by_class.items()))


def load_ground_truth(root, *, progress: bool = False) -> dict:
    """Ground truth at original resolution from the label CSV + DICOM headers only.

    Returns {patientId: {"boxes": float64 (M, 4) xyxy in original pixels (clipped to
    the image, as in `prepare`), "lines": CSV lines of the kept boxes, "height",
    "width", "patient_id", "path", "class"}} for every labelled DICOM whose header is
    readable. Uses the same ids and patient ids as `prepare`, so `ground_truth_splits`
    reproduces the training split; a file with a readable header but corrupt pixel data
    is kept here while `prepare` skips it.
    """
    found = scan(root, strict=False)
    classes = found["classes"] or {}
    out, all_clipped, all_dropped = {}, [], []
    for pid in tqdm(found["matched"], desc="read headers", disable=not progress):
        path = found["dicoms"][pid]
        try:
            header = imageio.read_dicom_header(path)
        except errors.DicomReadError as e:
            warnings.warn(f"skipping unreadable DICOM header: {e}", stacklevel=2)
            continue
        rows = found["labels"][pid]
        boxes, clipped, dropped = clip_boxes(pid, rows, header["rows"], header["columns"])
        all_clipped += clipped
        all_dropped += dropped
        gone = {d["line"] for d in dropped}
        out[pid] = {
            "boxes": boxes,
            "lines": [r[0] for r in rows if r[0] not in gone],
            "height": header["rows"],
            "width": header["columns"],
            "patient_id": header["patient_id"] or "",
            "path": str(path),
            "class": classes[pid][1] if pid in classes else None,
        }
    warn_boxes(all_clipped, all_dropped, found["label_csv"], None)
    return out


ground_truth_splits = splits.ground_truth_splits
