"""Task-independent data plumbing shared by every downstream task.

Owns: the `DataError` type, DICOM reading (uncompressed, JPEG Baseline, RLE Lossless,
MONOCHROME1, modality LUT) and writing (for the synthetic generators), deterministic
image-level splits and nested label fractions (design section 7), external split-file
import, the synthetic-data marker, and the on-disk preprocessing cache that turns a
dataset into fixed-size uint8 arrays (`Prepared`), with per-image boxes for detection
tasks (`boxes.npz`, `scale_boxes`).

A task module (e.g. `tasks.siim`) finds its files, parses its labels, and hands a list
of items plus a `load_item` function to `build_cache`; everything here is task-agnostic.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
import pydicom
import pydicom.encaps
import pydicom.pixels
from PIL import Image
from tqdm import tqdm

CACHE_FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SYNTHETIC_MARKER = "SYNTHETIC_DATA.txt"
BOXES_FILE = "boxes.npz"  # per-image boxes of detection tasks, inside a cache directory
SPLIT_SALT = "cxrbench-split-v1"
FRACTION_SALT = "cxrbench-fraction-v1"
SPLIT_ID_COLUMNS = ("ImageId", "image_id", "patientId", "dicom_id", "id")
_SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


class DataError(Exception):
    """Bad or missing dataset input. The message names the file (and row / id)."""


class DicomReadError(DataError):
    """A single DICOM file could not be read or decoded (corrupt, truncated, not DICOM).

    The cache builder skips these (and records them) unless `strict=True`; every other
    DataError is fatal.
    """


# --------------------------------------------------------------------------- paths


def cache_root() -> Path:
    """`$CXRBENCH_CACHE` if set, else the per-user cache dir for cxrbench."""
    env = os.environ.get("CXRBENCH_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("cxrbench"))


def is_synthetic(root: str | os.PathLike) -> bool:
    """True when `root` carries the synthetic-data marker file."""
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def write_synthetic_marker(root: Path, text: str) -> None:
    """Write the marker that says `root` holds generated, not real, data."""
    (Path(root) / SYNTHETIC_MARKER).write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_unit(salt: str, value: str) -> float:
    """Map `salt + value` to [0, 1) with sha256 (53 bits, exact in a float)."""
    digest = hashlib.sha256((salt + value).encode("utf-8")).hexdigest()
    return int(digest[:13], 16) / float(16**13)


# --------------------------------------------------------------------------- DICOM


def read_dicom_with_header(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Decode one DICOM to uint8 (H, W) and return it with its header summary.

    MONOCHROME1 is inverted on the stored values, then the modality LUT
    (RescaleSlope/Intercept) is applied. Values already in [0, 255] are kept (rounded);
    anything else is min-max scaled per image to [0, 255].
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for broken files
        raise DicomReadError(f"{path}: not a readable DICOM file ({e})") from e
    header = _header(ds, path)
    if "PixelData" not in ds:
        raise DicomReadError(f"{path}: DICOM has no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as e:
        raise DicomReadError(
            f"{path}: cannot decode pixel data (transfer syntax {header['transfer_syntax']}): {e}"
        ) from e
    if raw.ndim != 2:
        raise DicomReadError(
            f"{path}: expected a single-frame grayscale image, got pixel array of shape {raw.shape}"
        )
    if header["photometric"] == "MONOCHROME1":
        raw = _invert(raw, ds)
    try:
        values = pydicom.pixels.apply_modality_lut(raw, ds)
    except Exception as e:
        raise DicomReadError(f"{path}: cannot apply modality LUT: {e}") from e
    return _to_uint8(np.asarray(values)), header


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Decode one DICOM to a uint8 (H, W) array; raises DataError on any failure."""
    return read_dicom_with_header(path)[0]


