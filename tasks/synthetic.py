"""Synthetic data shared by every task: the marker that flags it, and the chest renderer.

Owns :data:`SYNTHETIC_MARKER` (the file every synthetic dataset root carries, so
records and reports flag the data), :func:`is_synthetic` and
:func:`write_synthetic_marker`.
"""

from __future__ import annotations

import os
from pathlib import Path

SYNTHETIC_MARKER = "SYNTHETIC_DATA.txt"


def is_synthetic(root: str | os.PathLike) -> bool:
    """True when `root` carries the synthetic-data marker file."""
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def write_synthetic_marker(root: Path, text: str) -> None:
    """Write the marker that says `root` holds generated, not real, data."""
    (Path(root) / SYNTHETIC_MARKER).write_text(text)
