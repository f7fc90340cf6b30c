"""What a pretraining corpus is, once read: its records, and the readers every layout shares.

Owns: :class:`Report` (a study's FINDINGS and IMPRESSION), :class:`ImageRecord` (one
image with its patient, study, view, report and labels), :class:`Corpus` (the records
of one data set plus what its layout knows and what was skipped, and
:meth:`Corpus.summary`); the view vocabulary (:func:`frontal_of`); the skip reasons
every layout counts under the same words (:data:`SKIP_*`); and the small readers the
layout modules share: :func:`find_table` / :func:`read_table` (a ``.csv`` or
``.csv.gz`` through the project's one checked reader, :func:`tasks.csvfile.read_csv`),
:func:`label_value` (CheXpert-style ``1.0`` / ``0.0`` / ``-1.0`` / blank) and
:func:`scan_files`.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from corpora.reports import split_sentences
from tasks.csvfile import CsvTable, read_csv
from tasks.errors import DataError

NAN = float("nan")

# skip reasons, counted in Corpus.skipped under exactly these words
SKIP_NO_SECTIONS = "report without FINDINGS or IMPRESSION"
SKIP_NO_REPORT = "missing report file"
SKIP_EMPTY_REPORT = "empty report file"
SKIP_ROW_WITHOUT_IMAGE = "metadata row without image"
SKIP_IMAGE_WITHOUT_ROW = "image without metadata"
SKIP_NOT_FRONTAL = "not a frontal view (views=frontal)"

# the 14 CheXpert observations, in the column order of CheXpert's train.csv
CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip

_FRONTAL = frozenset({"PA", "AP", "FRONTAL"})
_LATERAL = frozenset({"LATERAL", "LL", "RL", "XTABLE LATERAL", "LEFT LATERAL", "RIGHT LATERAL"})


def frontal_of(view: str) -> bool | None:
    """PA / AP (and OpenI's "FRONTAL") -> True; LATERAL / LL (/ RL, XTABLE LATERAL) -> False;
    anything else (blank, "AP AXIAL", "LAO", "SWIMMERS", ...) -> None (unknown)."""
    v = " ".join(str(view).upper().split())
    if v in _FRONTAL:
        return True
    if v in _LATERAL:
        return False
    return None


@dataclass(frozen=True)
class Report:
    """A study's report: the text of its FINDINGS and IMPRESSION sections ("" when absent)."""

    findings: str
    impression: str

    def sentences(self) -> list[str]:
        """Findings then impression, split into sentences (non-empty, whitespace-normalised)."""
        return split_sentences(self.findings) + split_sentences(self.impression)


@dataclass(frozen=True)
class ImageRecord:
    """One image of a corpus.

    view is spelled as the layout spells it, upper-case ("PA", "AP", "LATERAL", "LL",
    "FRONTAL", ...; "" when unknown); frontal is :func:`frontal_of` of it (or the layout's
    own frontal/lateral flag). labels: 1 positive, 0 negative, -1 uncertain, nan blank.
    """

    image_id: str
    path: Path
    patient_id: str
    study_id: str | None
    view: str
    frontal: bool | None
    report: Report | None
    labels: Mapping[str, float]


@dataclass
class Corpus:
    """The records of one data set, sorted by path, and what its layout knows."""

    layout: str
    dataset: str
    root: Path
    records: list[ImageRecord]
    label_names: tuple[str, ...]
    has_reports: bool
    has_studies: bool
    has_views: bool
    skipped: dict[str, int] = field(default_factory=dict)
    synthetic: bool = False
    views: str = "all"  # the read_corpus setting the records were selected with

    def summary(self) -> str:
        """Two lines: what was read (images / patients / studies / reports), and what was skipped."""
        recs = self.records
        patients = len({r.patient_id for r in recs})
        parts = [f"{len(recs)} images", f"{patients} patients"]
        if self.has_studies:
            parts.append(f"{len({(r.patient_id, r.study_id) for r in recs})} studies")
        if self.has_views:
            known = [r.frontal for r in recs if r.frontal is not None]
            parts.append(f"{sum(known)} frontal / {len(known) - sum(known)} lateral")
        if self.has_reports:
            parts.append(f"{sum(r.report is not None for r in recs)} with a report")
        if self.label_names:
            parts.append(f"{len(self.label_names)} labels")
        tag = ", synthetic" if self.synthetic else ""
        head = f"{self.dataset} ({self.layout} layout{tag}) at {self.root}: " + ", ".join(parts)
        skipped = {k: v for k, v in self.skipped.items() if v}
        tail = "; ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) if skipped else "none"
        return f"{head}\n  skipped: {tail}"


def count(skipped: dict[str, int], reason: str, n: int = 1) -> None:
    """Add n to skipped[reason] (reasons with a zero count are not stored)."""
    if n:
        skipped[reason] = skipped.get(reason, 0) + n


def unknown_labels(label_names: Iterable[str]) -> dict[str, float]:
    return {n: NAN for n in label_names}


# --------------------------------------------------------------------------- shared readers


def find_table(folder: Path, name: str) -> Path | None:
    """folder/name, or folder/name.gz (the real downloads ship some CSVs gzipped); None if neither."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_table(
    path: str | os.PathLike,
    required: Iterable[str] = (),
    *,
    what: str,
    id_column: str | None = None,
    short_rows: str = "error",
) -> CsvTable:
    """:func:`tasks.csvfile.read_csv` of a ``.csv`` or a gzipped ``.csv.gz``.

    A ``.gz`` is decompressed to a temporary file first; every DataError still names
    the ``.gz`` file (and the line), as if read directly.
    """
    path = Path(path)
    if path.suffix != ".gz":
        return read_csv(path, required, what=what, id_column=id_column, short_rows=short_rows)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    with tempfile.TemporaryDirectory(prefix="cxrbench-csv-") as tmp:
        plain = Path(tmp) / path.stem
        try:
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: cannot decompress {what} ({e})") from e
        try:
            table = read_csv(plain, required, what=what, id_column=id_column, short_rows=short_rows)
        except DataError as e:
            raise DataError(str(e).replace(str(plain), str(path))) from e
    table.path = path
    return table


def label_value(text: str, *, path: Path, line: int, column: str) -> float:
    """A CheXpert-style label cell: 1.0 / 0.0 / -1.0 (or 1 / 0 / -1) -> that value, blank -> nan."""
    t = text.strip()
    if not t:
        return NAN
    try:
        v = float(t)
    except ValueError:
        v = NAN
    if v not in (1.0, 0.0, -1.0):
        raise DataError(
            f"{path}: line {line}: column {column!r}: label {t!r} is not 1.0, 0.0, -1.0 or blank"
        )
    return v


def scan_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Every file under folder (recursively, following no links) whose lower-cased name ends
    with one of suffixes, sorted by path; [] when folder does not exist."""
    if not folder.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.lower().endswith(suffixes) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return sorted(found)


def is_nan(v: float) -> bool:
    return isinstance(v, float) and math.isnan(v)