def read_dicom_header(path: str | os.PathLike) -> dict:
    """Header summary without touching pixel data: rows, columns, patient_id,
    photometric, transfer_syntax."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise DicomReadError(f"{path}: not a readable DICOM file ({e})") from e
    return _header(ds, path)


def _header(ds, path) -> dict:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise DicomReadError(f"{path}: DICOM header has no Rows/Columns (truncated?)")
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    pid = ds.get("PatientID")
    return {
        "rows": int(rows),
        "columns": int(cols),
        "patient_id": str(pid).strip() if pid is not None else None,
        "photometric": str(ds.get("PhotometricInterpretation", "")).strip(),
        "transfer_syntax": str(ts) if ts else None,
    }


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A grayscale uint8 image from a PNG re-export (8- or 16-bit, gray or colour;
    16-bit values are divided by 257, so 65535 -> 255).

    An unreadable file raises DicomReadError (the "one image could not be read" error
    the cache builder skips and counts), so PNG and DICOM datasets fail the same way.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16"):  # 16-bit gray: keep the stored scale
                return np.rint(np.asarray(im, np.float64) / 257.0).astype(np.uint8)
            if im.mode in ("I", "F"):  # 32-bit: no declared range, stretch it
                return _to_uint8(np.asarray(im))
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise DicomReadError(f"{path}: not a readable PNG file ({e})") from e


def _invert(raw: np.ndarray, ds) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2 on stored values.

    Unsigned: (2**BitsStored - 1) - raw. Signed: -1 - raw (mirror of the signed range).
    """
    if int(ds.get("PixelRepresentation", 0)) == 0:
        bits = int(ds.get("BitsStored", raw.dtype.itemsize * 8))
        return ((1 << bits) - 1) - raw.astype(np.int64)
    return -1 - raw.astype(np.int64)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64, copy=False)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0 and hi <= 255:
        return np.rint(values).astype(np.uint8)
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def write_dicom(
    path: str | os.PathLike,
    pixels_uint8: np.ndarray,
    *,
    patient_id: str,
    sop_uid: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    compression: str | None = None,
    monochrome1: bool = False,
    rescale: tuple[float, float] | None = None,
) -> Path:
    """Write a real Secondary Capture DICOM whose `read_dicom` gives back `pixels_uint8`.

    compression: None (Explicit VR Little Endian), "rle" (RLE Lossless via pydicom's
    `Dataset.compress`, which uses pylibjpeg-rle when installed, else its own encoder)
    or "jpeg" (JPEG Baseline 8-bit via Pillow, quality 95; lossy, so reading it
    back is close but not exact). monochrome1 stores inverted values with
    PhotometricInterpretation MONOCHROME1. rescale=(slope, intercept) stores
    round((pixels - intercept) / slope) with RescaleSlope/Intercept; the round trip is
    exact when (pixels - intercept) is a multiple of slope, otherwise within slope / 2.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        RLELossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    pixels = np.asarray(pixels_uint8)
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"write_dicom needs a 2-D uint8 array, got {pixels.dtype} {pixels.shape}")
    stored = pixels.astype(np.float64)
    if rescale is not None:
        slope, intercept = rescale
        stored = np.rint((stored - intercept) / slope)
        if stored.min() < 0 or stored.max() > 255:
            raise ValueError(f"rescale {rescale} puts stored values outside 0..255")
    stored = stored.astype(np.uint8)
    if monochrome1:
        stored = 255 - stored

    study_uid = study_uid or generate_uid(entropy_srcs=[sop_uid, "study"])
    series_uid = series_uid or generate_uid(entropy_srcs=[sop_uid, "series"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.BodyPartExamined = "CHEST"
    ds.ImageComments = "cxrbench synthetic"
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope = f"{float(rescale[0]):g}"
        ds.RescaleIntercept = f"{float(rescale[1]):g}"
        ds.RescaleType = "US"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB"

    if compression == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    elif compression == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(stored).save(
            buf, format="JPEG", quality=95, optimize=False, progressive=False
        )
        ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif compression is not None:
        raise ValueError(f"compression must be None, 'rle' or 'jpeg', not {compression!r}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- splits


def assign_splits(
    ids: Iterable[str],
    groups: Mapping[str, str | None] | None = None,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    salt: str = SPLIT_SALT,
) -> dict[str, str]:
    """Deterministic train/val/test assignment by image id, grouped by patient.

    Each group (patient id; the image id itself when missing/empty) gets
    u = sha256(salt + group) mapped to [0, 1); u < r_train -> train, u < r_train + r_val
    -> val, else test. Nothing depends on input order, machine or library versions.

    Non-empty guarantee: order groups by u; the splits are then three consecutive runs.
    When there are enough groups (>= 3, or >= the number of splits with a positive
    ratio) and a split with a positive ratio came out empty, the run boundaries are
    nudged so it gets the group(s) next to its boundary, i.e. those with the extreme u
    values (e.g. an empty test takes the group with the largest u). This only ever
    happens on tiny datasets.
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers, got {ratios}")
    total = sum(ratios)
    cut1, cut2 = ratios[0] / total, (ratios[0] + ratios[1]) / total

    ids = list(dict.fromkeys(str(i) for i in ids))
    group_of = {i: _group(i, groups) for i in ids}
    ordered = sorted(set(group_of.values()), key=lambda g: (_hash_unit(salt, g), g))
    n = len(ordered)
    units = [_hash_unit(salt, g) for g in ordered]
    b1 = sum(u < cut1 for u in units)
    b2 = sum(u < cut2 for u in units)
    need = [1 if r > 0 else 0 for r in ratios]
    if n >= max(3, sum(need)):
        b1 = min(max(b1, need[0]), n - need[1] - need[2])
        b2 = min(max(b2, b1 + need[1]), n - need[2])
    split_of_group = {}
    for rank, g in enumerate(ordered):
        split_of_group[g] = "train" if rank < b1 else "val" if rank < b2 else "test"
    return {i: split_of_group[group_of[i]] for i in ids}


