"""RSNA Pneumonia Detection (Kaggle, stage 2): the official layout, its box labels, synthetic data.

Owns: finding and validating the dataset layout (design section 4), reading and
checking the box label CSV (and the optional detailed class info), clipping boxes that
stick out of their image (always reported, never silent), `prepare` (dataset -> cached
fixed-size images, xyxy boxes and box masks via `tasks.cache.build_cache`),
header-only ground truth for `bench evaluate`, and the synthetic generator that writes
the same layout (`synth`).

Layout::

    <root>/
      stage_2_train_images/<patientId>.dcm
      stage_2_train_labels.csv            patientId,x,y,width,height,Target
                                          one row per box; Target=0 rows have empty
                                          box fields; x, y = top-left corner, pixels
      stage_2_detailed_class_info.csv     (optional) patientId,class

Boxes: the CSV has (x, y, width, height) in the DICOM's pixels. Everything downstream
uses xyxy: `load_ground_truth` in original pixels, `Prepared.boxes` in the image_size
frame (`cache.scale_boxes`). `Prepared.masks` are the filled boxes at image_size
(`boxes_to_mask`), the target of the `linear` protocol (design section 5).
"""

from __future__ import annotations

import csv
import functools
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.util import sha256_file
from tasks import cache, errors, imageio, registry, siim, splits, synthetic
from tasks.cache import Prepared
from tasks.errors import DataError

TASK = "rsna"
IMAGE_DIR = "stage_2_train_images"
LABELS_CSV = "stage_2_train_labels.csv"
CLASS_CSV = "stage_2_detailed_class_info.csv"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
BOX_FIELDS = ("x", "y", "width", "height")
OPACITY = "Lung Opacity"
CLASSES = (OPACITY, "No Lung Opacity / Not Normal", "Normal")

EXPECTED_LAYOUT = f"""expected RSNA Pneumonia Detection (Kaggle stage 2) layout:
  <root>/
    {IMAGE_DIR}/<patientId>.dcm
    {LABELS_CSV}           (header '{",".join(LABEL_COLUMNS)}'; one row per box,
                                       Target=0 rows with empty box fields)
    {CLASS_CSV}    (optional; header '{",".join(CLASS_COLUMNS)}')"""

BoxRow = tuple[int, float, float, float, float]  # (CSV line, x, y, width, height)


# --------------------------------------------------------------------------- layout


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


# --------------------------------------------------------------------------- labels


def _empty(value: str) -> bool:
    return value.strip().lower() in ("", "nan")


def read_labels(csv_path) -> dict[str, list[BoxRow]]:
    """patientId -> [(line, x, y, width, height), ...] in file order; [] for negatives.

    Header is line 1. Every row is checked here and any problem is a DataError naming
    the file, the line and the patientId: wrong columns, Target other than 0/1, Target=1
    without a (complete) box, Target=0 with a box, non-numeric box fields, zero or
    negative width/height, and a patient with both Target=0 and Target=1 rows. Boxes
    outside the image are not an error here (the image size is not known yet); they
    are clipped and reported by `prepare` / `load_ground_truth`.
    """
    csv_path = Path(csv_path)
    labels: dict[str, list[BoxRow]] = {}
    first: dict[str, tuple[int, int]] = {}  # patientId -> (first line, its Target)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in LABEL_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{csv_path}: line 1: wrong columns: expected {list(LABEL_COLUMNS)} "
                    f"(header '{','.join(LABEL_COLUMNS)}'), found {header}; missing {missing}"
                )
            col = {name: header.index(name) for name in LABEL_COLUMNS}
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                line = reader.line_num
                pid = row[col["patientId"]].strip() if len(row) > col["patientId"] else ""
                where = f"{csv_path}: line {line}: patientId {pid or repr(pid)}"
                if len(row) < len(header):
                    raise DataError(
                        f"{where}: expected {len(header)} columns, got {len(row)}: {row}"
                    )
                if not pid:
                    raise DataError(f"{where}: empty patientId")
                target = _target(row[col["Target"]], where)
                fields = {name: row[col[name]] for name in BOX_FIELDS}
                given = [name for name, v in fields.items() if not _empty(v)]
                if target == 0:
                    if given:
                        raise DataError(
                            f"{where}: Target=0 but a box is given "
                            f"({', '.join(f'{n}={fields[n].strip()!r}' for n in given)}); "
                            f"negative rows must leave x, y, width, height empty"
                        )
                else:
                    if not given:
                        raise DataError(f"{where}: Target=1 but no box (x, y, width, height empty)")
                    if len(given) < len(BOX_FIELDS):
                        empty = [n for n in BOX_FIELDS if n not in given]
                        raise DataError(f"{where}: Target=1 with an incomplete box; empty: {empty}")
                if pid in first and first[pid][1] != target:
                    raise DataError(
                        f"{where}: Target={target} but line {first[pid][0]} has "
                        f"Target={first[pid][1]} for the same patient"
                    )
                first.setdefault(pid, (line, target))
                boxes = labels.setdefault(pid, [])
                if target == 1:
                    x, y, w, h = (_number(fields[n], n, where) for n in BOX_FIELDS)
                    if w <= 0 or h <= 0:
                        raise DataError(
                            f"{where}: box width and height must be positive, got "
                            f"width={w:g}, height={h:g}"
                        )
                    boxes.append((line, x, y, w, h))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: cannot read label CSV ({e})") from e
    return labels


