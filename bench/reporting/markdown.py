"""Owns: the markdown building blocks of a report: table rows, captions, collapsed
blocks, the text of one summary cell and the marks beside it (leakage, partial load,
synthetic data)."""

from __future__ import annotations

import math
import os

LEAK_MARK, PARTIAL_MARK = "†", "‡"
SYNTH_MARK = "⚠ SYNTHETIC DATA"
SYNTH_WARNING = "SYNTHETIC DATA — these numbers are not the benchmark"


def pct(fraction: float) -> str:
    """A label fraction as a percentage: ``0.1`` -> ``10%``."""
    return f"{fraction * 100:g}%"


def cell(s: dict) -> str:
    """A summary over seeds as ``mean ± ci_half (n=k)``, ``mean (n=1)`` or ``n/a (n=k)``."""
    if s.get("mean") is None or (isinstance(s["mean"], float) and math.isnan(s["mean"])):
        return f"n/a (n={int(s.get('n', 0))})"
    n = f"n={int(s['n'])}"
    if s.get("n_ignored"):
        n += f", {int(s['n_ignored'])} missing"
    ci = s.get("ci_half")
    if ci is None or (isinstance(ci, float) and math.isnan(ci)):
        return f"{s['mean']:.3f} ({n})"
    return f"{s['mean']:.3f} ± {ci:.3f} ({n})"


def marks(s: dict) -> str:
    """The leakage / partial-load marks of a summary (empty when neither)."""
    return (LEAK_MARK if s.get("leakage") else "") + (PARTIAL_MARK if s.get("partial") else "")


def text(v) -> str:
    """Cell text; None and NaN (pandas' missing values) become empty."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def md_table(header, rows, align=None) -> str:
    align = align or ["---"] * len(header)
    return "\n".join([md_row(header), md_row(align), *(md_row(r) for r in rows)])


def caption(title: str, synthetic: bool) -> str:
    """A bold table caption, flagged when the table holds synthetic-data runs."""
    return f"**{title}**" + (f" — {SYNTH_MARK}" if synthetic else "")


def details(summary: str, body: str) -> str:
    """A collapsed block (``<details>``) holding ``body``."""
    return "\n".join([f"<details><summary>{summary}</summary>", "", body, "", "</details>"])


def relative_to_cwd(text: str) -> str:
    """``text`` with the current folder's absolute path left out of the paths it names, so a
    report written in a checkout (``runs/demo/...``) names no machine's folders. Run from
    the file system's root, nothing is left out."""
    cwd = os.getcwd().rstrip(os.sep)
    return text.replace(f"{cwd}{os.sep}", "") if cwd else text