def _group(image_id: str, groups: Mapping[str, str | None] | None) -> str:
    g = groups.get(image_id) if groups is not None else None
    g = "" if g is None else str(g).strip()
    return g or image_id


def fraction_subset(
    train_ids: Iterable[str], fraction: float, salt: str = FRACTION_SALT
) -> list[str]:
    """Nested label fraction of the training ids.

    Ids are ordered by sha256(salt + id) and the first max(1, ceil(fraction * n)) are
    taken, so every smaller fraction is a prefix of every larger one (1% in 10% in
    100%). `fraction * n` is rounded to 9 decimals first so 0.07 * 100 gives 7, not 8.
    """
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"label fraction must be a number in (0, 1], got {fraction!r}") from None
    if not (0 < fraction <= 1):
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    ordered = sorted(
        dict.fromkeys(str(i) for i in train_ids), key=lambda i: (_hash_unit(salt, i), i)
    )
    if not ordered:
        return []
    k = max(1, math.ceil(round(fraction * len(ordered), 9)))
    return ordered[:k]


def load_split_file(path: str | os.PathLike, ids: Iterable[str]) -> dict[str, str]:
    """Import an external split: returns {id: "train"|"val"|"test"} for listed ids.

    Accepts (a) one CSV with an id column (one of SPLIT_ID_COLUMNS) and a `split` column
    (train / val / valid / validation / test), or (b) a directory holding train.csv,
    val.csv (or validation.csv / valid.csv) and test.csv, each with an id column (LoVT's
    layout). Repeated rows for one id in the same split are fine (per-mask CSVs).
    Ids unknown to `ids` or listed in two splits raise DataError. Data ids the file
    does not list are simply absent from the result.
    """
    path = Path(path)
    known = set(ids)
    if path.is_dir():
        assigned: dict[str, str] = {}
        where: dict[str, Path] = {}
        for split, names in (
            ("train", ("train.csv",)),
            ("val", ("val.csv", "validation.csv", "valid.csv")),
            ("test", ("test.csv",)),
        ):
            found = [path / nm for nm in names if (path / nm).is_file()]
            if not found:
                raise DataError(
                    f"{path}: split directory must contain train.csv, val.csv (or "
                    f"validation.csv) and test.csv; missing {names[0]}"
                )
            csv_path = found[0]
            header, rows = _read_csv_rows(csv_path)
            id_col = _id_column(csv_path, header)
            for line, row in rows:
                image_id = row[id_col].strip()
                if not image_id:
                    continue
                if assigned.get(image_id, split) != split:
                    raise DataError(
                        f"{csv_path}: line {line}: id {image_id} is also listed in "
                        f"{where[image_id]} ({assigned[image_id]})"
                    )
                assigned[image_id] = split
                where[image_id] = csv_path
    elif path.is_file():
        header, rows = _read_csv_rows(path)
        id_col = _id_column(path, header)
        if "split" not in header:
            raise DataError(
                f"{path}: split CSV needs a 'split' column next to the id column; "
                f"columns found: {header}"
            )
        s_col = header.index("split")
        assigned = {}
        for line, row in rows:
            image_id = row[id_col].strip()
            if not image_id:
                continue
            value = row[s_col].strip().lower()
            if value not in _SPLIT_NAMES:
                raise DataError(
                    f"{path}: line {line}: split {row[s_col]!r} for {image_id} is not one of "
                    f"{sorted(_SPLIT_NAMES)}"
                )
            split = _SPLIT_NAMES[value]
            if assigned.get(image_id, split) != split:
                raise DataError(
                    f"{path}: line {line}: id {image_id} is in two splits "
                    f"({assigned[image_id]} and {split})"
                )
            assigned[image_id] = split
    else:
        raise DataError(
            f"{path}: split file not found (expected a CSV with an id and a 'split' column, "
            f"or a directory with train.csv, val.csv, test.csv)"
        )
    unknown = sorted(i for i in assigned if i not in known)
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} id(s) in the split file are not in the dataset, "
            f"e.g. {unknown[:10]}"
        )
    return assigned


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (stripped names) and (line number, row) pairs; header is line 1."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) < len(header):
                    row = row + [""] * (len(header) - len(row))
                rows.append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from e
    return header, rows


