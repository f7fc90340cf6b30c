"""Owns: run records as data: reading a folder of them, one flat row per run, and the
summaries over seeds that every table is built from.

:func:`read_records` finds the records (one JSON file per run, recursively) and skips,
with a warning naming them, files that do not parse or are not run records;
:func:`records_to_frame` flattens them (metric columns ``test_<name>``);
:func:`aggregate` summarizes a metric over seeds per ``GROUP`` cell with
:func:`bench.metrics.stats.summarize`, complete runs only. ``bench.experiments`` reuses
these for ``bench compare`` and ``bench status``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd

from bench.engine.records import get_field
from bench.metrics.stats import summarize

KEYS = ("run_id", "task", "init", "protocol", "fraction", "seed")
GROUP = ["task", "init", "protocol", "fraction", "metric"]


# ---------------------------------------------------------------- reading records


def read_records(runs_dir: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """All run records under ``runs_dir`` (recursive ``*.json``, sorted by path).

    Returns (records, skipped): each record is the parsed dict plus ``_path`` (relative
    to ``runs_dir``); skipped lists (path, reason) for files that do not parse, are not
    run records, lack a key of ``KEYS`` or a numeric fraction, or repeat a ``run_id``
    already read. Each skip also warns with the full path.
    """
    runs_dir = Path(runs_dir)
    records, skipped, seen = [], [], {}
    for path in sorted(runs_dir.rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
            reason = _skip_reason(rec, seen)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = f"not valid JSON ({exc.__class__.__name__}: {exc})"
        if reason is not None:
            warnings.warn(f"skipping {path}: {reason}", stacklevel=2)
            skipped.append((path.relative_to(runs_dir).as_posix(), reason))
            continue
        seen[rec["run_id"]] = path
        records.append({**rec, "_path": path.relative_to(runs_dir).as_posix()})
    return records, skipped


def _skip_reason(rec, seen: dict) -> str | None:
    """Why a parsed file is not read as a run record (None: it is one)."""
    if not isinstance(rec, dict) or "run_id" not in rec:
        return "not a run record (no run_id)"
    if missing := [k for k in KEYS if rec.get(k) is None]:
        return f"run record without {', '.join(missing)}"
    if not _is_number(rec["fraction"]):
        return f"fraction {rec['fraction']!r} is not a number"
    if rec["run_id"] in seen:
        return f"duplicate run_id {rec['run_id']} (already read from {seen[rec['run_id']]})"
    return None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_nan(v) -> bool:
    """None or NaN: a missing value."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def num(v) -> float:
    """``v`` as a float; NaN for None, booleans and anything that is not a number."""
    try:
        return float(v) if v is not None and not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _primary(rec: dict) -> str:
    if rec.get("primary_metric"):
        return str(rec["primary_metric"])
    test = get_field(rec, "metrics.test", {}) or {}
    return "map" if "map" in test and "dice" not in test else "dice"


def _lr_selection(rec: dict) -> dict | None:
    """The record's ``lr_selection`` normalized: candidates and chosen as floats,
    val_scores keyed by float lr (JSON keys are strings); None when absent or unusable."""
    sel = rec.get("lr_selection")
    if not isinstance(sel, dict) or is_nan(num(sel.get("chosen"))):
        return None
    scores = {}
    for k, v in (sel.get("val_scores") or {}).items():
        if not is_nan(num(k)):
            scores[num(k)] = num(v)
    cands = [num(c) for c in sel.get("candidates") or []]
    cands = sorted({c for c in cands if not is_nan(c)} | set(scores))
    seed = sel.get("seed")
    return {
        "candidates": cands,
        "chosen": num(sel["chosen"]),
        "val_scores": scores,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    }


def lr_used(row: dict) -> float:
    """The learning rate a run trained with: the searched choice, else the configured lr."""
    sel = row.get("lr_selection")
    return sel["chosen"] if isinstance(sel, dict) else row.get("lr")


# ---------------------------------------------------------------- the flat frame


def _row(rec: dict) -> dict:
    primary = _primary(rec)
    test = get_field(rec, "metrics.test", {}) or {}
    val = get_field(rec, "metrics.val", {}) or {}
    error = rec.get("error")
    row = {k: rec.get(k) for k in KEYS}
    row.update(
        fraction=float(rec["fraction"]),
        status=str(rec.get("status") or "unknown"),
        arch=rec.get("arch"),
        image_size=rec.get("image_size"),
        primary_metric=primary,
        test_primary=num(test.get(primary)),
        val_primary=num(val.get(primary)),
        lr=num(get_field(rec, "hparams.lr")),
        epochs=get_field(rec, "hparams.epochs"),
        batch_size=get_field(rec, "hparams.batch_size"),
        best_epoch=rec.get("best_epoch"),
        epochs_run=len(rec["history"]) if isinstance(rec.get("history"), list) else None,
        lr_selection=_lr_selection(rec),
        wall_s=num(get_field(rec, "timing.wall_s")),
        synthetic=bool(get_field(rec, "data.synthetic", False)),
        partial=bool(get_field(rec, "weights.partial", False)),
        leakage=bool(get_field(rec, "weights.leakage", False)),
        error=None if error is None else str(error),
        path=rec.get("_path"),
    )
    for k, v in test.items():
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            row[f"test_{k}"] = num(v)
    return row


def records_to_frame(records: list[dict]) -> pd.DataFrame:
    """One flat row per record (every status); metric columns are ``test_<name>``."""
    cols = [*KEYS, "status", "primary_metric", "test_primary", "synthetic", "leakage", "partial"]
    if not records:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame([_row(r) for r in records])


def load_records(runs_dir: str | Path, include_incomplete: bool = False) -> pd.DataFrame:
    """Run records under ``runs_dir`` as a DataFrame, one row per complete run
    (``include_incomplete=True`` keeps failed/nan_loss/running rows too)."""
    df = records_to_frame(read_records(runs_dir)[0])
    return df if include_incomplete else df[df["status"] == "complete"].reset_index(drop=True)


# ---------------------------------------------------------------- aggregation


def aggregate(df: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Summaries over seeds per (task, init, protocol, fraction, metric).

    ``metric=None`` summarizes each run's own test primary metric; a name summarizes
    ``test_<metric>``. Columns: the group keys, mean, std, ci_low, ci_high, ci_half, n,
    n_ignored, seeds, n_runs and any-of flags synthetic, leakage, partial. Only complete
    runs are used.
    """
    d = df[df["status"] == "complete"] if "status" in df else df
    col = "test_primary" if metric is None else f"test_{metric}"
    if d.empty or col not in d:
        return pd.DataFrame(columns=[*GROUP, "mean", "ci_half", "n"])
    d = d.assign(metric=d["primary_metric"] if metric is None else metric, _v=d[col])
    rows = []
    for key, g in d.groupby(GROUP, sort=False, dropna=False):
        s = summarize(g["_v"].tolist())
        rows.append(
            dict(zip(GROUP, key))
            | s
            | {
                "seeds": sorted(g["seed"].tolist()),
                "n_runs": len(g),
                "synthetic": bool(g["synthetic"].any()),
                "leakage": bool(g["leakage"].any()),
                "partial": bool(g["partial"].any()),
            }
        )
    return pd.DataFrame(rows)


__all__ = [
    "GROUP",
    "KEYS",
    "aggregate",
    "is_nan",
    "load_records",
    "lr_used",
    "num",
    "read_records",
    "records_to_frame",
]