def count_label_rows(csv_path) -> Counter:
    """patientId -> number of non-blank rows in a label CSV already checked by `read_labels`."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        col = header.index("patientId")
        return Counter(row[col].strip() for row in reader if row and any(c.strip() for c in row))


def _target(value: str, where: str) -> int:
    v = value.strip()
    if v not in ("0", "1"):
        raise DataError(f"{where}: Target must be 0 or 1, got {value!r}")
    return int(v)


def _number(value: str, name: str, where: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise DataError(f"{where}: {name} is not a number: {value!r}") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: {name} is not a finite number: {value!r}")
    return x


def read_class_info(csv_path) -> dict[str, tuple[int, str]]:
    """patientId -> (first line, class) from stage_2_detailed_class_info.csv.

    Kaggle repeats a patient's row once per box; repeats must agree. Unknown classes,
    wrong columns and disagreeing repeats are DataErrors naming file, line, patientId.
    """
    csv_path = Path(csv_path)
    out: dict[str, tuple[int, str]] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if any(c not in header for c in CLASS_COLUMNS):
                raise DataError(
                    f"{csv_path}: line 1: wrong columns: expected {list(CLASS_COLUMNS)} "
                    f"(header '{','.join(CLASS_COLUMNS)}'), found {header}"
                )
            id_col, cls_col = header.index("patientId"), header.index("class")
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                line = reader.line_num
                if len(row) <= max(id_col, cls_col):
                    raise DataError(
                        f"{csv_path}: line {line}: expected {len(header)} columns, got {row}"
                    )
                pid, cls = row[id_col].strip(), row[cls_col].strip()
                where = f"{csv_path}: line {line}: patientId {pid or repr(pid)}"
                if not pid:
                    raise DataError(f"{where}: empty patientId")
                if cls not in CLASSES:
                    raise DataError(f"{where}: class {cls!r} is not one of {list(CLASSES)}")
                if pid in out and out[pid][1] != cls:
                    raise DataError(
                        f"{where}: class {cls!r} but line {out[pid][0]} says {out[pid][1]!r}"
                    )
                out.setdefault(pid, (line, cls))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: cannot read class info CSV ({e})") from e
    return out


def _check_classes(labels: dict, classes: dict, label_csv: Path, class_csv: Path) -> None:
    """'Lung Opacity' exactly for the patients with Target=1 (as in the Kaggle files)."""
    for pid in sorted(set(labels) & set(classes)):
        line, cls = classes[pid]
        positive = bool(labels[pid])
        if (cls == OPACITY) != positive:
            raise DataError(
                f"{class_csv}: line {line}: patientId {pid}: class {cls!r} contradicts "
                f"{label_csv.name} (Target={int(positive)})"
            )


def _scan(root, strict: bool) -> dict:
    """Layout + DICOM files + labels (+ classes), matched by patientId, mismatches listed."""
    layout = find_layout(root)
    dicoms = find_dicoms(layout["dicom_dir"])
    labels = read_labels(layout["label_csv"])
    classes = None
    if layout["class_csv"] is not None:
        classes = read_class_info(layout["class_csv"])
        _check_classes(labels, classes, layout["label_csv"], layout["class_csv"])
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


# --------------------------------------------------------------------------- boxes


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


def _warn_boxes(clipped: list[dict], dropped: list[dict], label_csv, where: str | None) -> None:
    """One warning for clipped boxes, one for dropped ones; where = the manifest listing them."""
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


# --------------------------------------------------------------------------- prepare


def prepare(
    root,
    image_size: int,
    *,
    strict: bool = False,
    progress: bool = True,
) -> Prepared:
    """Dataset at root -> cached uint8 images, xyxy boxes and box masks at image_size.

    Boxes are clipped to their DICOM's Rows x Columns (reported: warning + manifest
    'boxes_clipped' / 'boxes_dropped'), then scaled with the image into the
    image_size pixel frame (`Prepared.boxes`, float32 (M, 4) xyxy, (0, 4) for
    negatives); `Prepared.masks` are those boxes filled (`boxes_to_mask`). The cache is
    reused when nothing it depends on changed (label and class-info CSV contents, the
    DICOM files, image_size). strict=True turns skipped corrupt DICOMs and label ids
    without DICOM into errors; label errors are errors in any mode.
    """
    scan = _scan(root, strict)
    root = scan["root"].resolve()
    label_csv = scan["label_csv"].resolve()
    class_csv = scan["class_csv"].resolve() if scan["class_csv"] is not None else None
    material = {
        "label_file": label_csv.name,
        "label_sha256": sha256_file(label_csv),
        "class_file": class_csv.name if class_csv else None,
        "class_sha256": sha256_file(class_csv) if class_csv else None,
        "boxes": "xyxy-clip-scale-v1",
    }
    key = cache.cache_key(TASK, image_size, material, scan["dicoms"].values(), root)
    cache_dir = cache.cache_dir_for(TASK, key)
    prepared = cache.load_prepared(cache_dir)
    if prepared is None:
        classes = scan["classes"]
        items = [
            {
                "id": i,
                "path": scan["dicoms"][i],
                "rows": scan["labels"][i],
                "n_label_rows": scan["row_counts"][i],
                "class": classes[i][1] if classes is not None and i in classes else None,
            }
            for i in scan["matched"]
        ]
        extra = {
            "label_file": str(label_csv),
            "label_sha256": material["label_sha256"],
            "class_file": str(class_csv) if class_csv else None,
            "class_sha256": material["class_sha256"],
            "box_format": "xyxy",
            "box_frame": "image_size pixels: x scaled by image_size/Columns, y by image_size/Rows",
            "mask_source": "filled boxes at image_size (pixel centre inside a box)",
            "counts": {
                "n_label_rows": sum(scan["row_counts"].values()),
                "n_label_ids": len(scan["labels"]),
                "n_label_boxes": sum(len(v) for v in scan["labels"].values()),
                "n_dicoms": len(scan["dicoms"]),
                "n_label_ids_without_dicom": len(scan["without_dicom"]),
                "n_dicoms_without_labels": len(scan["without_labels"]),
                "n_label_ids_without_class": len(scan["without_class"]),
            },
            "label_ids_without_dicom": scan["without_dicom"],
            "dicoms_without_labels": [
                cache.relative_path(scan["dicoms"][i], root) for i in scan["without_labels"]
            ],
        }
        load = functools.partial(_load_item, image_size=int(image_size))
        prepared = cache.build_cache(
            cache_dir,
            task=TASK,
            root=root,
            items=items,
            image_size=image_size,
            load_item=load,
            manifest_extra=extra,
            has_masks=True,
            has_boxes=True,
            finalize=functools.partial(_finalize, has_classes=classes is not None),
            strict=strict,
            progress=progress,
        )
    m = prepared.manifest
    _warn_boxes(
        m["boxes_clipped"], m["boxes_dropped"], label_csv, prepared.cache_dir / "manifest.json"
    )
    cache.check_strict(prepared, strict)
    return prepared


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


# --------------------------------------------------------------------------- evaluation helpers


def load_ground_truth(root, *, progress: bool = False) -> dict:
    """Ground truth at original resolution from the label CSV + DICOM headers only.

    Returns {patientId: {"boxes": float64 (M, 4) xyxy in original pixels (clipped to
    the image, as in `prepare`), "lines": CSV lines of the kept boxes, "height",
    "width", "patient_id", "path", "class"}} for every labelled DICOM whose header is
    readable. Uses the same ids and patient ids as `prepare`, so `ground_truth_splits`
    reproduces the training split; a file with a readable header but corrupt pixel data
    is kept here while `prepare` skips it.
    """
    scan = _scan(root, strict=False)
    classes = scan["classes"] or {}
    out, all_clipped, all_dropped = {}, [], []
    for pid in tqdm(scan["matched"], desc="read headers", disable=not progress):
        path = scan["dicoms"][pid]
        try:
            header = imageio.read_dicom_header(path)
        except errors.DicomReadError as e:
            warnings.warn(f"skipping unreadable DICOM header: {e}", stacklevel=2)
            continue
        rows = scan["labels"][pid]
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
    _warn_boxes(all_clipped, all_dropped, scan["label_csv"], None)
    return out


ground_truth_splits = splits.ground_truth_splits


# --------------------------------------------------------------------------- synthetic data

_STREAM = 0x52534E41  # "RSNA": a random stream of its own, apart from every SIIM namespace
_UID_BASE = 300000
_NEGATIVE_SHARE = 2 / 3
_TWO_BOX_SHARE = 0.3

_MARKER_TEXT = """SYNTHETIC DATA - NOT REAL PATIENT IMAGES