def _id_column(path: Path, header: list[str]) -> int:
    for name in SPLIT_ID_COLUMNS:
        if name in header:
            return header.index(name)
    raise DataError(
        f"{path}: no id column; expected one of {list(SPLIT_ID_COLUMNS)}, found {header}"
    )


# --------------------------------------------------------------------------- cache


def match_labels_to_dicoms(
    labels: Mapping, dicoms: Mapping, *, label_csv, id_name: str, where_missing: str,
    dicom_dir, expected_layout: str, strict: bool, kind: str = "DICOM", suffix: str = ".dcm",
) -> tuple[list[str], list[str], list[str]]:
    """(matched, label ids without a DICOM, DICOM ids without labels), all sorted.

    Label ids without a DICOM are a warning (skipped, counted in the manifest) or, with
    ``strict``, an error naming the label file; no match at all is always an error.
    """
    matched = sorted(set(dicoms) & set(labels))
    without_dicom = sorted(set(labels) - set(dicoms))
    without_labels = sorted(set(dicoms) - set(labels))
    if without_dicom:
        msg = (
            f"{label_csv}: {len(without_dicom)} {id_name}(s) have no {kind} {where_missing}, "
            f"e.g. {without_dicom[:10]}"
        )
        if strict:
            raise DataError(msg)
        warnings.warn(msg + " (skipped)", stacklevel=4)
    if not matched:
        raise DataError(
            f"{label_csv}: none of its {len(labels)} {id_name}s matches a {kind} "
            f"file name under {dicom_dir} ({len(dicoms)} {suffix} files); {expected_layout}"
        )
    return matched, without_dicom, without_labels


def ground_truth_splits(
    gt: Mapping[str, dict], split_file=None, ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, str]:
    """{image id: split} for a task's ground-truth entries (each with a ``patient_id``):
    the split `split_indices` gives the same ids, or the one of an external split file."""
    if split_file is not None:
        return load_split_file(split_file, list(gt))
    return assign_splits(list(gt), {i: e["patient_id"] for i, e in gt.items()}, ratios)


