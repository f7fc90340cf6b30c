"""Regression check of a set of runs against a committed baseline (``bench compare``).

Owns the baseline file and the verdict per cell. A cell is one (task, init, protocol,
fraction, metric) of the report's main tables: the test primary metric summarized over
seeds by ``bench.report.aggregate`` (no second aggregation here). Per cell:

- ❌ ``regression``: the new mean is below the baseline mean by more than the baseline's
  95% CI half-width, or by more than ``tolerance`` (absolute) when one is given. A
  baseline cell with one seed has no interval, so any drop counts unless a tolerance
  is given.
- ✅ ``improved`` (above by more than the same margin) or ✅ ``ok``.
- ⚠ ``missing``: in the baseline, but the runs have no complete run (or no finite
  value) for it. ⚠ ``incomplete``: fewer finite seeds than the baseline (a run
  failed). Both count as failures, like regressions.
- 🆕 ``new``: in the runs but not in the baseline; information only.

The summary is markdown (stdout, ``--summary FILE`` and, when set, appended to
``$GITHUB_STEP_SUMMARY``); the exit status is 1 when any cell failed, else 0.
``--update-baseline`` writes the baseline from the runs instead (atomically).

Baseline file (JSON, ``BASELINE_FORMAT`` version ``BASELINE_VERSION``)::

    {"format": "cxrbench-baseline", "version": 1,
     "created": "2025-01-01T00:00:00+00:00",      # UTC, when it was written
     "git_commit": "3f2c...",                     # commit(s) of the runs (env.git_commit)
     "config": "ci",                              # sweep config name (see config_name)
     "runs_dir": "runs/ci", "n_runs": 12,         # complete runs it was built from
     "metric": "test primary metric (dice / map)",
     "settings": {"arch": ["resnet18"], ...},     # distinct values, compared as notes
     "cells": {"siim/random/linear/0.1/dice":
                 {"task": "siim", "init": "random", "protocol": "linear",
                  "fraction": 0.1, "metric": "dice", "mean": 0.61, "std": 0.02,
                  "ci_low": 0.56, "ci_high": 0.66, "ci_half": 0.05, "n": 3,
                  "seeds": [0, 1, 2]}, ...}}

The cell key is for reading diffs only; the fields inside each cell are what is
compared.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path

import pandas as pd

from bench.engine.records import get_field, write_json_atomic
from bench.reporting.report import GROUP, aggregate, read_records, records_to_frame

BASELINE_FORMAT = "cxrbench-baseline"
BASELINE_VERSION = 1
STAT_KEYS = ("mean", "std", "ci_low", "ci_high", "ci_half", "n")
# record fields whose distinct values the baseline keeps; a difference is a note
SETTING_FIELDS = (
    "arch",
    "image_size",
    "hparams.epochs",
    "hparams.batch_size",
    "hparams.patience",
    "split.name",
    "data.synthetic",
)
ICONS = {"ok": "✅", "improved": "✅", "regression": "❌", "missing": "⚠", "incomplete": "⚠",
         "new": "🆕"}  # fmt: skip
FAILING = ("regression", "missing", "incomplete")
_EPS = 1e-12  # float noise allowed on top of the margin


# ---------------------------------------------------------------- cells


def _finite(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def cell_key(cell: dict) -> str:
    """``task/init/protocol/fraction/metric``, e.g. ``siim/random/linear/0.1/dice``."""
    return f"{cell['task']}/{cell['init']}/{cell['protocol']}/{float(cell['fraction']):g}/{cell['metric']}"


def cell_label(cell: dict) -> str:
    """Human name of a cell, e.g. ``siim random linear 10% dice``."""
    return (
        f"{cell['task']} {cell['init']} {cell['protocol']} "
        f"{float(cell['fraction']) * 100:g}% {cell['metric']}"
    )


def _match_key(cell: dict) -> tuple:
    return (str(cell["task"]), str(cell["init"]), str(cell["protocol"]),
            round(float(cell["fraction"]), 9), str(cell["metric"]))  # fmt: skip


def _read_runs(runs_dir: str | Path) -> tuple[list[dict], pd.DataFrame]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {runs_dir} does not exist")
    records, _ = read_records(runs_dir)
    return records, records_to_frame(records)


def cells_from_frame(df: pd.DataFrame) -> dict[str, dict]:
    """Baseline-style cells (key -> fields + stats + seeds) from ``report.aggregate``
    of the complete runs in ``df`` (a ``report.load_records`` frame)."""
    cells = {}
    for r in aggregate(df).to_dict("records"):
        cell = {k: r[k] for k in GROUP}
        cell["fraction"] = float(cell["fraction"])
        cell.update({k: _finite(r.get(k)) for k in STAT_KEYS})
        cell["n"] = int(r.get("n") or 0)
        cell["seeds"] = [int(s) for s in r.get("seeds", [])]
        cells[cell_key(cell)] = cell
    return cells


def config_name(records: list[dict], runs_dir: str | Path) -> str:
    """The sweep config the runs came from: ``sweep.name``, ``sweep.config`` or
    ``config_name`` of the records when present, else the runs folder's name."""
    names = set()
    for rec in records:
        for field in ("sweep.name", "sweep.config", "config_name"):
            v = get_field(rec, field)
            if isinstance(v, str) and v:
                names.add(v)
                break
    return ", ".join(sorted(names)) if names else Path(runs_dir).resolve().name


def _settings(records: list[dict]) -> dict[str, list]:
    out = {}
    for field in SETTING_FIELDS:
        vals = {json.dumps(get_field(r, field)) for r in records if get_field(r, field) is not None}
        if vals:
            out[field] = [json.loads(v) for v in sorted(vals)]
    return out


