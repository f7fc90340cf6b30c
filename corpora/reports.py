"""Free-text radiology reports: their sections and their sentences.

Owns: :func:`parse_sections` (a MIMIC-CXR-style report -> its sections by name),
:func:`findings_impression` (the FINDINGS and IMPRESSION text the pretraining methods
use) and :func:`split_sentences`. Text only: nothing here knows about files or records.

MIMIC-CXR reports (``files/p10/p10000032/s50414267.txt``) are plain text wrapped at
about 78 columns, each line indented by one space, with section headers at the start
of a line followed by a colon: ``EXAMINATION:``, ``INDICATION:``, ``TECHNIQUE:``,
``COMPARISON:``, ``FINDINGS:``, ``IMPRESSION:`` and others; the text may start on the
header's line or on the next. The MIMIC-CXR authors' own section splitter
(``section_parser.py`` in the MIT-LCP/mimic-cxr repository) takes any upper-case
header ``\\n ([A-Z ()/,-]+):\\s`` and keeps the *last* FINDINGS and IMPRESSION
section; this module does the same, and also accepts the known header names in any
case ("Findings:") and with any indentation, and the common misspellings and merged
forms of IMPRESSION that splitter maps ("IMPRESSON:", "FINDINGS AND IMPRESSION:";
a merged section counts as the impression).
"""

from __future__ import annotations

import re

# header names recognised in any case (all-caps headers are recognised whatever they say)
_KNOWN = {
    "findings": "findings", "finding": "findings",
    "impression": "impression", "impressions": "impression",
    "impresson": "impression", "imprression": "impression", "imoression": "impression",
    "impressoin": "impression", "imprssion": "impression", "impresion": "impression",
    "imperssion": "impression", "mpression": "impression", "impession": "impression",
    "findings and impression": "impression", "findings/impression": "impression",
    "findings / impression": "impression", "impression and findings": "impression",
    "indication": "indication", "indications": "indication", "history": "history",
    "clinical history": "history", "clinical indication": "indication",
    "reason for exam": "indication", "reason for examination": "indication",
    "comparison": "comparison", "comparisons": "comparison", "technique": "technique",
    "examination": "examination", "exam": "examination", "type of examination": "examination",
    "conclusion": "conclusion", "recommendation": "recommendation",
    "recommendations": "recommendation", "recommendation(s)": "recommendation",
    "notification": "notification", "addendum": "addendum", "wet read": "wet read",
    "procedure": "procedure", "clinical information": "history", "note": "note",
}  # fmt: skip

# a header: at the start of a line, letters / spaces / ()/,&- (at most 6 words), then a colon
_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ()/,&-]{0,60}?)[ \t]*:", re.MULTILINE)

# sentence boundaries: ., ! or ? then whitespace; enumerators like "1." or "2)" at the start
_BOUNDARY = re.compile(r"[.!?]+(?=\s)")
_ENUMERATOR = re.compile(r"^\(?\d{1,2}[.)]\s*")
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "e.g", "i.e", "approx", "st", "cf", "ca"}


def _header_name(raw: str) -> str | None:
    """The normalised section name of a header candidate, or None when it is not a header."""
    words = raw.split()
    if not words or len(words) > 6:
        return None
    name = " ".join(words).lower()
    if name in _KNOWN:
        return _KNOWN[name]
    if raw.strip() == raw.strip().upper() and any(c.isalpha() for c in raw):
        return name  # an all-caps header of another section (as the MIMIC-CXR splitter reads it)
    return None


def parse_sections(text: str) -> list[tuple[str, str]]:
    """The report's sections in order, as (normalised name, text with whitespace collapsed).

    Text before the first header is the section "preamble". Header names are lower-case,
    mapped through the known names (so "IMPRESSON" -> "impression").
    """
    sections: list[tuple[str, str]] = []
    name, start = "preamble", 0
    for m in _HEADER.finditer(text):
        found = _header_name(m.group(1))
        if found is None:
            continue
        sections.append((name, " ".join(text[start : m.start()].split())))
        name, start = found, m.end()
    sections.append((name, " ".join(text[start:].split())))
    return [(n, t) for n, t in sections if n != "preamble" or t]


def findings_impression(text: str) -> tuple[str, str]:
    """(findings, impression) of a report: the last non-empty section of each name, "" if none."""
    found = {"findings": "", "impression": ""}
    for name, body in parse_sections(text):
        if name in found and body:
            found[name] = body
    return found["findings"], found["impression"]


def split_sentences(text: str) -> list[str]:
    """Sentences of a section: split after ., ! or ? followed by whitespace (not after "Dr."
    and other abbreviations), whitespace collapsed, leading enumerators ("1.", "2)")
    removed, pieces without a letter or digit dropped."""
    text = " ".join(str(text).split())
    pieces, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start : m.start()].rsplit(" ", 1)[-1].lower()
        if before in _ABBREVIATIONS:
            continue
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    out = []
    for piece in pieces:
        piece = _ENUMERATOR.sub("", piece.strip()).strip()
        if any(c.isalnum() for c in piece):
            out.append(piece)
    return out
