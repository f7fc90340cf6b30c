"""SIIM-ACR pneumothorax segmentation: the official Kaggle layout, its RLE, and synthetic data.

Owns: `rle_decode` / `rle_encode` / `is_negative` (the one negative-mask check,
design section 8.2), finding and validating the dataset layout (design section 4),
reading the label CSV, `prepare` (dataset -> cached fixed-size arrays via
`tasks.cache.build_cache`), header-only ground truth for `bench evaluate`, and the
synthetic generator that writes the same layout (`synth`, `synth_pretrain`).

Layout (stage 1, what GLoRIA / MGCA / LoVT read)::

    <root>/
      dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm
      train-rle.csv            header "ImageId, EncodedPixels"; relative RLE
      (or stage_2_train.csv    header "ImageId,EncodedPixels"; RLE format must be chosen)

PNG re-exports (public copies that replaced the DICOMs by ``<ImageId>.png``, possibly
downsized) are read when there is no DICOM folder: the PNGs under one of
``PNG_DIRS`` plus the same label CSV. The RLE still describes the 1024x1024 originals,
so masks are decoded at ``PNG_RLE_SIZE`` and resized to the PNG; a PNG has no
PatientID, so each image is its own split group (recorded in the manifest).
"""

from __future__ import annotations

import csv
import functools
import math
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.util import sha256_file
from tasks import cache, errors, imageio, registry, splits, synthetic
from tasks.cache import Prepared
from tasks.errors import DataError

TASK = "siim"
DICOM_DIR = "dicom-images-train"
STAGE1_CSV = "train-rle.csv"
STAGE2_CSV = "stage_2_train.csv"
RLE_FORMATS = ("relative", "absolute")
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

_INT = re.compile(r"-?[0-9]+")


# --------------------------------------------------------------------------- RLE


def is_negative(rle) -> bool:
    """The single check for "no pneumothorax": None, NaN, "", "-1", " -1" (any spacing)."""
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return str(rle).strip() in ("", "-1")