# ---------------------------------------------------------------- baseline file


def build_baseline(runs_dir: str | Path, config: str | None = None) -> dict:
    """The baseline dict of the complete runs under ``runs_dir`` (see module doc)."""
    records, df = _read_runs(runs_dir)
    done = [r for r in records if r.get("status") == "complete"]
    cells = cells_from_frame(df)
    cells = {k: v for k, v in cells.items() if v["mean"] is not None}
    if not cells:
        raise ValueError(
            f"no complete run with a test primary metric under {runs_dir}: "
            "refusing to write an empty baseline"
        )
    commits = sorted({str(c) for r in done if (c := get_field(r, "env.git_commit"))})
    metrics = sorted({c["metric"] for c in cells.values()})
    return {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": ", ".join(commits) or None,
        "config": config or config_name(done, runs_dir),
        "runs_dir": str(runs_dir),
        "n_runs": len(done),
        "metric": f"test primary metric ({' / '.join(metrics)})",
        "settings": _settings(done),
        "cells": dict(sorted(cells.items())),
    }


def write_baseline(runs_dir: str | Path, path: str | Path, config: str | None = None) -> dict:
    """Build the baseline from ``runs_dir`` and write it to ``path`` atomically."""
    baseline = build_baseline(runs_dir, config)
    write_json_atomic(path, baseline)
    return baseline


def load_baseline(path: str | Path) -> dict:
    """Read and check a baseline file; FileNotFoundError / ValueError say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"baseline {path} not found; create it with "
            f"`bench compare RUNS --baseline {path} --update-baseline`"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"baseline {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise ValueError(f'{path} is not a cxrbench baseline (no "format": "{BASELINE_FORMAT}")')
    if data.get("version") != BASELINE_VERSION:
        raise ValueError(
            f"baseline {path} has version {data.get('version')}; this cxrbench reads "
            f"version {BASELINE_VERSION}"
        )
    cells = data.get("cells")
    if not isinstance(cells, dict):
        raise ValueError(f'baseline {path} has no "cells" mapping')
    for key, cell in cells.items():
        missing = [k for k in (*GROUP, "mean", "n") if not isinstance(cell, dict) or k not in cell]
        if missing:
            raise ValueError(f"baseline {path}: cell {key!r} lacks {', '.join(missing)}")
    return data


# ---------------------------------------------------------------- comparison


def _verdict(base: dict, new: dict | None, tolerance: float | None) -> dict:
    row = {"key": cell_key(base), "cell": cell_label(base), "baseline": base, "new": new}
    b_mean, b_half = _finite(base.get("mean")), _finite(base.get("ci_half"))
    margin = tolerance if tolerance is not None else (b_half if b_half is not None else 0.0)
    row["margin"] = margin
    row["margin_from"] = (
        "tolerance" if tolerance is not None else ("ci_half" if b_half is not None else "none")
    )
    n_mean = None if new is None else _finite(new.get("mean"))
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
    records, df = _read_runs(runs_dir)
    new_cells = {_match_key(c): c for c in cells_from_frame(df).values()}
    rows, seen = [], set()
    for cell in base["cells"].values():
        k = _match_key(cell)
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
    now = _settings(done)
    for field, was in (base.get("settings") or {}).items():
        if field in now and now[field] != was:
            notes.append(f"`{field}` differs: baseline {was}, runs {now[field]}")
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
    mean, half = _finite(c.get("mean")), _finite(c.get("ci_half"))
    n = int(c.get("n") or 0)
    if mean is None:
        return f"n/a (n={n})"
    return f"{mean:.4f}" + (f" ± {half:.4f}" if half is not None else "") + f" (n={n})"


def format_summary(result: dict, baseline_path: str | Path | None = None) -> str:
    """Markdown summary of :func:`compare`: verdict line, failing cells by name, the
    per-cell table (cell, baseline mean ± CI, new mean ± CI, delta, verdict), notes."""
    c, rows = result["counts"], result["rows"]
    failed = [r for r in rows if r["verdict"] in FAILING]
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
    lines += [
        "",
        f"A cell regresses when its new mean is below the baseline mean {rule}; cells of "
        "the baseline that are missing from the runs, or have fewer seeds, fail too.",
    ]
    if failed:
        lines += ["", "**Failing cells:**", ""]
        for r in failed:
            delta = (
                ""
                if r["delta"] is None
                else f" (Δ {r['delta']:+.4f}, allowed drop {r['margin']:.4f})"
            )
            lines.append(f"- {ICONS[r['verdict']]} `{r['cell']}`: {r['verdict']}{delta}")
    table = [
        "| cell | baseline | new | Δ | allowed drop | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    order = {v: i for i, v in enumerate(("regression", "missing", "incomplete", "improved",
                                         "ok", "new"))}  # fmt: skip
    for r in sorted(rows, key=lambda r: order[r["verdict"]]):
        delta = "" if r["delta"] is None else f"{r['delta']:+.4f}"
        margin = "" if r["margin"] is None else f"{r['margin']:.4f}"
        if r["margin_from"] == "none":
            margin += " (n=1, no CI)"
        table.append(
            f"| {r['cell']} | {_stats_text(r['baseline'])} | {_stats_text(r['new'])} | "
            f"{delta} | {margin} | {ICONS[r['verdict']]} {r['verdict']} |"
        )
    lines += ["", *table]
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
    return "\n".join(lines) + "\n"


def _emit(text: str, summary: str | Path | None) -> None:
    print(text, end="")
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(text)
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        with open(step, "a") as f:
            f.write(text + "\n")


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
        _emit(text, summary)
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
