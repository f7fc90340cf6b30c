"""SIIM-ACR prepared for training and scoring: the cache, and ground truth at full size.

Owns: :func:`prepare` (dataset -> cached fixed-size uint8 images and {0,1} masks via
:func:`tasks.cache.build_cache`, masks decoded at each image's own size),
:func:`load_ground_truth` (labels at original resolution from the label CSV and the
DICOM headers only, for ``bench evaluate``), :func:`ground_truth_mask` and
:data:`ground_truth_splits`.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.util import sha256_file
from tasks import cache, errors, imageio, splits
from tasks.cache import Prepared
from tasks.errors import DataError
from tasks.siim.layout import PNG_RLE_SIZE, TASK, scan
from tasks.siim.rle import decode_rows, rle_decode


def prepare(
    root,
    image_size: int,
    *,
    rle_format: str | None = None,
    strict: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Prepared:
    """Dataset at root -> cached uint8 images and {0,1} masks at image_size x image_size.

    Masks are decoded at each DICOM's own Rows x Columns, then resized (area >= 0.5).
    The cache is reused when nothing it depends on changed (see `cache.cache_key`).
    strict=True turns skipped corrupt DICOMs and label ids without DICOM into errors.
    workers: processes that decode a build (None: ``$CXRBENCH_CACHE_WORKERS``, else one
    per usable core; 1: in-process); checked even when the cache is reused, and never
    part of the cache key (the content does not depend on it).
    """
    workers = cache.requested_workers(workers)
    found = scan(root, rle_format, strict)
    root = found["root"].resolve()
    label_csv = found["label_csv"].resolve()
    material = {
        "label_file": label_csv.name,
        "label_sha256": sha256_file(label_csv),
        "rle_format": found["rle_format"],
        "image_format": found["image_format"],
    }
    key = cache.cache_key(TASK, image_size, material, found["dicoms"].values(), root)
    cache_dir = cache.cache_dir_for(TASK, key)
    prepared = cache.load_prepared(cache_dir)
    if prepared is None:
        items = [
            {"id": i, "path": found["dicoms"][i], "rows": found["labels"][i]}
            for i in found["matched"]
        ]
        load = functools.partial(_load_item, label_csv=label_csv, fmt=found["rle_format"])
        prepared = cache.build_cache(
            cache_dir,
            task=TASK,
            root=root,
            items=items,
            image_size=image_size,
            load_item=load,
            manifest_extra=_manifest_extra(found, root, label_csv, material),
            has_masks=True,
            strict=strict,
            progress=progress,
            workers=workers,
        )
    cache.check_strict(prepared, strict)
    return prepared


def _manifest_extra(found: dict, root: Path, label_csv: Path, material: dict) -> dict:
    """What the manifest records about the labels and the images that did not match."""
    if found["image_format"] == "dicom":
        grouping = "PatientID from the DICOM header"
    else:
        grouping = f"ImageId (PNG re-export: no PatientID); RLE decoded at {PNG_RLE_SIZE}x{PNG_RLE_SIZE}"
    return {
        "label_file": str(label_csv),
        "label_sha256": material["label_sha256"],
        "rle_format": found["rle_format"],
        "image_format": found["image_format"],
        "grouping": grouping,
        "counts": {
            "n_label_rows": sum(len(v) for v in found["labels"].values()),
            "n_label_ids": len(found["labels"]),
            "n_dicoms": len(found["dicoms"]),
            "n_label_ids_without_dicom": len(found["without_dicom"]),
            "n_dicoms_without_labels": len(found["without_labels"]),
        },
        "label_ids_without_dicom": found["without_dicom"],
        "dicoms_without_labels": [
            cache.relative_path(found["dicoms"][i], root) for i in found["without_labels"]
        ],
    }


def _load_item(item: dict, *, label_csv: Path, fmt: str) -> dict:
    if Path(item["path"]).suffix.lower() == ".png":
        image = imageio.read_png(item["path"])
        header = {"patient_id": None, "photometric": "png", "transfer_syntax": None}
        height = width = PNG_RLE_SIZE  # the RLE's frame: the 1024x1024 originals
    else:
        image, header = imageio.read_dicom_with_header(item["path"])
        height, width = image.shape
    mask = np.zeros((height, width), np.uint8)
    for line, rle in item["rows"]:
        try:
            mask |= rle_decode(rle, height, width, fmt)
        except ValueError as e:
            raise DataError(f"{label_csv}: line {line}: ImageId {item['id']}: {e}") from None
    return {
        "image": image,
        "mask": mask,
        "orig_size": (height, width),
        "patient_id": header["patient_id"],
        "meta": {
            "positive": bool(mask.any()),
            "n_label_rows": len(item["rows"]),
            "photometric": header["photometric"],
            "transfer_syntax": header["transfer_syntax"],
        },
    }


def load_ground_truth(root, rle_format: str | None = None, *, progress: bool = False) -> dict:
    """Ground truth at original resolution from the label CSV + DICOM headers only.

    Returns {ImageId: {"rles": [str, ...], "lines": [int, ...], "height", "width",
    "patient_id", "path", "rle_format"}} for every labelled DICOM whose header is
    readable. Decode with `ground_truth_mask(entry)`. Uses the same ids and patient
    ids as `prepare`, so `ground_truth_splits` reproduces the training split; the only
    difference is that a file with a readable header but corrupt pixel data is kept
    here while `prepare` skips it.
    """
    found = scan(root, rle_format, strict=False)
    out = {}
    for image_id in tqdm(found["matched"], desc="read headers", disable=not progress):
        path = found["dicoms"][image_id]
        if found["image_format"] == "png":  # the RLE's frame; no PatientID in a PNG
            header = {"rows": PNG_RLE_SIZE, "columns": PNG_RLE_SIZE, "patient_id": None}
        else:
            try:
                header = imageio.read_dicom_header(path)
            except errors.DicomReadError as e:
                warnings.warn(f"skipping unreadable DICOM header: {e}", stacklevel=2)
                continue
        rows = found["labels"][image_id]
        out[image_id] = {
            "rles": [rle for _, rle in rows],
            "lines": [line for line, _ in rows],
            "height": header["rows"],
            "width": header["columns"],
            "patient_id": header["patient_id"] or "",
            "path": str(path),
            "rle_format": found["rle_format"],
        }
    return out


def ground_truth_mask(entry: dict) -> np.ndarray:
    """Full-resolution {0,1} mask of one `load_ground_truth` entry."""
    return decode_rows(entry["rles"], entry["height"], entry["width"], entry["rle_format"])


ground_truth_splits = splits.ground_truth_splits