This folder was written by cxrbench (bench synth --task rsna). It imitates the layout
of the RSNA Pneumonia Detection Challenge (Kaggle, stage 2) dataset so that every code
path can be exercised without the real data. Images are procedurally generated
chest-X-ray-like pictures; "pneumonia" is a bright, blurry, roughly elliptical
opacity inside a lung field, and each box is the tight bounding box of one opacity.
Numbers obtained on this data say nothing about real clinical performance.

seed={seed} n={n} size={size}
"""


def synth_records(n: int = 200, seed: int = 0, size: int = 1024) -> Iterator[dict]:
    """Generate the synthetic cases (deterministic from n, seed, size).

    Yields dicts: patient_id (uuid-like, also the DICOM PatientID), sop_uid,
    study_uid, series_uid, storage ("plain", "rle", "jpeg", "mono1", "rescale"), image
    (uint8 (size, size): exactly what reading the written DICOM gives back, except for
    JPEG's lossy error), boxes (list of integer (x, y, width, height), one per opacity,
    [] for negatives), regions (the opacities' {0,1} support masks; each box is the
    tight bounding box of its region) and class (the detailed class info).
    About two thirds are negatives (half "Normal", half "No Lung Opacity / Not
    Normal"); about 30% of the positives have two opacities, one per lung.
    """
    rng = np.random.default_rng([_STREAM, seed])
    n = int(n)
    storage = siim._assign_storage(rng, n)
    n_neg = round(_NEGATIVE_SHARE * n)
    order = rng.permutation(n)
    negative = np.zeros(n, bool)
    negative[order[:n_neg]] = True
    positives = order[n_neg:]
    n_two = max(1, round(_TWO_BOX_SHARE * len(positives))) if len(positives) >= 3 else 0
    two = np.zeros(n, bool)
    two[positives[:n_two]] = True
    not_normal = rng.random(n) < 0.5
    patients = [siim._uuid(rng) for _ in range(n)]
    stamps = rng.integers(100, 1000, n), rng.integers(100002, 999999, n)
    for i in range(n):
        case_rng = np.random.default_rng([_STREAM, seed, i])
        if negative[i]:
            sides = []
        elif two[i]:
            sides = [-1, 1]
        else:
            sides = [int(case_rng.choice([-1, 1]))]
        lesion = _Opacities(sides)
        image, _ = siim._render(case_rng, size, [], lesion=lesion)
        tail = f"8323329.{_UID_BASE + i}.1517874{stamps[0][i]}"
        r = int(stamps[1][i])
        if sides:
            cls = OPACITY
        else:
            cls = CLASSES[1] if not_normal[i] else "Normal"
        yield {
            "patient_id": patients[i],
            "sop_uid": f"1.2.276.0.7230010.3.1.4.{tail}.{r}",
            "study_uid": f"1.2.276.0.7230010.3.1.2.{tail}.{r - 1}",
            "series_uid": f"1.2.276.0.7230010.3.1.3.{tail}.{r - 2}",
            "storage": str(storage[i]),
            "image": siim._fit_storage(image, storage[i]),
            "boxes": lesion.boxes,
            "regions": lesion.regions,
            "class": cls,
        }


class _Opacities:
    """`siim._render` lesion hook: one pneumonia-like opacity per side in `sides`.

    A rotated ellipse (axes 11-24% x 12-28% of the image side, so boxes are 10-30% of
    it) inside the lung field, 40-60 grey levels brighter at its core, fading smoothly
    to nothing at its outline, with a patchy texture. Its support (pixels whose centre
    is inside the ellipse) gives the region mask and the integer box.
    """

    def __init__(self, sides: list[int]):
        self.sides = sides
        self.boxes: list[tuple[int, int, int, int]] = []
        self.regions: list[np.ndarray] = []

    def __call__(self, rng: np.random.Generator, img: np.ndarray, scene: dict) -> np.ndarray:
        if not self.sides:
            return img
        size, xx, yy = scene["size"], scene["xx"], scene["yy"]
        texture = np.clip(0.8 + 0.25 * siim._smooth_noise(rng, size, 12), 0.4, 1.2)
        for side, lcx, lcy, ax, ay in scene["lungs"]:
            if side not in self.sides:
                continue
            ox, oy = rng.uniform(0.055, 0.12), rng.uniform(0.06, 0.14)
            theta = rng.uniform(-0.45, 0.45)
            ocx = lcx + side * rng.uniform(-0.15, 0.45) * ax
            ocy = lcy + rng.uniform(-0.3, 0.55) * ay
            amplitude = rng.uniform(40, 60)
            dx, dy = xx - ocx, yy - ocy
            u = dx * np.cos(theta) + dy * np.sin(theta)
            v = -dx * np.sin(theta) + dy * np.cos(theta)
            e = np.sqrt((u / ox) ** 2 + (v / oy) ** 2)
            t = np.clip((1 - e) / 0.45, 0, 1)
            img = img + amplitude * t * t * (3 - 2 * t) * texture
            region = e < 1
            rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
            x, y = int(cols[0]), int(rows[0])
            self.boxes.append((x, y, int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y))
            self.regions.append(region.astype(np.uint8))
        return img


def synth(out, n: int = 200, seed: int = 0, size: int = 1024, progress: bool = True) -> dict:
    """Write a synthetic RSNA Pneumonia dataset in the official Kaggle stage 2 layout.

    stage_2_train_images/<patientId>.dcm + stage_2_train_labels.csv (one row per box,
    x/y/width/height as floats like "264.0", Target=0 rows with empty box fields) +
    stage_2_detailed_class_info.csv (one row per label row, as on Kaggle) +
    SYNTHETIC_DATA.txt. Returns a summary dict.
    """
    out = Path(out)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    synthetic.write_synthetic_marker(out, _MARKER_TEXT.format(seed=seed, n=n, size=size))
    label_lines = [",".join(LABEL_COLUMNS)]
    class_lines = [",".join(CLASS_COLUMNS)]
    storage: dict[str, int] = {}
    classes: Counter = Counter()
    n_pos = n_two = n_boxes = 0
    records = synth_records(n, seed, size)
    for rec in tqdm(records, total=n, desc="synth rsna", unit="img", disable=not progress):
        pid, kind = rec["patient_id"], rec["storage"]
        imageio.write_dicom(
            out / IMAGE_DIR / f"{pid}.dcm",
            rec["image"],
            patient_id=pid,
            sop_uid=rec["sop_uid"],
            study_uid=rec["study_uid"],
            series_uid=rec["series_uid"],
            **siim._storage_kwargs(kind),
        )
        storage[kind] = storage.get(kind, 0) + 1
        classes[rec["class"]] += 1
        n_pos += bool(rec["boxes"])
        n_two += len(rec["boxes"]) > 1
        n_boxes += len(rec["boxes"])
        for box in rec["boxes"]:
            label_lines.append(f"{pid},{','.join(f'{float(v):.1f}' for v in box)},1")
        if not rec["boxes"]:
            label_lines.append(f"{pid},,,,,0")
        class_lines += [f"{pid},{rec['class']}"] * max(len(rec["boxes"]), 1)
    (out / LABELS_CSV).write_text("\n".join(label_lines) + "\n")
    (out / CLASS_CSV).write_text("\n".join(class_lines) + "\n")
    return {
        "task": TASK,
        "out": str(out),
        "seed": seed,
        "size": size,
        "n_images": n,
        "n_positive": n_pos,
        "n_negative": n - n_pos,
        "n_two_boxes": n_two,
        "n_boxes": n_boxes,
        "n_label_rows": len(label_lines) - 1,
        "classes": dict(sorted(classes.items())),
        "storage": dict(sorted(storage.items())),
        "label_file": LABELS_CSV,
        "class_file": CLASS_CSV,
    }


# --------------------------------------------------------------------------- the task spec


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


def _check_submission(text: str, where: str) -> None:
    parse_prediction_string(text, where)


def _parse_submission(rows, entry: dict, where: str) -> dict:
    """The one PredictionString row of a patientId -> boxes (xyxy) and scores."""
    if len(rows) > 1:
        raise DataError(
            f"{where}, line {rows[1][0]}: patientId listed twice (put all boxes in one PredictionString)"
        )
    boxes, scores = parse_prediction_string(rows[0][1], f"{where}, line {rows[0][0]}")
    return {"boxes": boxes, "scores": scores}


def _format_submission(pred: dict) -> str:
    """Boxes xyxy + scores in original pixels -> "conf x y w h conf x y w h ..."."""
    parts = []
    for (x1, y1, x2, y2), score in zip(np.asarray(pred["boxes"]).tolist(), np.asarray(pred["scores"]).tolist()):
        parts.append(f"{score:.4f} {x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f}")
    return " ".join(parts)


SPEC = registry.register(
    registry.TaskSpec(
        name=TASK,
        title="RSNA pneumonia detection",
        # linear = linear segmentation of the box masks, as LoVT does (design section 5)
        outputs={"linear": "mask", "frozen": "boxes", "finetune": "boxes"},
        metrics={"mask": ("dice", "dice_pooled", "dice_pos"),
                 "boxes": ("map", "map50", "map75", "rsna_score")},
        prepare=prepare,
        synth=synth,
        load_ground_truth=load_ground_truth,
        target=lambda entry: {"boxes": entry["boxes"]},
        submission=registry.SubmissionFormat(
            id_column="patientId",
            value_column="PredictionString",
            check=_check_submission,
            parse=_parse_submission,
            format=_format_submission,
        ),
        submission_kind="boxes",
        layout=EXPECTED_LAYOUT,
    )
)