@dataclass
class Prepared:
    """A prepared (cached) dataset: fixed-size arrays plus bookkeeping, in cache order."""

    root: Path
    cache_dir: Path
    task: str
    image_size: int
    ids: list[str]
    groups: list[str]  # patient id per image (image id when the header has none)
    images: np.ndarray  # uint8 (N, S, S), memory-mapped
    masks: np.ndarray | None  # uint8 {0,1} (N, S, S), memory-mapped, or None
    orig_sizes: list[tuple[int, int]]  # (height, width) of the label frame (the source DICOM)
    manifest: dict
    synthetic: bool
    # detection tasks: per image a float32 (M, 4) xyxy array in the image_size pixel
    # frame ((0, 4) for an image without boxes); None for tasks without boxes (SIIM)
    boxes: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def check_strict(prepared: Prepared, strict: bool) -> None:
    """Under ``--strict``, DICOMs skipped as corrupt (now or when the cache was built) are fatal."""
    skipped = prepared.manifest["skipped_corrupt"]
    if strict and skipped:
        raise DataError(
            f"{skipped[0]['path']}: {len(skipped)} corrupt DICOM(s) (strict mode): {skipped[0]['error']}"
        )


def cache_key(
    task: str, image_size: int, key_material: dict, files: Iterable[Path], root: Path
) -> str:
    """sha256 over everything a cache's content depends on.

    key_material: task-specific settings (label file sha256, rle format, ...).
    files: source files whose (relative path, size, mtime_ns) are hashed, sorted.
    """
    root = Path(root).resolve()
    h = hashlib.sha256()
    head = {
        "format_version": CACHE_FORMAT_VERSION,
        "task": task,
        "image_size": int(image_size),
        "root": str(root),
        "material": key_material,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for rel, size, mtime in sorted(_file_stats(files, root)):
        h.update(f"\n{rel}\t{size}\t{mtime}".encode())
    return h.hexdigest()[:32]


def _file_stats(files: Iterable[Path], root: Path):
    for f in files:
        st = os.stat(f)
        yield (relative_path(f, root), st.st_size, st.st_mtime_ns)


def cache_dir_for(task: str, key: str) -> Path:
    return cache_root() / "prepared" / task / key


def load_prepared(cache_dir: Path) -> Prepared | None:
    """Open a finished cache (None if absent or from another format version)."""
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format_version") != CACHE_FORMAT_VERSION:
        return None
    items = manifest["items"]
    try:
        images = np.load(cache_dir / "images.npy", mmap_mode="r")
        masks = np.load(cache_dir / "masks.npy", mmap_mode="r") if manifest["has_masks"] else None
        boxes = (
            _load_boxes(cache_dir / BOXES_FILE, len(items)) if manifest.get("has_boxes") else None
        )
    except (OSError, ValueError, KeyError):
        return None  # damaged by hand: treated as absent and rebuilt
    return Prepared(
        root=Path(manifest["source_root"]),
        cache_dir=cache_dir,
        task=manifest["task"],
        image_size=int(manifest["image_size"]),
        ids=[it["id"] for it in items],
        groups=[it["patient_id"] or it["id"] for it in items],
        images=images,
        masks=masks,
        orig_sizes=[tuple(it["orig_size"]) for it in items],
        manifest=manifest,
        synthetic=bool(manifest.get("synthetic")),
        boxes=boxes,
    )


def _save_boxes(path: Path, boxes: list[np.ndarray]) -> None:
    """All images' boxes in one .npz: "boxes" (K, 4) float32 concatenated in cache order
    and "offsets" (N + 1,) int64, image i owning rows offsets[i]:offsets[i + 1]."""
    offsets = np.zeros(len(boxes) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in boxes])
    flat = np.concatenate(boxes, axis=0) if boxes else np.zeros((0, 4), np.float32)
    with open(path, "wb") as f:
        np.savez(f, boxes=flat.astype(np.float32).reshape(-1, 4), offsets=offsets)


