"""SIIM-ACR's dataset layout: where the images and labels are, and which match which.

Owns: the layout constants and :data:`EXPECTED_LAYOUT` (the text every layout error
shows), :func:`find_layout` (DICOM folder or PNG re-export, stage 1 or stage 2 label
CSV, the RLE convention), :func:`find_dicoms`, :func:`read_labels` (the label CSV
through :func:`tasks.csvfile.read_csv`, every RLE syntax-checked) and :func:`scan`
(all of it, labels matched to images by ImageId).
"""

from __future__ import annotations

from pathlib import Path

from tasks import cache
from tasks.csvfile import read_csv
from tasks.errors import DataError
from tasks.siim.rle import RLE_FORMATS, check_rle, is_negative

TASK = "siim"
DICOM_DIR = "dicom-images-train"
STAGE1_CSV = "train-rle.csv"
STAGE2_CSV = "stage_2_train.csv"
PNG_DIRS = ("png_images", "train_png", "images", "train")  # searched in this order
PNG_RLE_SIZE = 1024  # the Kaggle RLE describes the 1024x1024 originals

EXPECTED_LAYOUT = f"""expected SIIM-ACR layout:
  <root>/
    {DICOM_DIR}/<StudyUID>/<SeriesUID>/<ImageId>.dcm
    {STAGE1_CSV}        (header 'ImageId, EncodedPixels', relative RLE)
  or instead of {STAGE1_CSV}:
    {STAGE2_CSV}    (header 'ImageId,EncodedPixels'; pass --rle-format absolute|relative)
  or, for a PNG re-export, instead of {DICOM_DIR}/:
    one of {", ".join(d + "/" for d in PNG_DIRS)} holding <ImageId>.png (any depth)"""


def find_layout(root, rle_format: str | None = None) -> dict:
    """Locate the DICOM folder and label CSV under root; decide the RLE format.

    train-rle.csv wins over stage_2_train.csv and defaults to relative RLE;
    stage_2_train.csv alone requires an explicit rle_format.
    Returns {"root", "dicom_dir", "label_csv", "rle_format", "image_format"}.
    """
    if rle_format is not None and rle_format not in RLE_FORMATS:
        raise ValueError(f"rle_format must be one of {RLE_FORMATS} or None, not {rle_format!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: SIIM-ACR data root does not exist; {EXPECTED_LAYOUT}")
    dicom_dir, image_format = root / DICOM_DIR, "dicom"
    if not dicom_dir.is_dir():
        png_dir = next((root / d for d in PNG_DIRS if _has_png(root / d)), None)
        if png_dir is None:
            raise DataError(f"{dicom_dir}: DICOM folder missing; {EXPECTED_LAYOUT}")
        dicom_dir, image_format = png_dir, "png"
    stage1, stage2 = root / STAGE1_CSV, root / STAGE2_CSV
    if stage1.is_file():
        label_csv, fmt = stage1, rle_format or "relative"
    elif stage2.is_file():
        if rle_format is None:
            raise DataError(
                f"{stage2}: stage 2 labels may use absolute (standard Kaggle) or relative RLE "
                f"and the file does not say which; choose it explicitly with "
                f"rle_format='absolute' or rle_format='relative' (bench: --rle-format)"
            )
        label_csv, fmt = stage2, rle_format
    else:
        raise DataError(f"{root}: no label CSV ({STAGE1_CSV} or {STAGE2_CSV}); {EXPECTED_LAYOUT}")
    return {"root": root, "dicom_dir": dicom_dir, "label_csv": label_csv, "rle_format": fmt,
            "image_format": image_format}  # fmt: skip


def _has_png(folder: Path) -> bool:
    return folder.is_dir() and next(folder.rglob("*.png"), None) is not None


def find_dicoms(dicom_dir: Path, suffix: str = ".dcm") -> dict[str, Path]:
    """ImageId (file stem) -> path for every *.dcm (or ``suffix``) below dicom_dir, by id."""
    found: dict[str, Path] = {}
    for path in sorted(Path(dicom_dir).rglob(f"*{suffix}")):
        if path.stem in found:
            raise DataError(f"{path}: ImageId {path.stem} also found at {found[path.stem]}")
        found[path.stem] = path
    return dict(sorted(found.items()))


def read_labels(csv_path, rle_format: str) -> dict[str, list[tuple[int, str]]]:
    """ImageId -> [(line number, rle), ...] in file order (header is line 1).

    Column names are whitespace-stripped (train-rle.csv has 'ImageId, EncodedPixels').
    Every RLE string is syntax-checked here; errors name the file, line and ImageId.
    """
    table = read_csv(
        csv_path,
        ("ImageId", "EncodedPixels"),
        what="label CSV",
        expected_header="ImageId, EncodedPixels",
        short_rows="pad_optional",
        id_column="ImageId",
    )
    labels: dict[str, list[tuple[int, str]]] = {}
    for line, row in table.rows:
        image_id, rle = row["ImageId"].strip(), row["EncodedPixels"].strip()
        if not image_id:
            raise DataError(f"{table.path}: line {line}: empty ImageId")
        if not is_negative(rle):
            try:
                check_rle(rle, rle_format)
            except ValueError as e:
                raise DataError(f"{table.path}: line {line}: ImageId {image_id}: {e}") from None
        labels.setdefault(image_id, []).append((line, rle))
    return labels


def scan(root, rle_format: str | None, strict: bool) -> dict:
    """Layout + DICOM files + labels, matched by ImageId, with the mismatches listed."""
    layout = find_layout(root, rle_format)
    png = layout["image_format"] == "png"
    suffix = ".png" if png else ".dcm"
    dicoms = find_dicoms(layout["dicom_dir"], suffix)
    labels = read_labels(layout["label_csv"], layout["rle_format"])
    matched, without_dicom, without_labels = cache.match_labels_to_dicoms(
        labels, dicoms, label_csv=layout["label_csv"], id_name="ImageId",
        where_missing=f"under {layout['dicom_dir']}", dicom_dir=layout["dicom_dir"],
        expected_layout=EXPECTED_LAYOUT, strict=strict, kind="PNG" if png else "DICOM",
        suffix=suffix,
    )  # fmt: skip
    return {
        **layout,
        "dicoms": dicoms,
        "labels": labels,
        "matched": matched,
        "without_dicom": without_dicom,
        "without_labels": without_labels,
    }
