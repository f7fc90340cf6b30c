"""Owns: the verdict of ``bench compare``: a set of runs against a committed baseline.

Cells and the baseline file are :mod:`bench.experiments.baseline`; each cell is the test
primary metric summarized over seeds by :func:`bench.reporting.frame.aggregate`. Per cell:

- ❌ ``regression``: the new mean is below the baseline mean by more than the baseline's
  95% CI half-width, or by more than ``tolerance`` (absolute) when one is given. A
  baseline cell with one seed has no interval, so any drop counts unless a tolerance
  is given.
- ✅ ``improved`` (above by more than the same margin) or ✅ ``ok``.
- ⚠ ``missing``: in the baseline, but the runs have no complete run (or no finite
  value) for it. ⚠ ``incomplete``: fewer finite seeds than the baseline (a run
  failed). Both count as failures, like regressions.
- 🆕 ``new``: in the runs but not in the baseline; information only.

A cell's runs must share every setting that changes the result (the run id's settings
minus the seed, :func:`bench.reporting.frame.result_settings`): runs of one cell that
differ (a sweep read together with its ``-lr-search`` folder, two learning rates, two
image sizes) are an input error naming the settings, not one averaged cell; each seed
counts once (the newest complete record). Settings in which a cell differs from the
baseline's cell are notes, like the run-wide ``SETTING_FIELDS``.

The summary is markdown (stdout, ``--summary FILE`` and, when set, appended to
``$GITHUB_STEP_SUMMARY``); the exit status is 1 when any cell failed, else 0.
``--update-baseline`` writes the baseline from the runs instead (atomically).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from bench.experiments.baseline import (
    BASELINE_FORMAT,
    BASELINE_VERSION,
    build_baseline,
    cell_key,
    cell_label,
    cells_from_frame,
    finite,
    load_baseline,
    match_key,
    read_runs,
    settings_differences,
    settings_of,
    write_baseline,
)

ICONS = {"ok": "✅", "improved": "✅", "regression": "❌", "missing": "⚠", "incomplete": "⚠",
         "new": "🆕"}  # fmt: skip
FAILING = ("regression", "missing", "incomplete")
ORDER = ("regression", "missing", "incomplete", "improved", "ok", "new")  # of the table
_EPS = 1e-12  # float noise allowed on top of the margin


# ---------------------------------------------------------------- comparison


def _verdict(base: dict, new: dict | None, tolerance: float | None) -> dict:
    row = {"key": cell_key(base), "cell": cell_label(base), "baseline": base, "new": new}
    b_mean, b_half = finite(base.get("mean")), finite(base.get("ci_half"))
    margin = tolerance if tolerance is not None else (b_half if b_half is not None else 0.0)
    row["margin"] = margin
    row["margin_from"] = (
        "tolerance" if tolerance is not None else ("ci_half" if b_half is not None else "none")
    )
    n_mean = None if new is None else finite(new.get("mean"))
    if new is None or n_mean is None or b_mean is None:
        row.update(verdict="missing", delta=None)
        return row
    delta = n_mean - b_mean
    row["delta"] = delta
    if delta < -margin - _EPS:
        row["verdict"] = "regression"
    elif int(new.get("n") or 0) < int(base.get("n") or 0):
        row["verdict"] = "incomplete"
    elif delta > margin + _EPS:
        row["verdict"] = "improved"
    else:
        row["verdict"] = "ok"
    return row


def compare(
    runs_dir: str | Path, baseline: dict | str | Path, tolerance: float | None = None
) -> dict:
    """Compare the runs under ``runs_dir`` with a baseline (dict or file).

    Returns ``{"rows", "counts", "failed", "runs_dir", "baseline", "n_complete",
    "not_complete", "notes", "tolerance"}``: one row per baseline cell then per new
    cell, each ``{"key", "cell", "baseline", "new", "delta", "margin", "margin_from",
    "verdict"}``; ``failed`` is True when any verdict is in ``FAILING``.
    """
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"--tolerance must be a non-negative number, got {tolerance}")
    base = baseline if isinstance(baseline, dict) else load_baseline(baseline)
    records, df = read_runs(runs_dir)
    new_cells = {match_key(c): c for c in cells_from_frame(df).values()}
    rows, seen = [], set()
    for cell in base["cells"].values():
        k = match_key(cell)
        seen.add(k)
        rows.append(_verdict(cell, new_cells.get(k), tolerance))
    for k, cell in new_cells.items():
        if k not in seen:
            row = {"key": cell_key(cell), "cell": cell_label(cell), "baseline": None,
                   "new": cell, "delta": None, "margin": None, "margin_from": None,
                   "verdict": "new"}  # fmt: skip
            rows.append(row)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ICONS}
    done = [r for r in records if r.get("status") == "complete"]
    not_complete = [
        (str(r.get("run_id")), str(r.get("status") or "unknown"), str(r.get("error") or ""))
        for r in records
        if r.get("status") != "complete"
    ]
    notes = []
    now = settings_of(done)
    for field, was in (base.get("settings") or {}).items():
        if field in now and now[field] != was:
            notes.append(f"`{field}` differs: baseline {was}, runs {now[field]}")
    by_diff: dict[str, list[str]] = {}
    for row in rows:
        if row["baseline"] is not None and row["new"] is not None:
            for diff in settings_differences(row["baseline"], row["new"]):
                by_diff.setdefault(diff, []).append(row["cell"])
    for diff, cells in by_diff.items():
        notes.append(f"{diff} in {len(cells)} cell(s): {', '.join(f'`{c}`' for c in cells)}")
    return {
        "rows": rows,
        "counts": counts,
        "failed": any(r["verdict"] in FAILING for r in rows),
        "runs_dir": str(runs_dir),
        "baseline": {k: v for k, v in base.items() if k != "cells"},
        "n_complete": len(done),
        "not_complete": sorted(not_complete),
        "notes": notes,
        "tolerance": tolerance,
    }


# ---------------------------------------------------------------- summary


def _stats_text(c: dict | None) -> str:
    if c is None:
        return "–"
    mean, half = finite(c.get("mean")), finite(c.get("ci_half"))
    n = int(c.get("n") or 0)
    if mean is None:
        return f"n/a (n={n})"
    return f"{mean:.4f}" + (f" ± {half:.4f}" if half is not None else "") + f" (n={n})"


def _head(result: dict, baseline_path: str | Path | None) -> list[str]:
    """The verdict line, what was compared with what, and the rule."""
    c = result["counts"]
    parts = []
    for v, word in (("regression", "regression(s)"), ("missing", "missing"),
                    ("incomplete", "incomplete"), ("improved", "improved"), ("ok", "ok"),
                    ("new", "new")):  # fmt: skip
        if c.get(v):
            parts.append(f"{c[v]} {word}")
    head = "❌ FAILED" if result["failed"] else "✅ passed"
    lines = [f"## cxrbench compare: {head} — {', '.join(parts) or 'no cells'}", ""]
    meta = result["baseline"]
    where = f"`{baseline_path}`" if baseline_path else "the baseline"
    lines.append(
        f"Runs `{result['runs_dir']}` ({result['n_complete']} complete run record(s), "
        f"{len(result['not_complete'])} not complete) against {where} (created "
        f"{meta.get('created')}, commit `{meta.get('git_commit')}`, config "
        f"`{meta.get('config')}`, {meta.get('n_runs')} runs; {meta.get('metric', 'test primary metric')})."
    )
    rule = (
        f"by more than the tolerance {result['tolerance']:g}"
        if result["tolerance"] is not None
        else "by more than the baseline's 95% CI half-width (any drop when the baseline "
        "cell has a single seed)"
    )
    return lines + [
        "",
        f"A cell regresses when its new mean is below the baseline mean {rule}; cells of "
        "the baseline that are missing from the runs, or have fewer seeds, fail too.",
    ]


def _failing(rows: list[dict]) -> list[str]:
    failed = [r for r in rows if r["verdict"] in FAILING]
    if not failed:
        return []
    lines = ["", "**Failing cells:**", ""]
    for r in failed:
        delta = (
            "" if r["delta"] is None else f" (Δ {r['delta']:+.4f}, allowed drop {r['margin']:.4f})"
        )
        lines.append(f"- {ICONS[r['verdict']]} `{r['cell']}`: {r['verdict']}{delta}")
    return lines


def _cell_table(rows: list[dict]) -> list[str]:
    table = [
        "| cell | baseline | new | Δ | allowed drop | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    order = {v: i for i, v in enumerate(ORDER)}
    for r in sorted(rows, key=lambda r: order[r["verdict"]]):
        delta = "" if r["delta"] is None else f"{r['delta']:+.4f}"
        margin = "" if r["margin"] is None else f"{r['margin']:.4f}"
        if r["margin_from"] == "none":
            margin += " (n=1, no CI)"
        table.append(
            f"| {r['cell']} | {_stats_text(r['baseline'])} | {_stats_text(r['new'])} | "
            f"{delta} | {margin} | {ICONS[r['verdict']]} {r['verdict']} |"
        )
    return ["", *table]


def _tail(result: dict, baseline_path: str | Path | None) -> list[str]:
    """Runs that did not complete, settings notes, and how to refresh the baseline."""
    lines = []
    if result["not_complete"]:
        lines += ["", "Runs that did not complete (not in any mean):", ""]
        lines += [f"- `{rid}`: {status}" + (f" — {err[:160]}" if err else "")
                  for rid, status, err in result["not_complete"]]  # fmt: skip
    if result["notes"]:
        lines += [
            "",
            "Settings differ from the baseline's (the numbers may not be comparable):",
            "",
        ]
        lines += [f"- ⚠ {n}" for n in result["notes"]]
    if baseline_path:
        lines += [
            "",
            "If the change is intended, refresh the baseline from these runs and commit it: "
            f"`bench compare {result['runs_dir']} --baseline {baseline_path} --update-baseline`.",
        ]
    return lines


def format_summary(result: dict, baseline_path: str | Path | None = None) -> str:
    """Markdown summary of :func:`compare`: verdict line, failing cells by name, the
    per-cell table (cell, baseline mean ± CI, new mean ± CI, delta, verdict), notes."""
    rows = result["rows"]
    lines = _head(result, baseline_path) + _failing(rows) + _cell_table(rows)
    return "\n".join(lines + _tail(result, baseline_path)) + "\n"


def _emit(text: str, summary: str | Path | None) -> None:
    print(text, end="")
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(text)
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        with open(step, "a") as f:
            f.write(text + "\n")


def _update(
    runs_dir: str | Path, baseline_path: str | Path, tolerance: float | None, config: str | None
) -> str:
    """Write the baseline from the runs; the text says how they compare with the old one."""
    old = None
    if Path(baseline_path).is_file():
        try:
            old = load_baseline(baseline_path)
        except ValueError:
            old = None
    base = write_baseline(runs_dir, baseline_path, config)
    text = (
        f"## cxrbench compare: baseline updated\n\nWrote `{baseline_path}`: "
        f"{len(base['cells'])} cell(s) from {base['n_runs']} complete run(s) in "
        f"`{runs_dir}` (commit `{base['git_commit']}`, config `{base['config']}`).\n"
    )
    if old is not None:
        previous = format_summary(compare(runs_dir, old, tolerance))
        text += "\nThese runs against the previous baseline:\n\n" + previous.split("\n", 2)[2]
    return text


def run_compare(
    runs_dir: str | Path,
    baseline_path: str | Path,
    tolerance: float | None = None,
    update: bool = False,
    summary: str | Path | None = None,
    config: str | None = None,
) -> int:
    """What ``bench compare`` does; returns the exit status (0 ok, 1 regression/missing).

    ``update=True`` writes a new baseline from the runs (printing how it differs from
    the old one when there is one) and returns 0.
    """
    if update:
        _emit(_update(runs_dir, baseline_path, tolerance, config), summary)
        return 0
    result = compare(runs_dir, baseline_path, tolerance)
    _emit(format_summary(result, baseline_path), summary)
    return 1 if result["failed"] else 0


__all__ = [
    "BASELINE_FORMAT",
    "BASELINE_VERSION",
    "build_baseline",
    "cell_key",
    "cell_label",
    "cells_from_frame",
    "compare",
    "format_summary",
    "load_baseline",
    "run_compare",
    "write_baseline",
]