def _load_boxes(path: Path, n: int) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, offsets = z["boxes"], z["offsets"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable box file ({e})") from e
    if (
        flat.ndim != 2
        or flat.shape[1] != 4
        or offsets.shape != (n + 1,)
        or offsets[-1] != len(flat)
    ):
        raise ValueError(f"{path}: inconsistent box arrays")
    return [flat[offsets[i] : offsets[i + 1]] for i in range(n)]


def scale_boxes(boxes, orig_size: tuple[int, int], image_size: int) -> np.ndarray:
    """xyxy boxes in a (height, width) image's pixels -> the image_size x image_size frame
    that `resize_image` produces (x scaled by image_size / width, y by image_size / height).
    Returns float32 (M, 4)."""
    h, w = orig_size
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = np.array([image_size / w, image_size / h, image_size / w, image_size / h])
    return (b * scale).astype(np.float32)


def build_cache(
    cache_dir: Path,
    *,
    task: str,
    root: Path,
    items: list[dict],
    image_size: int,
    load_item: Callable[[dict], dict],
    manifest_extra: dict | None = None,
    has_masks: bool = False,
    has_boxes: bool = False,
    finalize: Callable[[dict], None] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> Prepared:
    """Decode every item once, resize to image_size, store arrays + manifest.json.

    items: dicts with at least "id" and "path" (the source DICOM, under root).
    load_item(item) -> {"image": uint8 (H, W), "mask": uint8 (any size) or None,
    "patient_id": str | None, "meta": dict merged into the manifest's item record,
    optionally "orig_size": (h, w) of the label frame when it is not the image's}, plus,
    with has_boxes=True, "boxes": float (M, 4) xyxy already in the image_size frame
    (see `scale_boxes`), stored in boxes.npz and loaded as `Prepared.boxes`.
    finalize(manifest), when given, runs on the complete manifest (items included) just
    before it is written, so a task can add summaries computed from the item records.
    A DicomReadError from load_item skips the item (recorded under "skipped_corrupt",
    with a warning) or, with strict=True, is raised; any other error aborts the build.
    The build happens in a temporary sibling directory that is renamed into place only
    when complete, so an interrupted build never leaves a partial cache behind.
    """
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    s = int(image_size)
    root = Path(root).resolve()
    if not items:
        raise DataError(f"{root}: no {task} images to prepare")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{cache_dir.name}-", dir=cache_dir.parent))
    try:
        n = len(items)
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, s, s))
        masks = (
            np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (n, s, s))
            if has_masks
            else None
        )
        records, skipped, all_boxes = [], [], []
        bar = tqdm(items, desc=f"prepare {task} @{s}px", unit="img", disable=not progress)
        for item in bar:
            try:
                out = load_item(item)
            except DicomReadError as e:
                if strict:
                    raise
                warnings.warn(f"skipping corrupt DICOM: {e}", stacklevel=2)
                skipped.append(
                    {"id": item["id"], "path": relative_path(item["path"], root), "error": str(e)}
                )
                continue
            k = len(records)
            image = out["image"]
            images[k] = resize_image(image, s)
            if masks is not None:
                masks[k] = resize_mask(out["mask"], s)
            if has_boxes:
                all_boxes.append(_box_array(out.get("boxes"), item))
            records.append(
                {
                    "id": item["id"],
                    "patient_id": out.get("patient_id") or "",
                    "path": relative_path(item["path"], root),
                    # the frame labels and submissions use: the image's own size,
                    # unless load_item says otherwise (a downsized PNG re-export)
                    "orig_size": [int(v) for v in out.get("orig_size", image.shape[:2])],
                    **out.get("meta", {}),
                }
            )
        del images, masks  # flush and close the memmaps
        if not records:
            raise DataError(
                f"{root}: none of the {n} {task} DICOM files could be read; first error: "
                f"{skipped[0]['error']}"
            )
        if len(records) < n:
            _truncate_npy(tmp / "images.npy", len(records))
            if has_masks:
                _truncate_npy(tmp / "masks.npy", len(records))
        if has_boxes:
            _save_boxes(tmp / BOXES_FILE, all_boxes)
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "task": task,
            "key": cache_dir.name,
            "image_size": s,
            "source_root": str(root),
            "synthetic": is_synthetic(root),
            "has_masks": has_masks,
            **({"has_boxes": True, "boxes_file": BOXES_FILE} if has_boxes else {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(manifest_extra or {}),
            "items": records,
            "skipped_corrupt": skipped,
        }
        counts = dict(manifest.get("counts", {}))
        counts.update(n_images=len(records), n_skipped_corrupt=len(skipped))
        if "positive" in (records[0] if records else {}):
            counts["n_positive"] = sum(bool(r["positive"]) for r in records)
        manifest["counts"] = counts
        if finalize is not None:
            finalize(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _move_into_place(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prepared = load_prepared(cache_dir)
    assert prepared is not None
    return prepared


def _box_array(boxes, item: dict) -> np.ndarray:
    b = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    if b.size == 0:
        return np.zeros((0, 4), np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{item['id']}: boxes must have shape (M, 4), got {b.shape}")
    return b


def relative_path(path, root: Path) -> str:
    """path relative to root (POSIX style), or the absolute path when outside root."""
    p = Path(path).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _truncate_npy(path: Path, n: int) -> None:
    """Rewrite an .npy keeping its first n rows (used when corrupt files were skipped)."""
    src = np.load(path, mmap_mode="r")
    short = path.with_name(path.stem + f".short-{uuid.uuid4().hex}.npy")
    dst = np.lib.format.open_memmap(short, "w+", src.dtype, (n, *src.shape[1:]))
    dst[:] = src[:n]
    del dst, src
    os.replace(short, path)


def _move_into_place(tmp: Path, cache_dir: Path) -> None:
    """Atomically publish tmp as cache_dir (replacing a stale, unreadable one)."""
    if cache_dir.exists() and load_prepared(cache_dir) is None:
        shutil.rmtree(cache_dir, ignore_errors=True)
    try:
        os.replace(tmp, cache_dir)
    except OSError:
        # Another process published the same key first: keep theirs.
        if load_prepared(cache_dir) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) -> uint8 (size, size): area averaging when shrinking, bilinear when
    enlarging; aspect ratio is not preserved (source sizes are kept in the manifest)."""
    if image.shape == (size, size):
        return np.asarray(image, np.uint8)
    shrink = image.shape[0] >= size and image.shape[1] >= size
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), resample))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """{0,1} (H, W) -> {0,1} (size, size): area fraction (or bilinear) >= 0.5."""
    if mask.shape == (size, size):
        return (np.asarray(mask) > 0).astype(np.uint8)
    shrink = mask.shape[0] >= size and mask.shape[1] >= size
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    frac = Image.fromarray((np.asarray(mask) > 0).astype(np.float32))
    return (np.asarray(frac.resize((size, size), resample)) >= 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- split helpers


def split_indices(
    prepared: Prepared,
    split_file: str | os.PathLike | None = None,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> dict[str, list[int]]:
    """Cache indices per split ("train", "val", "test"), ascending (cache order).

    Without split_file: `assign_splits` over the image ids grouped by patient. With one:
    its assignment; images it does not list are left out (with a warning). Ids it lists
    that were skipped as corrupt during preparation are dropped with a warning.
    """
    if split_file is None:
        assignment = assign_splits(prepared.ids, dict(zip(prepared.ids, prepared.groups)), ratios)
    else:
        skipped = [s["id"] for s in prepared.manifest.get("skipped_corrupt", [])]
        assignment = load_split_file(split_file, [*prepared.ids, *skipped])
        dropped = sorted(set(assignment) & set(skipped))
        if dropped:
            warnings.warn(
                f"{split_file}: {len(dropped)} listed id(s) were skipped as corrupt: {dropped[:10]}",
                stacklevel=2,
            )
        unlisted = sum(i not in assignment for i in prepared.ids)
        if unlisted:
            warnings.warn(
                f"{split_file}: {unlisted} prepared image(s) are not in the split file and are excluded",
                stacklevel=2,
            )
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for index, image_id in enumerate(prepared.ids):
        split = assignment.get(image_id)
        if split is not None:
            out[split].append(index)
    return out


def fraction_indices(prepared: Prepared, train_idx: Iterable[int], fraction: float) -> list[int]:
    """The nested label fraction of the given train indices, ascending."""
    train_idx = list(train_idx)
    by_id = {prepared.ids[i]: i for i in train_idx}
    return sorted(by_id[i] for i in fraction_subset(list(by_id), fraction))
