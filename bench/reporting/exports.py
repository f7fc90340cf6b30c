"""Owns: one task's main table outside markdown: as tidy CSV (:func:`table_frame`, one
row per cell) and as a booktabs LaTeX ``tabular`` (:func:`make_latex`), and writing
both beside the report (:func:`write_table_exports`)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bench.reporting.frame import is_nan
from bench.reporting.markdown import SYNTH_WARNING, pct
from bench.reporting.tables import caption_text, layout

TIDY_COLUMNS = ["task", "init", "protocol", "fraction", "metric",
                "mean", "std", "ci_low", "ci_high", "ci_half", "n"]  # fmt: skip


def table_frame(agg: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task's main table in tidy form, in the table's order: ``TIDY_COLUMNS`` plus
    ``mark`` (best / within_ci / empty), ``seeds``, the leakage/partial/synthetic flags,
    and ``init_name`` / ``variant`` (``init`` is the row label: the init name plus, for a
    cell split by differing settings, those settings; :mod:`bench.reporting.frame`)."""
    a = agg[agg["task"] == task]
    cols = [*TIDY_COLUMNS, "mark", "seeds", "leakage", "partial", "synthetic", "init_name",
            "variant"]  # fmt: skip
    if a.empty:
        return pd.DataFrame(columns=cols)
    lay = layout(a)
    rows = []
    for i in lay["inits"]:
        for c in lay["cols"]:
            r = lay["by_key"].get((i, *c))
            if r is None:
                continue
            row = {k: (None if is_nan(r.get(k)) else r.get(k)) for k in TIDY_COLUMNS}
            row["n"] = int(r["n"])
            row["mark"] = lay["marks"].get((task, i, *c), "")
            row["seeds"] = " ".join(str(s) for s in r.get("seeds", []))
            row.update({k: bool(r.get(k, False)) for k in ("leakage", "partial", "synthetic")})
            row["init_name"] = r.get("init_name") or i
            row["variant"] = r.get("variant") or ""
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}  # fmt: skip


def _tex(text) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _latex_cell(r: dict | None, mark: str | None, per_cell_n: bool) -> str:
    if r is None:
        return "--"
    if is_nan(r["mean"]):
        return "n/a"
    text = f"{r['mean']:.3f}"
    if not is_nan(r.get("ci_half")):
        text += f" $\\pm$ {r['ci_half']:.3f}"
    if mark == "best":
        text = f"\\textbf{{{text}}}"
    elif mark == "within_ci":
        text = f"\\underline{{{text}}}"
    if per_cell_n:
        text += f" {{\\scriptsize ($n{{=}}{int(r['n'])}$)}}"
    if r.get("leakage"):
        text += "$^\\dagger$"
    if r.get("partial"):
        text += "$^\\ddagger$"
    return text


def _latex_comments(a: pd.DataFrame, task: str, lay: dict, n_note: str) -> list[str]:
    lines = [
        f"% cxrbench: {caption_text(task, lay['metrics'])} ({n_note}).",
        "% Bold: best mean of the column; underlined: mean inside the best cell's 95% CI.",
    ]
    if a["synthetic"].any():
        lines.append(f"% {SYNTH_WARNING}.")
    if a["leakage"].any():
        lines.append("% \\dagger: the initialization saw this task's images (leakage).")
    if a["partial"].any():
        lines.append("% \\ddagger: partial checkpoint load.")
    lines.append("% Requires \\usepackage{booktabs}.")
    return lines


def _latex_header(lay: dict) -> list[str]:
    spec = "l" + "".join(" " + "r" * len(g["fractions"]) for g in lay["groups"])
    top, rules, start = [""], [], 2
    for g in lay["groups"]:
        k = len(g["fractions"])
        top.append(f"\\multicolumn{{{k}}}{{c}}{{{_tex(g['label'])}}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + k - 1}}}")
        start += k
    return [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(top) + " \\\\",
        " ".join(rules),
        " & ".join(["init"] + [_tex(pct(f)) for _, f, _ in lay["cols"]]) + " \\\\",
        "\\midrule",
    ]


def make_latex(agg: pd.DataFrame, task: str) -> str:
    """One task's main table as a booktabs ``tabular`` (no float: ``\\input`` it inside
    your own ``table``). Protocol groups are ``\\multicolumn`` headers with
    ``\\cmidrule``s, the best cell of a column is ``\\textbf``, cells within its 95% CI
    ``\\underline``. ``n`` is printed per cell only when it differs across the table;
    otherwise the leading comment says it. Needs ``\\usepackage{booktabs}``."""
    a = agg[agg["task"] == task]
    if a.empty:
        return ""
    lay = layout(a)
    ns = {int(r["n"]) for r in lay["by_key"].values()}
    per_cell_n = len(ns) > 1
    n_note = "n differs per cell" if per_cell_n else f"n = {ns.pop()} seed(s) per cell"
    lines = [*_latex_comments(a, task, lay, n_note), *_latex_header(lay)]
    for i in lay["inits"]:
        cells = [_tex(i)] + [
            _latex_cell(lay["by_key"].get((i, *c)), lay["marks"].get((task, i, *c)), per_cell_n)
            for c in lay["cols"]
        ]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def slug(task) -> str:
    """``task`` made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(task))


def write_table_exports(agg: pd.DataFrame, task: str, out_md: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>_<task>.csv`` (:func:`table_frame`) and ``<stem>_<task>.tex``
    (:func:`make_latex`) next to ``out_md``; returns their paths."""
    out_md = Path(out_md)
    base = out_md.with_name(f"{out_md.stem}_{slug(task)}")
    csv_path, tex_path = base.with_suffix(".csv"), base.with_suffix(".tex")
    table_frame(agg, task).to_csv(csv_path, index=False)
    tex_path.write_text(make_latex(agg, task))
    return csv_path, tex_path


__all__ = ["TIDY_COLUMNS", "make_latex", "slug", "table_frame", "write_table_exports"]
