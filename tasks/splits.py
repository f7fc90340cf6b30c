"""Splits and label fractions (design §7), and external split files.

Owns :func:`assign_splits` (deterministic train/val/test by image id, grouped by
patient, from a sha256 of the ids alone), :func:`fraction_subset` (nested label
fractions: 1% inside 10% inside 100%), :func:`load_split_file` (a CSV with a
``split`` column; a folder of ``train.csv`` / ``validation.csv`` / ``test.csv`` as LoVT
writes them; a folder of ``train.txt`` / ``val.txt`` / ``test.txt`` as BenchX writes
them), and their forms over a prepared cache (:func:`split_indices`,
:func:`fraction_indices`) and over ground truth (:func:`ground_truth_splits`).

The published formats, exactly (read by :func:`load_split_file`):

- LoVT (``src/data/datasets/processing_utils.py``): Python's ``csv.writer`` (CRLF
  line ends), header ``ID`` for segmentation (SIIM: the ``ImageId``) and
  ``ID,boxes,classes`` for detection (RSNA: the ``patientId``; ``boxes`` as
  ``x;y;w;h|x;y;w;h``, empty for a negative), one row per image, in
  ``train.csv``, ``validation.csv`` and ``test.csv``. Only ``ID`` is read.
- BenchX (``preprocess/datasets/*/preprocess_*.py``, ``save_anno``): no header, one
  image per line (LF line ends), in ``train.txt``, ``val.txt`` and ``test.txt``
  (its ``train_1.txt`` / ``train_10.txt`` subsets are BenchX's own, not nested, and are
  not read: cxrbench draws its nested fractions from ``train.txt``). A line is an id
  (RSNA: the ``patientId``) or an image path such as ``images/<ImageId>.png``: the id is
  the file name without its folder and image extension (:data:`IMAGE_SUFFIXES`). Note
  that BenchX's shipped SIIM lists name the files of a PNG re-export
  (``8826_train_0_``), not ImageIds: such lines are unknown ids, and the error says so.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from tasks.cache import Prepared
from tasks.csvfile import CsvTable, read_csv
from tasks.errors import DataError

SPLITS = ("train", "val", "test")

SPLIT_SALT = "cxrbench-split-v1"

FRACTION_SALT = "cxrbench-fraction-v1"

SPLIT_ID_COLUMNS = ("ImageId", "image_id", "patientId", "dicom_id", "id", "ID")

# file names of a split folder: (split, LoVT CSVs, BenchX lists), first found is read
SPLIT_FILES = (
    ("train", ("train.csv",), ("train.txt",)),
    ("val", ("val.csv", "validation.csv", "valid.csv"), ("val.txt", "valid.txt", "validation.txt")),
    ("test", ("test.csv",), ("test.txt",)),
)
# extensions stripped from a BenchX line to give the id (SIIM ImageIds contain dots)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".gif", ".tif", ".tiff")
# BenchX's SIIM lists: file names of the PNG re-export, not ImageIds
_PNG_EXPORT_NAME = re.compile(r"^\d+_(train|test)_[01]?_?$")

_SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def _hash_unit(salt: str, value: str) -> float:
    """Map `salt + value` to [0, 1) with sha256 (53 bits, exact in a float)."""
    digest = hashlib.sha256((salt + value).encode("utf-8")).hexdigest()
    return int(digest[:13], 16) / float(16**13)


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
    (train / val / valid / validation / test), (b) a directory holding train.csv,
    val.csv (or validation.csv / valid.csv) and test.csv, each with an id column (LoVT's
    layout: header ``ID`` or ``ID,boxes,classes``), or (c) a directory holding train.txt,
    val.txt and test.txt, one id or image path per line, no header (BenchX's layout; see
    the module docstring). Repeated rows for one id in the same split are fine
    (per-mask CSVs). Ids unknown to `ids` or listed in two splits raise DataError. Data
    ids the file does not list are simply absent from the result.
    """
    path = Path(path)
    if path.is_dir():
        assigned = _split_directory(path)
    elif path.is_file():
        assigned = _split_csv(path)
    else:
        raise DataError(
            f"{path}: split file not found (expected a CSV with an id and a 'split' column, "
            f"or a directory with train.csv, val.csv, test.csv (LoVT) or train.txt, "
            f"val.txt, test.txt (BenchX))"
        )
    known = set(ids)
    unknown = sorted(i for i in assigned if i not in known)
    if unknown:
        hint = ""
        if all(_PNG_EXPORT_NAME.match(i) for i in unknown[:10]):
            hint = (
                " (these are file names of a PNG re-export, as in BenchX's shipped SIIM "
                "lists, not the dataset's ImageIds: list the ImageIds, e.g. "
                "images/<ImageId>.png)"
            )
        raise DataError(
            f"{path}: {len(unknown)} id(s) in the split file are not in the dataset, "
            f"e.g. {unknown[:10]}{hint}"
        )
    return assigned


