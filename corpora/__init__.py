"""Pretraining corpora: chest X-ray data sets read exactly in their real on-disk layouts.

Owns: the public API ``bench pretrain`` codes against: :data:`LAYOUTS`,
:func:`detect_layout`, :func:`read_corpus` (a root -> a :class:`Corpus` of
:class:`ImageRecord`), :func:`decode_images` (the decode-once uint8 cache,
:mod:`corpora.images`) and :func:`synth` (a synthetic corpus in the MIMIC-CXR-JPG
layout, :mod:`corpora.synthetic`). One module per layout says exactly what it reads:
:mod:`corpora.mimic` (MIMIC-CXR-JPG with the MIMIC-CXR reports), :mod:`corpora.chexpert`,
:mod:`corpora.openi` (Indiana University) and :mod:`corpora.nih` (ChestX-ray14); the
record types live in :mod:`corpora.records` and the report parser in
:mod:`corpora.reports`. Bad input is a :class:`tasks.errors.DataError` naming the file
(and line); what a layout can skip (an image without metadata, a report without
FINDINGS or IMPRESSION, ...) is counted in ``Corpus.skipped``.

Example::

    corpus = read_corpus("/data/mimic-cxr-jpg/2.1.0")          # layout detected
    images, records, skipped = decode_images(corpus, 224)       # (N, 224, 224) uint8
    sentences = records[0].report.sentences()
"""

from __future__ import annotations

import os
from pathlib import Path

from corpora import chexpert, mimic, nih, openi
from corpora.images import decode_images
from corpora.records import Corpus, ImageRecord, Report
from corpora.synthetic import synth
from tasks.errors import DataError
from tasks.synthetic import is_synthetic

LAYOUTS: tuple[str, ...] = ("mimic", "chexpert", "openi", "nih")
VIEWS = ("frontal", "all")
_MODULES = {"mimic": mimic, "chexpert": chexpert, "openi": openi, "nih": nih}

__all__ = [
    "LAYOUTS",
    "VIEWS",
    "Corpus",
    "ImageRecord",
    "Report",
    "decode_images",
    "detect_layout",
    "read_corpus",
    "synth",
]


def _expectations() -> str:
    return "; ".join(_MODULES[name].EXPECTS for name in LAYOUTS)


def detect_layout(root: str | os.PathLike) -> str:
    """The one layout whose files are at root; DataError naming what each layout expects when
    none matches, or the candidates when several do (then name one with ``layout=``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: corpus folder not found")
    found = [name for name in LAYOUTS if _MODULES[name].detect(root)]
    if not found:
        raise DataError(f"{root}: matches no corpus layout; expected one of: {_expectations()}")
    if len(found) > 1:
        raise DataError(f"{root}: matches several corpus layouts ({', '.join(found)}); name one (--layout)")
    return found[0]


def read_corpus(root: str | os.PathLike, layout: str | None = None, *, views: str = "frontal") -> Corpus:
    """Read the corpus at root in its layout (detected when None).

    views: "frontal" keeps the frontal (PA/AP) images where the layout knows the view
    (and every image where it does not, e.g. OpenI without a projections file); "all"
    keeps every image. Records are sorted by path.
    """
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, not {views!r}")
    if layout is not None and layout not in _MODULES:
        raise ValueError(f"unknown corpus layout {layout!r}; known: {', '.join(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: corpus folder not found")
    layout = layout or detect_layout(root)
    corpus = _MODULES[layout].read(root, views=views)
    corpus.synthetic = is_synthetic(root)
    corpus.views = views
    if not corpus.records:
        what = "frontal images" if views == "frontal" else "images"
        raise DataError(
            f"{root}: the {layout} corpus has no {what} with metadata; skipped: {corpus.skipped or 'none'}; "
            f"expected {_MODULES[layout].EXPECTS}"
        )
    return corpus