def _runs(rle: str, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an RLE string into 0-based flat (column-major) run starts and lengths.

    Validates syntax only (integers, even count, no negative offsets/lengths, 1-based
    absolute starts); the image-size bound is checked by `rle_decode`.
    """
    if fmt not in RLE_FORMATS:
        raise ValueError(f"RLE format must be one of {RLE_FORMATS}, not {fmt!r}")
    tokens = str(rle).split()
    for t in tokens:
        if not _INT.fullmatch(t):
            raise ValueError(f"RLE has a non-integer value {t!r}")
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)}); expected pairs")
    values = np.array(tokens, dtype=np.int64).reshape(-1, 2)
    first, lengths = values[:, 0], values[:, 1]
    if (lengths < 0).any():
        raise ValueError(f"RLE has a negative run length ({lengths.min()})")
    if fmt == "relative":
        if (first < 0).any():
            raise ValueError(f"relative RLE has a negative offset ({first.min()})")
        ends = np.cumsum(first + lengths)
        return ends - lengths, lengths
    if (first < 1).any():
        raise ValueError(f"absolute RLE starts are 1-based; found start {first.min()}")
    return first - 1, lengths


def rle_decode(rle: str, height: int, width: int, fmt: str = "relative") -> np.ndarray:
    """Decode a SIIM RLE string to a uint8 {0,1} mask of shape (height, width).

    fmt="relative" (train-rle.csv, Kaggle's mask_functions.py): pairs (offset, length),
    each offset counted from the end of the previous run (the first from 0).
    fmt="absolute" (standard Kaggle RLE): pairs (1-based start, length).
    Both index a flat array in column-major order (flat array reshaped (width, height)
    then transposed). Negative strings (see `is_negative`) give an empty mask.
    Raises ValueError on malformed input or a run past the end of the image.
    """
    n = int(height) * int(width)
    if is_negative(rle):
        return np.zeros((height, width), np.uint8)
    starts, lengths = _runs(rle, fmt)
    ends = starts + lengths
    if len(ends) and ends.max() > n:
        raise ValueError(
            f"RLE run ends at pixel {int(ends.max())}, past the end of the "
            f"{height}x{width} image ({n} pixels)"
        )
    edges = np.zeros(n + 1, np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    flat = np.cumsum(edges[:-1]) > 0
    return np.ascontiguousarray(flat.reshape(width, height).T).astype(np.uint8)


def rle_encode(mask: np.ndarray, fmt: str = "relative") -> str:
    """Inverse of `rle_decode`: mask (H, W), nonzero = positive -> RLE string; empty -> "-1"."""
    if fmt not in RLE_FORMATS:
        raise ValueError(f"RLE format must be one of {RLE_FORMATS}, not {fmt!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs a 2-D mask, got shape {mask.shape}")
    flat = (mask.T.reshape(-1) != 0).astype(np.int8)
    edges = np.diff(np.concatenate(([0], flat, [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return "-1"
    first = starts - np.concatenate(([0], ends[:-1])) if fmt == "relative" else starts + 1
    return " ".join(map(str, np.column_stack((first, ends - starts)).ravel().tolist()))


def decode_rows(rles: list[str], height: int, width: int, fmt: str = "relative") -> np.ndarray:
    """OR the masks of several RLE rows of one image."""
    mask = np.zeros((height, width), np.uint8)
    for rle in rles:
        mask |= rle_decode(rle, height, width, fmt)
    return mask


# --------------------------------------------------------------------------- layout


def find_layout(root, rle_format: str | None = None) -> dict:
    """Locate the DICOM folder and label CSV under root; decide the RLE format.

    train-rle.csv wins over stage_2_train.csv and defaults to relative RLE;
    stage_2_train.csv alone requires an explicit rle_format.
    Returns {"root", "dicom_dir", "label_csv", "rle_format"}.
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
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if "ImageId" not in header or "EncodedPixels" not in header:
                raise DataError(
                    f"{csv_path}: expected columns 'ImageId' and 'EncodedPixels' "
                    f"(header 'ImageId, EncodedPixels'); found {header}"
                )
            id_col, rle_col = header.index("ImageId"), header.index("EncodedPixels")
            labels: dict[str, list[tuple[int, str]]] = {}
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                line = reader.line_num
                if len(row) <= max(id_col, rle_col):
                    raise DataError(
                        f"{csv_path}: line {line}: expected {len(header)} columns, got {row}"
                    )
                image_id, rle = row[id_col].strip(), row[rle_col].strip()
                if not image_id:
                    raise DataError(f"{csv_path}: line {line}: empty ImageId")
                if not is_negative(rle):
                    try:
                        _runs(rle, rle_format)
                    except ValueError as e:
                        raise DataError(
                            f"{csv_path}: line {line}: ImageId {image_id}: {e}"
                        ) from None
                labels.setdefault(image_id, []).append((line, rle))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: cannot read label CSV ({e})") from e
    return labels


def _scan(root, rle_format: str | None, strict: bool) -> dict:
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


# --------------------------------------------------------------------------- prepare


def prepare(
    root,
    image_size: int,
    *,
    rle_format: str | None = None,
    strict: bool = False,
    progress: bool = True,
) -> Prepared:
    """Dataset at root -> cached uint8 images and {0,1} masks at image_size x image_size.

    Masks are decoded at each DICOM's own Rows x Columns, then resized (area >= 0.5).
    The cache is reused when nothing it depends on changed (see `cache.cache_key`).
    strict=True turns skipped corrupt DICOMs and label ids without DICOM into errors.
    """
    scan = _scan(root, rle_format, strict)
    root = scan["root"].resolve()
    label_csv = scan["label_csv"].resolve()
    material = {
        "label_file": label_csv.name,
        "label_sha256": sha256_file(label_csv),
        "rle_format": scan["rle_format"],
        "image_format": scan["image_format"],
    }
    key = cache.cache_key(TASK, image_size, material, scan["dicoms"].values(), root)
    cache_dir = cache.cache_dir_for(TASK, key)
    prepared = cache.load_prepared(cache_dir)
    if prepared is None:
        items = [
            {"id": i, "path": scan["dicoms"][i], "rows": scan["labels"][i]} for i in scan["matched"]
        ]
        extra = {
            "label_file": str(label_csv),
            "label_sha256": material["label_sha256"],
            "rle_format": scan["rle_format"],
            "image_format": scan["image_format"],
            "grouping": "PatientID from the DICOM header"
            if scan["image_format"] == "dicom"
            else f"ImageId (PNG re-export: no PatientID); RLE decoded at {PNG_RLE_SIZE}x{PNG_RLE_SIZE}",
            "counts": {
                "n_label_rows": sum(len(v) for v in scan["labels"].values()),
                "n_label_ids": len(scan["labels"]),
                "n_dicoms": len(scan["dicoms"]),
                "n_label_ids_without_dicom": len(scan["without_dicom"]),
                "n_dicoms_without_labels": len(scan["without_labels"]),
            },
            "label_ids_without_dicom": scan["without_dicom"],
            "dicoms_without_labels": [
                cache.relative_path(scan["dicoms"][i], root) for i in scan["without_labels"]
            ],
        }
        load = functools.partial(_load_item, label_csv=label_csv, fmt=scan["rle_format"])
        prepared = cache.build_cache(
            cache_dir,
            task=TASK,
            root=root,
            items=items,
            image_size=image_size,
            load_item=load,
            manifest_extra=extra,
            has_masks=True,
            strict=strict,
            progress=progress,
        )
    cache.check_strict(prepared, strict)
    return prepared


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


# --------------------------------------------------------------------------- evaluation helpers


def load_ground_truth(root, rle_format: str | None = None, *, progress: bool = False) -> dict:
    """Ground truth at original resolution from the label CSV + DICOM headers only.

    Returns {ImageId: {"rles": [str, ...], "lines": [int, ...], "height", "width",
    "patient_id", "path", "rle_format"}} for every labelled DICOM whose header is
    readable. Decode with `ground_truth_mask(entry)`. Uses the same ids and patient
    ids as `prepare`, so `ground_truth_splits` reproduces the training split; the only
    difference is that a file with a readable header but corrupt pixel data is kept
    here while `prepare` skips it.
    """
    scan = _scan(root, rle_format, strict=False)
    out = {}
    for image_id in tqdm(scan["matched"], desc="read headers", disable=not progress):
        path = scan["dicoms"][image_id]
        if scan["image_format"] == "png":  # the RLE's frame; no PatientID in a PNG
            header = {"rows": PNG_RLE_SIZE, "columns": PNG_RLE_SIZE, "patient_id": None}
        else:
            try:
                header = imageio.read_dicom_header(path)
            except errors.DicomReadError as e:
                warnings.warn(f"skipping unreadable DICOM header: {e}", stacklevel=2)
                continue
        rows = scan["labels"][image_id]
        out[image_id] = {
            "rles": [rle for _, rle in rows],
            "lines": [line for line, _ in rows],
            "height": header["rows"],
            "width": header["columns"],
            "patient_id": header["patient_id"] or "",
            "path": str(path),
            "rle_format": scan["rle_format"],
        }
    return out


def ground_truth_mask(entry: dict) -> np.ndarray:
    """Full-resolution {0,1} mask of one `load_ground_truth` entry."""
    return decode_rows(entry["rles"], entry["height"], entry["width"], entry["rle_format"])


ground_truth_splits = splits.ground_truth_splits


# --------------------------------------------------------------------------- synthetic data

_NAMESPACES = {"siim": (0, 1000), "siim-pretrain": (1, 600000)}  # rng stream, id number base
_STORAGE = (("rle", 0.10), ("jpeg", 0.10), ("mono1", 0.05), ("rescale", 0.05))
_RESCALE = (2.0, 4.0)  # slope, intercept; pixels made even and >= 4 so it round-trips

_MARKER_TEXT = """SYNTHETIC DATA - NOT REAL PATIENT IMAGES

This folder was written by cxrbench ({how}). It imitates the layout of the
SIIM-ACR Pneumothorax Segmentation (Kaggle) dataset so that every code path can be
exercised without the real data. Images are procedurally generated chest-X-ray-like
pictures; "pneumothorax" regions are dark crescents with a bright pleural line.
Numbers obtained on this data say nothing about real clinical performance.

seed={seed} n={n} size={size} namespace={namespace}
"""


def synth_records(
    n: int = 200, seed: int = 0, size: int = 1024, namespace: str = "siim"
) -> Iterator[dict]:
    """Generate the synthetic cases (deterministic from n, seed, size, namespace).

    Yields dicts: image_id, patient_id, study_uid, series_uid, storage ("plain", "rle",
    "jpeg", "mono1", "rescale"), image (uint8 (size, size): exactly what reading the
    written DICOM gives back, except for JPEG's lossy error), regions (list of {0,1}
    masks, one per RLE row; empty for negatives) and rles (the relative RLE strings).
    """
    stream, id_base = _NAMESPACES[namespace]
    rng = np.random.default_rng([stream, seed])
    n = int(n)
    storage = _assign_storage(rng, n)
    n_neg = round(n / 3)
    order = rng.permutation(n)
    negative = np.zeros(n, bool)
    negative[order[:n_neg]] = True
    positives = order[n_neg:]
    n_two = max(1, round(0.2 * len(positives))) if len(positives) >= 3 else 0
    two_regions = np.zeros(n, bool)
    two_regions[positives[:n_two]] = True
    patients = [_uuid(rng) for _ in range(n)]
    order = rng.permutation(n)
    for j in range(round(0.075 * n)):  # ~15% of images come in pairs from one patient
        patients[order[2 * j + 1]] = patients[order[2 * j]]
    stamps = rng.integers(100, 1000, n), rng.integers(100002, 999999, n)

    for i in range(n):
        case_rng = np.random.default_rng([stream, seed, i])
        if negative[i]:
            sides = []
        elif two_regions[i]:
            sides = [-1, 1]
        else:
            sides = [int(case_rng.choice([-1, 1]))]
        image, regions = _render(case_rng, size, sides)
        image = _fit_storage(image, storage[i])
        tail = f"8323329.{id_base + i}.1517875{stamps[0][i]}"
        r = int(stamps[1][i])
        yield {
            "image_id": f"1.2.276.0.7230010.3.1.4.{tail}.{r}",
            "study_uid": f"1.2.276.0.7230010.3.1.2.{tail}.{r - 1}",
            "series_uid": f"1.2.276.0.7230010.3.1.3.{tail}.{r - 2}",
            "patient_id": patients[i],
            "storage": str(storage[i]),
            "image": image,
            "regions": regions,
            "rles": [rle_encode(m) for m in regions],
        }


def _assign_storage(rng: np.random.Generator, n: int) -> np.ndarray:
    """Storage kind per case ("plain" or one of `_STORAGE`, each at least once when n allows)."""
    storage = np.array(["plain"] * n, dtype=object)
    order = rng.permutation(n)
    start = 0
    for kind, share in _STORAGE:
        k = max(1, round(share * n)) if n >= 2 * len(_STORAGE) else int(start < n)
        storage[order[start : start + k]] = kind
        start += k
    return storage


def _fit_storage(image: np.ndarray, kind: str) -> np.ndarray:
    """Make pixels exactly representable by the storage kind (rescale: even and >= 4)."""
    return np.maximum(image, 4) & np.uint8(0xFE) if kind == "rescale" else image


def _storage_kwargs(kind: str) -> dict:
    """`imageio.write_dicom` keyword arguments for a storage kind."""
    return {
        "compression": {"rle": "rle", "jpeg": "jpeg"}.get(kind),
        "monochrome1": kind == "mono1",
        "rescale": _RESCALE if kind == "rescale" else None,
    }


def _uuid(rng: np.random.Generator) -> str:
    h = rng.bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def _ellipse(xx, yy, cx, cy, ax, ay):
    """Normalised elliptic radius (1 on the boundary)."""
    return np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    coarse = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def _render(rng: np.random.Generator, size: int, ptx_sides: list[int], lesion=None):
    """One chest-X-ray-like image and one pneumothorax mask per side in ptx_sides.

    Dark background, bright body, two darker lung fields with rib arcs and smooth
    "lung markings", heart and spine shadows, noise. A pneumothorax is the crescent
    between the lung outline and a shrunken copy of it that still touches the outline at
    its medial-inferior edge (so the crescent is widest at the apex / lateral side): no
    markings or ribs, clearly darker, with a thin bright pleural line at its inner edge.

    lesion (used by other tasks' generators, e.g. `tasks.rsna`): optional callable
    `lesion(rng, img, scene) -> img` applied to the float image just before the final
    noise; scene = {"size", "xx", "yy" (pixel-centre coordinates in [0, 1], shapes
    (1, size) and (size, 1)), "lungs": [(side, cx, cy, ax, ay), ...] (lung ellipses)}.
    Without it the random stream, and so every SIIM image, is unchanged.
    """
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = c[:, None], c[None, :]
    cx, cy = 0.5 + rng.normal(0, 0.012), 0.56 + rng.normal(0, 0.012)
    bg, tissue = rng.uniform(8, 25), rng.uniform(150, 175)
    lung_level = rng.uniform(75, 95)
    body = np.clip(
        (1 - _ellipse(xx, yy, cx, cy, rng.uniform(0.40, 0.45), rng.uniform(0.5, 0.56))) / 0.06, 0, 1
    )
    img = bg + (tissue - bg + 25 * (yy - 0.5)) * body

    freq, phase = rng.uniform(8.5, 10.0), rng.uniform(0, 1)
    ribs = np.clip(
        (np.cos(2 * np.pi * ((yy + 0.9 * (xx - cx) ** 2) * freq + phase)) - 0.5) / 0.5, 0, 1
    )
    markings = 0.6 * _smooth_noise(rng, size, 10) + 0.4 * _smooth_noise(rng, size, 32)

    lung_soft = np.zeros((size, size), np.float32)
    ptx_region = np.zeros((size, size), bool)
    pleural_line = np.zeros((size, size), bool)
    regions, lungs = [], []
    for side in (-1, 1):
        lcx, lcy = cx + side * rng.uniform(0.16, 0.19), rng.uniform(0.43, 0.47)
        ax, ay = rng.uniform(0.115, 0.135), rng.uniform(0.26, 0.30)
        lungs.append((side, lcx, lcy, ax, ay))
        e = _ellipse(xx, yy, lcx, lcy, ax, ay)
        lung_soft = np.maximum(lung_soft, np.clip((1 - e) / 0.12, 0, 1))
        if side in ptx_sides:
            s = rng.uniform(0.6, 0.88)  # collapsed lung scale
            hx, hy = lcx - side * 0.8 * ax, lcy + 0.6 * ay  # medial-inferior edge
            ec = _ellipse(xx, yy, hx + s * (lcx - hx), hy + s * (lcy - hy), s * ax, s * ay)
            region = (e < 1) & (ec > 1)
            width = max(1.2 / size, 0.002) / (s * min(ax, ay))
            pleural_line |= (e < 1) & (np.abs(ec - 1) < width)
            ptx_region |= region
            regions.append(region.astype(np.uint8))

    lung_tex = ribs * 28 + markings * 9
    img = (
        img
        - (tissue - lung_level) * lung_soft
        + lung_tex * lung_soft
        + 8 * ribs * body * (1 - lung_soft)
    )
    heart = np.clip((1 - _ellipse(xx, yy, cx + 0.05, cy + 0.1, 0.13, 0.11)) / 0.3, 0, 1)
    spine = np.exp(-(((xx - cx) / 0.035) ** 2)) * body
    img = img + 45 * heart + 30 * spine
    if ptx_sides:
        ptx_level = lung_level - rng.uniform(22, 40)
        img = np.where(ptx_region, ptx_level + 2 * markings, img)
        img = np.where(pleural_line & ~ptx_region, img + 50, img)
    if lesion is not None:
        img = lesion(rng, img, {"size": size, "xx": xx, "yy": yy, "lungs": lungs})
    img = img + rng.normal(0, 3.0, (size, size))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), regions


def synth(out, n: int = 200, seed: int = 0, size: int = 1024, progress: bool = True) -> dict:
    """Write a synthetic SIIM-ACR dataset in the official Kaggle layout under out.

    dicom-images-train/<Study>/<Series>/<ImageId>.dcm + train-rle.csv ("ImageId,
    EncodedPixels", negatives " -1", relative RLE, one row per region) +
    SYNTHETIC_DATA.txt. Returns a summary dict.
    """
    return _write_set(out, n, seed, size, "siim", progress, labels_csv=False)


def synth_pretrain(
    out, n: int = 200, seed: int = 0, size: int = 1024, progress: bool = True
) -> dict:
    """A separate synthetic set for the demo's supervised pretraining.

    Same generator and layout as `synth` but another random stream and ImageId range
    (no image or patient shared with `synth` data), plus labels.csv with image-level
    labels (ImageId,Pneumothorax as 0/1).
    """
    return _write_set(out, n, seed, size, "siim-pretrain", progress, labels_csv=True)


def _write_set(out, n, seed, size, namespace, progress, labels_csv: bool) -> dict:
    out = Path(out)
    (out / DICOM_DIR).mkdir(parents=True, exist_ok=True)
    how = "bench synth --task siim" if namespace == "siim" else "tasks.siim.synth_pretrain"
    synthetic.write_synthetic_marker(
        out, _MARKER_TEXT.format(how=how, seed=seed, n=n, size=size, namespace=namespace)
    )
    csv_lines, label_lines = ["ImageId, EncodedPixels"], ["ImageId,Pneumothorax"]
    storage: dict[str, int] = {}
    n_pos = n_multi = 0
    patients = set()
    records = synth_records(n, seed, size, namespace)
    for rec in tqdm(records, total=n, desc="synth siim", unit="img", disable=not progress):
        kind = rec["storage"]
        imageio.write_dicom(
            out / DICOM_DIR / rec["study_uid"] / rec["series_uid"] / f"{rec['image_id']}.dcm",
            rec["image"],
            patient_id=rec["patient_id"],
            sop_uid=rec["image_id"],
            study_uid=rec["study_uid"],
            series_uid=rec["series_uid"],
            **_storage_kwargs(kind),
        )
        storage[kind] = storage.get(kind, 0) + 1
        patients.add(rec["patient_id"])
        n_pos += bool(rec["rles"])
        n_multi += len(rec["rles"]) > 1
        for rle in rec["rles"] or ["-1"]:
            csv_lines.append(f"{rec['image_id']}, {rle}")
        label_lines.append(f"{rec['image_id']},{int(bool(rec['rles']))}")
    (out / STAGE1_CSV).write_text("\n".join(csv_lines) + "\n")
    if labels_csv:
        (out / "labels.csv").write_text("\n".join(label_lines) + "\n")
    return {
        "task": TASK,
        "out": str(out),
        "namespace": namespace,
        "seed": seed,
        "size": size,
        "n_images": n,
        "n_positive": n_pos,
        "n_negative": n - n_pos,
        "n_multi_region": n_multi,
        "n_patients": len(patients),
        "n_label_rows": len(csv_lines) - 1,
        "storage": dict(sorted(storage.items())),
        "label_file": STAGE1_CSV,
        "rle_format": "relative",
    }


# --------------------------------------------------------------------------- the task spec


def _check_submission_rle(value: str, where: str, rle_format: str | None = None) -> None:
    if not is_negative(value):
        try:
            _runs(value, rle_format or "relative")
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None


def _parse_submission(rows, entry: dict, where: str, rle_format: str | None = None) -> np.ndarray:
    """All rows of one ImageId OR-ed into a bool mask at the image's original size."""
    fmt = entry.get("rle_format") or rle_format or "relative"
    mask = np.zeros((entry["height"], entry["width"]), dtype=bool)
    for line, rle in rows:
        try:
            mask |= rle_decode(rle, entry["height"], entry["width"], fmt).astype(bool)
        except ValueError as e:
            raise DataError(f"{where}, line {line}: {e}") from None
    return mask


def _format_submission(mask: np.ndarray, rle_format: str | None = None) -> str:
    return rle_encode(np.asarray(mask).astype(np.uint8), rle_format or "relative")


SPEC = registry.register(
    registry.TaskSpec(
        name=TASK,
        title="SIIM-ACR pneumothorax segmentation",
        outputs={"linear": "mask", "frozen": "mask", "finetune": "mask"},
        metrics={"mask": ("dice", "dice_pooled", "dice_pos")},
        prepare=prepare,
        synth=synth,
        load_ground_truth=load_ground_truth,
        target=lambda entry: ground_truth_mask(entry).astype(bool),
        submission=registry.SubmissionFormat(
            id_column="ImageId",
            value_column="EncodedPixels",
            check=_check_submission_rle,
            parse=_parse_submission,
            format=_format_submission,
        ),
        submission_kind="mask",
        options=(
            registry.TaskOption(
                name="rle_format",
                flag="--rle-format",
                choices=RLE_FORMATS,
                help="SIIM RLE convention of the labels (and of a submission): relative (stage 1 "
                "train-rle.csv, default) or absolute (some stage_2_train.csv copies)",
            ),
        ),
        layout=EXPECTED_LAYOUT,
    )
)