def _split_directory(path: Path) -> dict[str, str]:
    """{id: split} from a folder of train / val / test CSVs (LoVT) or lists (BenchX)."""
    csvs = [[path / n for n in names if (path / n).is_file()] for _, names, _ in SPLIT_FILES]
    txts = [[path / n for n in names if (path / n).is_file()] for _, _, names in SPLIT_FILES]
    if any(csvs) and any(txts):
        found = [p.name for group in (*csvs, *txts) for p in group]
        raise DataError(
            f"{path}: split directory holds both LoVT CSVs and BenchX lists ({', '.join(found)}); "
            "keep one set"
        )
    use_txt = any(txts) and not any(csvs)
    files = txts if use_txt else csvs
    assigned: dict[str, str] = {}
    where: dict[str, Path] = {}
    for (split, csv_names, txt_names), found in zip(SPLIT_FILES, files):
        if not found:
            names = txt_names if use_txt else csv_names
            raise DataError(
                f"{path}: split directory must contain train.csv, val.csv (or "
                f"validation.csv) and test.csv (LoVT), or train.txt, val.txt and test.txt "
                f"(BenchX); missing {names[0]}"
            )
        entries = _read_split_list(found[0]) if use_txt else _read_split_rows(found[0])
        for line, image_id in entries:
            if assigned.get(image_id, split) != split:
                raise DataError(
                    f"{found[0]}: line {line}: id {image_id} is also listed in "
                    f"{where[image_id]} ({assigned[image_id]})"
                )
            assigned[image_id] = split
            where[image_id] = found[0]
    return assigned


def _read_split_rows(path: Path) -> list[tuple[int, str]]:
    """(line, id) of a split CSV with an id column (blank ids skipped)."""
    table = _read_split_csv(path)
    id_col = _id_column(table)
    return [(line, row[id_col].strip()) for line, row in table.rows if row[id_col].strip()]


def _read_split_list(path: Path) -> list[tuple[int, str]]:
    """(line, id) of a BenchX list: one id or image path per line, no header; the id is
    the file name without folder and image extension. Blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read split list ({e})") from e
    out = []
    for line, raw in enumerate(text.splitlines(), start=1):
        entry = raw.strip()
        if not entry:
            continue
        if "," in entry or "\t" in entry:
            raise DataError(
                f"{path}: line {line}: a split list has one id or image path per line, "
                f"got {entry!r}"
            )
        name = entry.replace("\\", "/").rsplit("/", 1)[-1]
        for suffix in IMAGE_SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        if not name:
            raise DataError(f"{path}: line {line}: no file name in {entry!r}")
        out.append((line, name))
    return out


def _split_csv(path: Path) -> dict[str, str]:
    """{id: split} from one CSV with an id column and a ``split`` column."""
    table = _read_split_csv(path)
    id_col = _id_column(table)
    if "split" not in table.header:
        raise DataError(
            f"{path}: split CSV needs a 'split' column next to the id column; "
            f"columns found: {table.header}"
        )
    assigned: dict[str, str] = {}
    for line, row in table.rows:
        image_id = row[id_col].strip()
        if not image_id:
            continue
        value = row["split"].strip().lower()
        if value not in _SPLIT_NAMES:
            raise DataError(
                f"{path}: line {line}: split {row['split']!r} for {image_id} is not one of "
                f"{sorted(_SPLIT_NAMES)}"
            )
        split = _SPLIT_NAMES[value]
        if assigned.get(image_id, split) != split:
            raise DataError(
                f"{path}: line {line}: id {image_id} is in two splits "
                f"({assigned[image_id]} and {split})"
            )
        assigned[image_id] = split
    return assigned


def _read_split_csv(path: Path) -> CsvTable:
    """A split CSV through the checked reader; short rows are padded (ids may stand alone)."""
    return read_csv(
        path,
        what="split CSV",
        expected_header=f"<id>[,split] with <id> one of {','.join(SPLIT_ID_COLUMNS)}",
        short_rows="pad",
    )


def _id_column(table: CsvTable) -> str:
    """The first of SPLIT_ID_COLUMNS the table has."""
    for name in SPLIT_ID_COLUMNS:
        if name in table.header:
            return name
    raise DataError(
        f"{table.path}: no id column; expected one of {list(SPLIT_ID_COLUMNS)}, "
        f"found {table.header}"
    )


def ground_truth_splits(
    gt: Mapping[str, dict], split_file=None, ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, str]:
    """{image id: split} for a task's ground-truth entries (each with a ``patient_id``):
    the split `split_indices` gives the same ids, or the one of an external split file."""
    if split_file is not None:
        return load_split_file(split_file, list(gt))
    return assign_splits(list(gt), {i: e["patient_id"] for i, e in gt.items()}, ratios)


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
