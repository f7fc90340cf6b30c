"""Errors of the data layer.

Owns :class:`DataError` (bad or missing dataset input; the message names the file and
row or id; the CLI turns it into one line and exit code 2) and
:class:`DicomReadError` (one image that cannot be read: skipped and counted by the
cache builder unless ``strict``).
"""

from __future__ import annotations


class DataError(Exception):
    """Bad or missing dataset input. The message names the file (and row / id)."""


class DicomReadError(DataError):
    """A single DICOM (or PNG) file could not be read or decoded (corrupt, truncated, not DICOM).

    The cache builder skips these (and records them) unless `strict=True`; every other
    DataError is fatal.
    """
