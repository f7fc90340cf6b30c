"""SIIM-ACR's submission file: ``ImageId,EncodedPixels``, one row per region.

Owns: the three functions of the task's :class:`~tasks.registry.SubmissionFormat`:
:func:`check_row` (the RLE syntax of one row), :func:`parse_rows` (all rows of one
ImageId OR-ed into a mask at the image's original size) and :func:`format_mask`
(a mask back to one RLE string).
"""

from __future__ import annotations

import numpy as np

from tasks.errors import DataError
from tasks.siim.rle import is_negative, rle_decode, rle_encode, rle_runs


def check_row(value: str, where: str, rle_format: str | None = None) -> None:
    """Syntax check of one submission row's RLE (the image size is checked by `parse_rows`)."""
    if not is_negative(value):
        try:
            rle_runs(value, rle_format or "relative")
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None


def parse_rows(rows, entry: dict, where: str, rle_format: str | None = None) -> np.ndarray:
    """All rows of one ImageId OR-ed into a bool mask at the image's original size."""
    fmt = entry.get("rle_format") or rle_format or "relative"
    mask = np.zeros((entry["height"], entry["width"]), dtype=bool)
    for line, rle in rows:
        try:
            mask |= rle_decode(rle, entry["height"], entry["width"], fmt).astype(bool)
        except ValueError as e:
            raise DataError(f"{where}, line {line}: {e}") from None
    return mask


def format_mask(mask: np.ndarray, rle_format: str | None = None) -> str:
    """One row's value for a mask in original pixels."""
    return rle_encode(np.asarray(mask).astype(np.uint8), rle_format or "relative")
