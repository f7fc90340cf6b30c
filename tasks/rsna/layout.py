"""RSNA Pneumonia's dataset layout: where the images and labels are, and which match which.

Owns: the layout constants and :data:`EXPECTED_LAYOUT` (the text every layout error
shows), :func:`find_layout`, :func:`find_dicoms` and :func:`scan` (layout, DICOMs,
checked labels and class info, matched by patientId, with the mismatches listed).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tasks import cache
from tasks.errors import DataError
from tasks.rsna.labels import (
    CLASS_COLUMNS,
    LABEL_COLUMNS,
    check_classes,
    count_label_rows,
    read_class_info,
    read_labels,
)

TASK = "rsna"
IMAGE_DIR = "stage_2_train_images"
LABELS_CSV = "stage_2_train_labels.csv"
CLASS_CSV = "stage_2_detailed_class_info.csv"

EXPECTED_LAYOUT = f"""expected RSNA Pneumonia Detection (Kaggle stage 2) layout:
  <root>/
    {IMAGE_DIR}/<patientId>.dcm
    {LABELS_CSV}           (header '{",".join(LABEL_COLUMNS)}'; one row per box,
                                       Target=0 rows with empty box fields)
    {CLASS_CSV}    (optional; header '{",".join(CLASS_COLUMNS)}')"""


def find_layout(root) -> dict:
    """Locate the image folder, the label CSV and (optional) the class-info CSV.

    Returns {"root", "dicom_dir", "label_csv", "class_csv" (None when absent)}.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: RSNA Pneumonia data root does not exist; {EXPECTED_LAYOUT}")
    dicom_dir = root / IMAGE_DIR
    if not dicom_dir.is_dir():
        raise DataError(f"{dicom_dir}: image folder missing; {EXPECTED_LAYOUT}")
    label_csv = root / LABELS_CSV
    if not label_csv.is_file():
        raise DataError(f"{label_csv}: label CSV missing; {EXPECTED_LAYOUT}")
    class_csv = root / CLASS_CSV
    return {
        "root": root,
        "dicom_dir": dicom_dir,
        "label_csv": label_csv,
        "class_csv": class_csv if class_csv.is_file() else None,
    }


def find_dicoms(dicom_dir: Path) -> dict[str, Path]:
    """patientId (file stem) -> path for every *.dcm directly in dicom_dir, sorted by id."""
    return {p.stem: p for p in sorted(Path(dicom_dir).glob("*.dcm"))}


def scan(root, strict: bool) -> dict:
    """Layout + DICOM files + labels (+ classes), matched by patientId, mismatches listed."""
    layout = find_layout(root)
    dicoms = find_dicoms(layout["dicom_dir"])
    labels = read_labels(layout["label_csv"], strict=strict)
    classes = None
    if layout["class_csv"] is not None:
        classes = read_class_info(layout["class_csv"])
        check_classes(labels, classes, layout["label_csv"], layout["class_csv"])
    row_counts = count_label_rows(layout["label_csv"])
    matched, without_dicom, without_labels = cache.match_labels_to_dicoms(
        labels, dicoms, label_csv=layout["label_csv"], id_name="patientId",
        where_missing=f"{IMAGE_DIR}/<patientId>.dcm under {layout['root']}",
        dicom_dir=layout["dicom_dir"], expected_layout=EXPECTED_LAYOUT, strict=strict,
    )  # fmt: skip
    without_class = sorted(set(matched) - set(classes)) if classes is not None else []
    if without_class:
        warnings.warn(
            f"{layout['class_csv']}: {len(without_class)} labelled patientId(s) have no class "
            f"row, e.g. {without_class[:10]} (class recorded as null)",
            stacklevel=3,
        )
    return {
        **layout,
        "dicoms": dicoms,
        "labels": labels,
        "row_counts": row_counts,
        "classes": classes,
        "matched": matched,
        "without_dicom": without_dicom,
        "without_labels": without_labels,
        "without_class": without_class,
    }
