"""The one checked CSV reader: every label file, split file and submission is read here.

Owns :func:`read_csv`: UTF-8 (a byte-order mark is accepted), header names stripped of
whitespace (SIIM's ``ImageId, EncodedPixels``), required columns checked, blank lines
skipped, every row given with its line number (header = line 1) and short rows either
padded or refused; any problem is a :class:`~tasks.errors.DataError` naming the file
and the line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import DataError


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
    pad_short_rows: bool = False,
    expected_header: str | None = None,
) -> CsvTable:
    """Read ``path`` and check it has the ``required`` columns.

    ``what`` names the file in messages ("label CSV", "submission", ...);
    ``expected_header`` is shown when columns are missing. A row with fewer fields
    than the header is an error naming its line, unless ``pad_short_rows`` (missing
    trailing fields become ``""``). Values are returned as written (not stripped).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    required = list(required)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DataError(f"{path}: empty {what}; expected header {expected_header or ','.join(required)}")
            missing = [c for c in required if c not in header]
            if missing:
                shown = f" (header '{expected_header}')" if expected_header else ""
                raise DataError(
                    f"{path}: line 1: wrong columns: expected {required}{shown}, found {header}; "
                    f"missing {missing}"
                )
            rows = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                line = reader.line_num
                if len(row) < len(header):
                    if not pad_short_rows:
                        raise DataError(
                            f"{path}: line {line}: expected {len(header)} fields, got {len(row)}: {row}"
                        )
                    row = row + [""] * (len(header) - len(row))
                rows.append((line, dict(zip(header, row))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from e
    return CsvTable(path, header, rows)
