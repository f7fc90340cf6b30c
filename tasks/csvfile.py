"""The one checked CSV reader: every label file, split file and submission is read here.

Owns :func:`read_csv`: UTF-8 (a byte-order mark is accepted), header names stripped of
whitespace (SIIM's ``ImageId, EncodedPixels``), required columns checked, blank lines
skipped, every row given with its line number (header = line 1) and short rows
refused, padded, or padded only when no required column is missing
(:data:`SHORT_ROWS`); any problem is a :class:`~tasks.errors.DataError` naming the
file, the line and, when the caller names its id column, the row's id.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import DataError

# "error": a row with fewer fields than the header is refused; "pad": missing trailing
# fields become ""; "pad_optional": padded when every required column is present,
# refused when a required one is missing
SHORT_ROWS = ("error", "pad", "pad_optional")


@dataclass
class CsvTable:
    """A read CSV: ``header`` (stripped names), ``rows`` as ``(line, {column: value})``."""

    path: Path
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]

    def column(self, name: str) -> list[str]:
        return [row[name] for _, row in self.rows]


def read_csv(
    path: str | os.PathLike,
    required: Iterable[str] = (),
    *,
    what: str = "CSV",
    expected_header: str | None = None,
    short_rows: str = "error",
    id_column: str | None = None,
) -> CsvTable:
    """Read ``path`` and check it has the ``required`` columns.

    ``what`` names the file in messages ("label CSV", "submission", ...);
    ``expected_header`` is shown when columns are missing. ``short_rows`` (one of
    :data:`SHORT_ROWS`) says what a row with fewer fields than the header is: an error
    naming its line (default), padded with ``""``, or padded only when every required
    column is present. ``id_column`` names the row's id in such errors. Values are
    returned as written (not stripped).
    """
    if short_rows not in SHORT_ROWS:
        raise ValueError(f"short_rows must be one of {SHORT_ROWS}, not {short_rows!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    required = list(required)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            _check_header(path, header, required, what, expected_header)
            need = max((header.index(c) for c in required), default=-1) + 1
            rows = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) < len(header):
                    if short_rows == "error" or (short_rows == "pad_optional" and len(row) < need):
                        raise DataError(_short_row(path, reader.line_num, header, row, id_column))
                    row = row + [""] * (len(header) - len(row))
                rows.append((reader.line_num, dict(zip(header, row))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from e
    return CsvTable(path, header, rows)


def _check_header(
    path: Path, header: list[str], required: list[str], what: str, expected_header: str | None
) -> None:
    if not header:
        raise DataError(f"{path}: empty {what}; expected header {expected_header or ','.join(required)}")
    missing = [c for c in required if c not in header]
    if missing:
        shown = f" (header '{expected_header}')" if expected_header else ""
        raise DataError(
            f"{path}: line 1: wrong columns: expected {required}{shown}, found {header}; "
            f"missing {missing}"
        )


def _short_row(path: Path, line: int, header: list[str], row: list[str], id_column) -> str:
    where = f"{path}: line {line}"
    if id_column is not None:
        k = header.index(id_column) if id_column in header else len(row)
        value = row[k].strip() if k < len(row) else ""
        where += f": {id_column} {value or repr(value)}"
    return f"{where}: expected {len(header)} fields, got {len(row)}: {row}"
