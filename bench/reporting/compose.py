"""Owns: putting the report together: :func:`write_report` (the markdown file and, per
task, its table exports and figures) and the section of one task.

Order of the report: the synthetic-data warning (if any), what was read and how to
read a cell, one section per task (main table, links to its CSV/LaTeX, primary-metric
notes, label-efficiency figure, learning rates, secondary metrics), consistency notes,
example predictions and the caller's extra sections, then the bookkeeping sections
(runs that did not complete, skipped files, initializations, settings, appendix).

Every file the report writes lies in the folder of ``out_md``: a record's ``task`` and
``run_id`` only reach a file name through :func:`slug` and its ``init`` never does (a
record read from disk may hold anything, e.g. a task ``../../x``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.reporting.exports import slug, write_table_exports
from bench.reporting.figures import plot_label_efficiency
from bench.reporting.frame import aggregate, read_records, records_to_frame
from bench.reporting.markdown import LEAK_MARK, details, relative_to_cwd
from bench.reporting.names import metric_notes, metric_order, ordered
from bench.reporting.sections import (
    appendix,
    consistency_notes,
    incomplete_section,
    settings_section,
    skipped_section,
    synthetic_block,
    weights_section,
)
from bench.reporting.tables import lr_table, make_table, secondary_table

HOW_TO_READ = (
    "Each cell is the mean over seeds ± the half-width of the 95% Student-t confidence "
    "interval (n = number of seeds; with n=1 there is no interval). Columns are grouped "
    "by protocol: the header row names the protocol above the first column of its group "
    "(the blank header cells after it belong to the same protocol), the first row gives "
    "the label fraction. **Bold** marks the best mean of its column (ties included), "
    "<u>underlined</u> cells are not significantly worse (their mean lies inside the best "
    f"cell's 95% CI); {LEAK_MARK} cells are never marked. Only runs with status "
    "`complete` enter the means."
)


def task_section(df: pd.DataFrame, task: str, out_md: Path, figures: bool = True) -> str:
    """``## <task>``: its tables (writing the CSV/LaTeX exports and, with ``figures``,
    the label-efficiency PNG beside ``out_md``)."""
    d = df[(df["task"] == task) & (df["status"] == "complete")]
    parts = [f"## {task}", ""]
    if d.empty:
        return "\n".join([*parts, "No complete runs."])
    agg = aggregate(d)
    csv_path, tex_path = write_table_exports(agg, task, out_md)
    parts += [
        make_table(agg, task),
        "",
        f"The same table as [CSV]({csv_path.name}) (tidy: one row per cell) and as "
        f"[LaTeX]({tex_path.name}) (booktabs `tabular`).",
        "",
    ]
    notes = metric_notes(task)
    for m in ordered(d["primary_metric"], metric_order()):
        parts.append(f"- `{m}` (primary): {notes.get(m, 'see the run records')}")
    png = out_md.with_name(f"{out_md.stem}_{slug(task)}_label_efficiency.png")
    if figures and plot_label_efficiency(d, task, png) is not None:
        parts += ["", f"![{task} label efficiency]({png.name})"]
    parts += ["", lr_table(df, task)]
    secondary = secondary_table(d, task)
    if secondary:
        parts += ["", details("Secondary metrics", secondary)]
    return "\n".join(parts)


def _intro(df: pd.DataFrame, runs_dir, n_skipped: int) -> list[str]:
    parts = ["# cxrbench report", ""]
    if len(df) and df["synthetic"].any():
        parts += [synthetic_block(df), ""]
    n_done = int((df["status"] == "complete").sum()) if len(df) else 0
    parts += [
        f"Run records read from `{runs_dir}`: {len(df)} ({n_done} complete, "
        f"{len(df) - n_done} not complete, {n_skipped} file(s) skipped).",
        "",
        HOW_TO_READ,
    ]
    return parts


def _results(df: pd.DataFrame, out_md: Path, figures: bool) -> list[str]:
    if df.empty:
        return ["", "No run records found."]
    parts = []
    for task in sorted(df["task"].astype(str).unique()):
        parts += ["", task_section(df, task, out_md, figures=figures)]
    notes = consistency_notes(df)
    if notes:
        parts += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return parts


def _extra(sections, records: list[dict], runs_dir, out_md: Path, figures: bool) -> list[str]:
    """Example predictions (with ``figures``) and the caller's sections."""
    sections = list(sections or [])
    if figures and records:
        from bench.reporting.examples import example_sections

        drawn = example_sections(_file_safe(records), Path(runs_dir), out_md)
        if drawn:
            sections.insert(0, "\n".join(["## Example predictions", "", *drawn]))
    return [s.strip("\n") for s in sections if s and s.strip()]


def _file_safe(records: list[dict]) -> list[dict]:
    """Copies whose ``task`` and ``run_id`` (the parts of the example figures' file names and
    of the search for their ``.examples.npz``) are safe file-name parts; unchanged for any
    record `bench run` wrote (its task is a registered name, its run id already safe)."""
    return [{**r, "task": slug(r.get("task")), "run_id": slug(r.get("run_id"))} for r in records]


def _bookkeeping(df: pd.DataFrame, records: list[dict], skipped) -> list[str]:
    sections = (
        incomplete_section(df) if len(df) else "",
        skipped_section(skipped),
        weights_section(records) if records else "",
        settings_section(records) if records else "",
        appendix(df) if len(df) else "",
    )
    return [s for s in sections if s]


def write_report(
    runs_dir: str | Path,
    out_md: str | Path,
    extra_sections: list[str] | None = None,
    *,
    figures: bool = True,
) -> Path:
    """Write the markdown report and, beside it, per task ``<stem>_<task>.csv``,
    ``<stem>_<task>.tex`` and (``figures=True``) ``<stem>_<task>_label_efficiency.png``
    plus ``<stem>_<task>_examples.png`` (test predictions of the best and worst init,
    drawn from the runs' ``.examples.npz`` files when present).

    ``extra_sections`` are markdown strings (each should start with its own ``##``
    heading) placed after the per-task results and notes, before the bookkeeping
    sections (runs that did not complete, initializations, settings, appendix): the
    hook for sections written elsewhere, e.g. example-prediction figures. Returns the
    report's path.
    """
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    records, skipped = read_records(runs_dir)
    df = records_to_frame(records)
    parts = [*_intro(df, runs_dir, len(skipped)), *_results(df, out_md, figures)]
    for section in [
        *_extra(extra_sections, records, runs_dir, out_md, figures),
        *_bookkeeping(df, records, skipped),
    ]:
        parts += ["", section]
    out_md.write_text(relative_to_cwd("\n".join(parts) + "\n"))
    return out_md


__all__ = ["task_section", "write_report"]
