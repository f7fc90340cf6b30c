"""SIIM-ACR's run-length encoding of masks.

Owns: :func:`rle_decode` / :func:`rle_encode` (the ``relative`` convention of stage 1
``train-rle.csv`` and Kaggle's ``mask_functions.py``, and the standard ``absolute``
one), :func:`is_negative` (the one negative-mask check, design section 8.2),
:func:`rle_runs` (the syntax check every label and submission row goes through;
:func:`check_rle` the same check, faster, where the runs are not needed) and
:func:`decode_rows` (several rows of one image OR-ed into one mask).
"""

from __future__ import annotations

import math
import re

import numpy as np

RLE_FORMATS = ("relative", "absolute")

_INT = re.compile(r"-?[0-9]+")
_INTS = re.compile(r"(?:-?[0-9]+(?: -?[0-9]+)*)?")  # integers joined by single spaces


def is_negative(rle) -> bool:
    """The single check for "no pneumothorax": None, NaN, "", "-1", " -1" (any spacing)."""
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return str(rle).strip() in ("", "-1")


# single-spaced pairs of non-negative integers of at most 18 digits (they fit in int64);
# absolute starts 1-based: strings rle_runs accepts, recognised without parsing a number
_PLAIN_PAIRS = {
    "relative": re.compile(r"[0-9]{1,18} [0-9]{1,18}(?: [0-9]{1,18} [0-9]{1,18})*"),
    "absolute": re.compile(r"[1-9][0-9]{0,17} [0-9]{1,18}(?: [1-9][0-9]{0,17} [0-9]{1,18})*"),
}


def check_rle(rle: str, fmt: str) -> None:
    """The syntax check of `rle_runs` (the same ValueError for a malformed string), without
    parsing the numbers of a plain well-formed one: label files hold thousands of rows."""
    pattern = _PLAIN_PAIRS.get(fmt)
    if pattern is not None and pattern.fullmatch(rle):
        return
    rle_runs(rle, fmt)


def rle_runs(rle: str, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an RLE string into 0-based flat (column-major) run starts and lengths.

    Validates syntax only (integers, even count, no negative offsets/lengths, 1-based
    absolute starts); the image-size bound is checked by `rle_decode`.
    """
    if fmt not in RLE_FORMATS:
        raise ValueError(f"RLE format must be one of {RLE_FORMATS}, not {fmt!r}")
    tokens = str(rle).split()
    if not _INTS.fullmatch(" ".join(tokens)):  # one check for the string; the token if it fails
        bad = next(t for t in tokens if not _INT.fullmatch(t))
        raise ValueError(f"RLE has a non-integer value {bad!r}")
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
    starts, lengths = rle_runs(rle, fmt)
    ends = starts + lengths
    if len(ends) and ends.max() > n:
        raise ValueError(
            f"RLE run ends at pixel {int(ends.max())}, past the end of the "
            f"{height}x{width} image ({n} pixels)"
        )
    # each run written as column slices of the (height, width) mask: a mask has tens to a
    # few thousand runs, and a cumulative sum over all n pixels plus a transposed copy cost
    # ~5x more per 1024x1024 mask (30% of a SIIM cache build); overlapping absolute runs
    # give their union
    h = int(height)
    mask = np.zeros((h, int(width)), np.uint8)
    for start, end in zip(starts.tolist(), ends.tolist()):
        if end <= start:
            continue
        c0, r0 = divmod(start, h)
        c1, r1 = divmod(end, h)
        if c0 == c1:
            mask[r0:r1, c0] = 1
            continue
        mask[r0:, c0] = 1
        mask[:, c0 + 1 : c1] = 1
        if r1:
            mask[:r1, c1] = 1
    return mask


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
