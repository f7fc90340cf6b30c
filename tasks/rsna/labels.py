"""RSNA Pneumonia's label files: the box label CSV and the detailed class info.

Owns: the column and class constants, :func:`read_labels` (every row of
``stage_2_train_labels.csv`` checked, boxes as ``(line, x, y, width, height)``, a
repeated row counted once), :func:`count_label_rows`, :func:`read_class_info`
(``stage_2_detailed_class_info.csv``) and :func:`check_classes` (class info and Target
agree). Both files are read through :func:`tasks.csvfile.read_csv`; every error names
the file, the line and the patientId.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path

from tasks.csvfile import read_csv
from tasks.errors import DataError

LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
BOX_FIELDS = ("x", "y", "width", "height")
OPACITY = "Lung Opacity"
CLASSES = (OPACITY, "No Lung Opacity / Not Normal", "Normal")

BoxRow = tuple[int, float, float, float, float]  # (CSV line, x, y, width, height)
SHOWN_DUPLICATES = 10  # duplicate rows named in the warning / error (all are counted)


def read_labels(csv_path, *, strict: bool = False) -> dict[str, list[BoxRow]]:
    """patientId -> [(line, x, y, width, height), ...] in file order; [] for negatives.

    Header is line 1. Every row is checked here and any problem is a DataError naming
    the file, the line and the patientId: wrong columns, Target other than 0/1, Target=1
    without a (complete) box, Target=0 with a box, non-numeric box fields, zero or
    negative width/height, and a patient with both Target=0 and Target=1 rows. Boxes
    outside the image are not an error here (the image size is not known yet); they
    are clipped and reported by `prepare` / `load_ground_truth`.

    A row that repeats an earlier row of the same patient (the same box, compared as
    numbers, or a second Target=0 row) is counted once: the first row is kept and a
    warning names the repeated lines (the first :data:`SHOWN_DUPLICATES`), the line each
    repeats and how many there are; with ``strict=True`` it is a DataError instead.
    Without this, a repeated box is a second ground-truth box that no prediction can
    match twice (a perfect submission scored mAP 0.911).
    """
    table = read_csv(
        csv_path,
        LABEL_COLUMNS,
        what="label CSV",
        expected_header=",".join(LABEL_COLUMNS),
        id_column="patientId",
    )
    labels: dict[str, list[BoxRow]] = {}
    first: dict[str, tuple[int, int]] = {}  # patientId -> (first line, its Target)
    seen: dict[tuple, int] = {}  # (patientId, box or None) -> the line that gave it first
    repeats: list[tuple[int, int, str]] = []  # (line, first line, patientId)
    for line, row in table.rows:
        pid = row["patientId"].strip()
        where = f"{table.path}: line {line}: patientId {pid or repr(pid)}"
        if not pid:
            raise DataError(f"{where}: empty patientId")
        target = _target(row["Target"], where)
        fields = {name: row[name] for name in BOX_FIELDS}
        _check_box_given(fields, target, where)
        if pid in first and first[pid][1] != target:
            raise DataError(
                f"{where}: Target={target} but line {first[pid][0]} has "
                f"Target={first[pid][1]} for the same patient"
            )
        first.setdefault(pid, (line, target))
        boxes = labels.setdefault(pid, [])
        box = _box(fields, where) if target == 1 else None
        if (pid, box) in seen:
            repeats.append((line, seen[(pid, box)], pid))
            continue
        seen[(pid, box)] = line
        if box is not None:
            boxes.append((line, *box))
    if repeats:
        _report_repeats(table.path, repeats, strict)
    return labels


def _report_repeats(path, repeats: list[tuple[int, int, str]], strict: bool) -> None:
    """Warn (or, strict, raise) about rows that repeat an earlier row, naming them."""
    shown = "; ".join(
        f"line {line} repeats line {first} (patientId {pid})"
        for line, first, pid in repeats[:SHOWN_DUPLICATES]
    )
    more = (
        f"; and {len(repeats) - SHOWN_DUPLICATES} more" if len(repeats) > SHOWN_DUPLICATES else ""
    )
    text = f"{path}: {len(repeats)} duplicate label row(s): {shown}{more}"
    if strict:
        raise DataError(f"{text} (strict: duplicate rows are an error; remove them)")
    warnings.warn(f"{text}; each is counted once", stacklevel=3)


def count_label_rows(csv_path) -> Counter:
    """patientId -> number of non-blank rows in a label CSV already checked by `read_labels`."""
    table = read_csv(csv_path, ("patientId",), what="label CSV", short_rows="pad")
    return Counter(row["patientId"].strip() for _, row in table.rows)


def _target(value: str, where: str) -> int:
    v = value.strip()
    if v not in ("0", "1"):
        raise DataError(f"{where}: Target must be 0 or 1, got {value!r}")
    return int(v)


def _empty(value: str) -> bool:
    return value.strip().lower() in ("", "nan")


def _check_box_given(fields: dict[str, str], target: int, where: str) -> None:
    """Target=0 rows leave the box empty; Target=1 rows give all four fields."""
    given = [name for name, v in fields.items() if not _empty(v)]
    if target == 0:
        if given:
            raise DataError(
                f"{where}: Target=0 but a box is given "
                f"({', '.join(f'{n}={fields[n].strip()!r}' for n in given)}); "
                f"negative rows must leave x, y, width, height empty"
            )
        return
    if not given:
        raise DataError(f"{where}: Target=1 but no box (x, y, width, height empty)")
    if len(given) < len(BOX_FIELDS):
        empty = [n for n in BOX_FIELDS if n not in given]
        raise DataError(f"{where}: Target=1 with an incomplete box; empty: {empty}")


def _box(fields: dict[str, str], where: str) -> tuple[float, float, float, float]:
    """(x, y, width, height) of a Target=1 row: finite numbers, positive width and height."""
    x, y, w, h = (_number(fields[n], n, where) for n in BOX_FIELDS)
    if w <= 0 or h <= 0:
        raise DataError(
            f"{where}: box width and height must be positive, got width={w:g}, height={h:g}"
        )
    return x, y, w, h


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
    table = read_csv(
        csv_path,
        CLASS_COLUMNS,
        what="class info CSV",
        expected_header=",".join(CLASS_COLUMNS),
        short_rows="pad_optional",
        id_column="patientId",
    )
    out: dict[str, tuple[int, str]] = {}
    for line, row in table.rows:
        pid, cls = row["patientId"].strip(), row["class"].strip()
        where = f"{table.path}: line {line}: patientId {pid or repr(pid)}"
        if not pid:
            raise DataError(f"{where}: empty patientId")
        if cls not in CLASSES:
            raise DataError(f"{where}: class {cls!r} is not one of {list(CLASSES)}")
        if pid in out and out[pid][1] != cls:
            raise DataError(f"{where}: class {cls!r} but line {out[pid][0]} says {out[pid][1]!r}")
        out.setdefault(pid, (line, cls))
    return out


def check_classes(labels: dict, classes: dict, label_csv: Path, class_csv: Path) -> None:
    """'Lung Opacity' exactly for the patients with Target=1 (as in the Kaggle files)."""
    for pid in sorted(set(labels) & set(classes)):
        line, cls = classes[pid]
        positive = bool(labels[pid])
        if (cls == OPACITY) != positive:
            raise DataError(
                f"{class_csv}: line {line}: patientId {pid}: class {cls!r} contradicts "
                f"{label_csv.name} (Target={int(positive)})"
            )
