"""Owns: run records as data: reading a folder of them, one flat row per run, the cells
they belong to, and the summaries over seeds that every table is built from.

:func:`read_records` finds the records (one JSON file per run, recursively) and skips,
with a warning naming them, files that do not parse or are not run records, and the
older copies of a run id read twice (the newest complete record is kept);
:func:`records_to_frame` flattens them (metric columns ``test_<name>``);
:func:`aggregate` summarizes a metric over seeds per ``GROUP`` cell with
:func:`bench.metrics.stats.summarize`, complete runs only, each seed once.
``bench.experiments`` reuses these for ``bench compare`` and ``bench status``.

A **cell** is defined by every setting that changes the result: the settings the run
id hashes (:meth:`bench.engine.config.RunConfig.identity`, evaluated on the record's
``config`` by :func:`result_settings`) minus the seed. Records of one (task, init,
protocol, fraction) that differ in any of them are never averaged: each cell becomes
its own table row, its ``init`` shown with the settings that differ, e.g.
``imagenet [lr=0.001]`` (the record's own init name stays in ``init_name``, the
bracket text in ``variant``). Rows rather than an error because one folder can
legitimately hold several settings (a sweep and its ``-lr-search`` candidates); the
report lists which settings differ in its notes, and ``bench compare``, which needs
one set of seeds per baseline cell, refuses such runs instead
(:func:`settings_conflicts`). Within a cell each seed counts once: of several complete
records of one seed, the newest (``timing.ended``, then the file's modification time)
is used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import warnings
from pathlib import Path

import pandas as pd

from bench.engine.config import DEFAULT_LR, RunConfig
from bench.engine.divergence import record_diverged
from bench.engine.records import get_field
from bench.metrics.stats import summarize

KEYS = ("run_id", "task", "init", "protocol", "fraction", "seed")
GROUP = ["task", "init", "protocol", "fraction", "metric"]
# settings a table already shows as its row group or columns (never in a variant label)
_IN_GROUP = ("task", "protocol", "fraction", "seed")


# ---------------------------------------------------------------- reading records


def read_records(runs_dir: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """All run records under ``runs_dir`` (recursive ``*.json``, sorted by path).

    Returns (records, skipped): each record is the parsed dict plus ``_path`` (relative
    to ``runs_dir``), ``_mtime`` (the file's modification time) and, when other files
    hold the same ``run_id``, ``_duplicates`` (their paths). skipped lists (path,
    reason) for files that do not parse, are not run records, lack a key of ``KEYS`` or
    a numeric fraction, or repeat a ``run_id``: of several records of one run id the
    newest complete one is kept (:func:`_newest`), the others are skipped. Each skip
    also warns with the full path.
    """
    runs_dir = Path(runs_dir)
    found, skipped = [], []
    for path in sorted(runs_dir.rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
            reason = _skip_reason(rec)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = f"not valid JSON ({exc.__class__.__name__}: {exc})"
        if reason is not None:
            warnings.warn(f"skipping {path}: {reason}", stacklevel=2)
            skipped.append((path.relative_to(runs_dir).as_posix(), reason))
            continue
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        found.append({**rec, "_path": path.relative_to(runs_dir).as_posix(), "_mtime": mtime})
    by_id: dict[str, list[dict]] = {}
    for rec in found:
        by_id.setdefault(rec["run_id"], []).append(rec)
    records = []
    for rec in found:
        same = by_id[rec["run_id"]]
        keep = _newest(same)
        if rec is keep:
            if len(same) > 1:
                rec["_duplicates"] = [r["_path"] for r in same if r is not keep]
            records.append(rec)
            continue
        reason = (
            f"duplicate run_id {rec['run_id']}: {keep['_path']} is used instead (of the "
            f"{len(same)} records of this run, the newest {keep.get('status')} one)"
        )
        warnings.warn(f"skipping {runs_dir / rec['_path']}: {reason}", stacklevel=2)
        skipped.append((rec["_path"], reason))
    return records, skipped


def _when(rec: dict) -> tuple:
    """When a record was written: ``timing.ended`` (else ``started``), then the file's
    modification time; ISO UTC strings compare in time order."""
    timing = rec.get("timing") if isinstance(rec.get("timing"), dict) else {}
    stamp = timing.get("ended") or timing.get("started") or ""
    return (str(stamp), float(rec.get("_mtime") or 0.0))


def _newest(recs: list[dict]) -> dict:
    """The record to use among records of one run: complete before any other status,
    then the newest (:func:`_when`); on a full tie the first by path."""
    best = recs[0]
    for rec in recs[1:]:
        if (rec.get("status") == "complete", _when(rec)) > (
            best.get("status") == "complete",
            _when(best),
        ):
            best = rec
    return best


def _skip_reason(rec) -> str | None:
    """Why a parsed file is not read as a run record (None: it is one)."""
    if not isinstance(rec, dict) or "run_id" not in rec:
        return "not a run record (no run_id)"
    if missing := [k for k in KEYS if rec.get(k) is None]:
        return f"run record without {', '.join(missing)}"
    if not _is_number(rec["fraction"]):
        return f"fraction {rec['fraction']!r} is not a number"
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
    excluded = {}
    for k, why in (sel.get("excluded") or {}).items():
        if not is_nan(num(k)):
            excluded[num(k)] = str(why)
    rule = sel.get("rule")
    return {
        "candidates": cands,
        "chosen": num(sel["chosen"]),
        "val_scores": scores,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "rule": str(rule) if rule else None,
        "excluded": excluded,
    }


def lr_used(row: dict) -> float:
    """The learning rate a run trained with: the searched choice, else the configured lr."""
    sel = row.get("lr_selection")
    return sel["chosen"] if isinstance(sel, dict) else row.get("lr")


# ---------------------------------------------------------------- cells


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _output(rec: dict, hparams: dict) -> str:
    """The output kind a record trained: ``hparams.detector`` is set exactly for boxes
    (``RunConfig.hparams``); without that field, the task registry says."""
    if "detector" in hparams:
        return "boxes" if hparams["detector"] is not None else "mask"
    try:
        from tasks import get_task

        return get_task(str(rec.get("task"))).output(str(rec.get("protocol")))
    except Exception:  # noqa: BLE001 - a task not registered here: no detector setting
        return "mask"


def result_settings(rec: dict) -> dict:
    """The settings of a record that change its result, minus the seed.

    Exactly what the run id hashes: :meth:`RunConfig.identity` evaluated on the record's
    ``config`` (the fields it lacks at their defaults, as for the run ids of older
    records; without a ``config`` the record's own fields stand in: task, init,
    protocol, fraction, arch, image_size and ``hparams``), with the lr the run trained
    with (``hparams.lr``) and its output kind. The list of settings is config.py's, not
    repeated here.
    """
    cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
    hp = rec.get("hparams") if isinstance(rec.get("hparams"), dict) else {}
    values = {f.name: _field_default(f) for f in dataclasses.fields(RunConfig)}
    fallback = {
        k: rec.get(k) for k in ("task", "protocol", "fraction", "seed", "arch", "image_size")
    }
    fallback["init"] = rec.get("init_spec") or rec.get("init")
    for k in ("epochs", "batch_size", "weight_decay", "patience", "detector"):
        fallback[k] = hp.get(k)
    values.update({k: v for k, v in fallback.items() if v is not None})
    values.update({k: v for k, v in cfg.items() if k in values})
    if not isinstance(values.get("extra"), dict):
        values["extra"] = {}
    lr = hp.get("lr") if _is_number(hp.get("lr")) else values.get("lr")
    if lr is None:
        lr = DEFAULT_LR.get(str(values.get("protocol")))
    ns = types.SimpleNamespace(**values, resolved_lr=lr, output=_output(rec, hp))
    ident = RunConfig.identity(ns)
    ident.pop("seed", None)
    return ident


def _norm(v):
    """A setting's value for comparing: numbers as floats (1 == 1.0), lists element-wise."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in v.items()}
    return str(v)


def cell_key(settings: dict) -> str:
    """The key of a cell: its settings (:func:`result_settings`) as canonical JSON."""
    return json.dumps({k: _norm(v) for k, v in settings.items()}, sort_keys=True, default=str)


def setting_text(v) -> str:
    """A setting's value in a row label: floats as ``%g`` when that is exact (else their
    shortest exact form), so two different values never print alike."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    if isinstance(v, (list, tuple)):
        return ",".join(setting_text(x) for x in v)
    return str(v)


def differing_settings(settings: list[dict]) -> list[str]:
    """The setting names whose values differ between ``settings`` (sorted), leaving out
    the table's own axes (task, protocol, fraction, seed)."""
    names = sorted({k for s in settings for k in s} - set(_IN_GROUP))
    return [
        k for k in names if len({json.dumps(_norm(s.get(k)), default=str) for s in settings}) > 1
    ]


def _label_cells(rows: list[dict]) -> None:
    """Give every row its ``variant`` and table ``init``: per (task, init, protocol,
    fraction), when its complete runs fall in more than one cell, the settings that
    differ between them (``imagenet [lr=0.001]``); otherwise the init name alone."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "complete":
            groups.setdefault(_group_of(r), []).append(r)
    varying = {
        key: differing_settings([r["settings"] for r in rs])
        for key, rs in groups.items()
        if len({r["cell"] for r in rs}) > 1
    }
    for r in rows:
        names = varying.get(_group_of(r), [])
        r["variant"] = ", ".join(f"{k}={setting_text(r['settings'].get(k))}" for k in names)
        r["init"] = f"{r['init_name']} [{r['variant']}]" if r["variant"] else r["init_name"]


def _group_of(r: dict) -> tuple:
    return (r["task"], r["init_name"], r["protocol"], r["fraction"])


def settings_conflicts(df: pd.DataFrame) -> list[dict]:
    """Per (task, init, protocol, fraction) whose complete runs fall in more than one
    cell: ``{"task", "init", "protocol", "fraction", "settings": {name: [values]},
    "cells": [labels]}`` naming the settings that differ (their distinct values)."""
    if df.empty or "cell" not in df:
        return []
    d = df[df["status"] == "complete"]
    out = []
    for (task, init, proto, frac), g in d.groupby(
        ["task", "init_name", "protocol", "fraction"], sort=True
    ):
        if g["cell"].nunique() < 2:
            continue
        settings = list(g["settings"])
        names = differing_settings(settings)
        values = {k: sorted({setting_text(s.get(k)) for s in settings}) for k in names}
        out.append({"task": task, "init": init, "protocol": proto, "fraction": float(frac),
                    "settings": values, "cells": sorted(g["init"].unique())})  # fmt: skip
    return out


def seed_duplicates(df: pd.DataFrame) -> list[dict]:
    """Complete records of one seed in one cell under different run ids (read twice
    under one run id is :func:`read_records`' business): ``{"task", "init", "protocol",
    "fraction", "seed", "used", "ignored"}`` with the run ids, the newest first."""
    if df.empty or "cell" not in df:
        return []
    d = df[df["status"] == "complete"]
    out = []
    for key, g in d.groupby(["task", "init", "protocol", "fraction", "cell", "seed"], sort=True):
        if len(g) < 2:
            continue
        g = _newest_first(g)
        task, init, proto, frac, _, seed = key
        out.append({"task": task, "init": init, "protocol": proto, "fraction": float(frac),
                    "seed": seed, "used": g["run_id"].iloc[0],
                    "ignored": list(g["run_id"].iloc[1:])})  # fmt: skip
    return out


def _newest_first(d: pd.DataFrame) -> pd.DataFrame:
    return d.sort_values(["ended", "mtime", "path"], ascending=[False, False, True], kind="stable")


def one_per_seed(d: pd.DataFrame) -> pd.DataFrame:
    """``d`` with one row per (cell, seed): the newest (``timing.ended``, then the file's
    modification time). Frames without cells are returned as they are."""
    if d.empty or "cell" not in d:
        return d
    keys = [k for k in ("task", "init", "protocol", "fraction", "cell", "seed") if k in d]
    return _newest_first(d).drop_duplicates(keys, keep="first").sort_index()


# ---------------------------------------------------------------- the flat frame


def _row(rec: dict) -> dict:
    primary = _primary(rec)
    test = get_field(rec, "metrics.test", {}) or {}
    val = get_field(rec, "metrics.val", {}) or {}
    error = rec.get("error")
    row = {k: rec.get(k) for k in KEYS}
    settings = result_settings(rec)
    timing = rec.get("timing") if isinstance(rec.get("timing"), dict) else {}
    row.update(
        init_name=str(rec["init"]),
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
        diverged=record_diverged(rec),
        settings=settings,
        cell=cell_key(settings),
        ended=str(timing.get("ended") or timing.get("started") or ""),
        mtime=float(rec.get("_mtime") or 0.0),
        duplicates=list(rec.get("_duplicates") or []),
    )
    for k, v in test.items():
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            row[f"test_{k}"] = num(v)
    return row


def records_to_frame(records: list[dict]) -> pd.DataFrame:
    """One flat row per record (every status); metric columns are ``test_<name>``.

    ``init`` is the table's row label (the init name, plus the differing settings when
    one (task, init, protocol, fraction) holds several cells: module docstring);
    ``init_name`` the record's init, ``cell`` / ``settings`` / ``variant`` its cell."""
    cols = [*KEYS, "status", "primary_metric", "test_primary", "synthetic", "leakage", "partial",
            "init_name", "cell", "settings", "variant"]  # fmt: skip
    if not records:
        return pd.DataFrame(columns=cols)
    rows = [_row(r) for r in records]
    _label_cells(rows)
    return pd.DataFrame(rows)


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
    n_ignored, seeds, n_runs (complete records of the cell, before one per seed) and
    any-of flags synthetic, leakage, partial. Only complete runs are used, each seed of
    a cell once (:func:`one_per_seed`); ``init`` is the row label, so records of
    different settings are different cells (module docstring).
    """
    d = df[df["status"] == "complete"] if "status" in df else df
    runs = d.groupby(GROUP[:-1], sort=False, dropna=False).size() if len(d) else None
    d = one_per_seed(d)
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
                "n_runs": int(runs.get(tuple(key[:-1]), len(g))) if runs is not None else len(g),
                "synthetic": bool(g["synthetic"].any()),
                "leakage": bool(g["leakage"].any()),
                "partial": bool(g["partial"].any()),
                "init_name": str(g["init_name"].iloc[0]) if "init_name" in g else key[1],
                "variant": str(g["variant"].iloc[0]) if "variant" in g else "",
            }
        )
    return pd.DataFrame(rows)


__all__ = [
    "GROUP",
    "KEYS",
    "aggregate",
    "cell_key",
    "differing_settings",
    "is_nan",
    "load_records",
    "lr_used",
    "num",
    "one_per_seed",
    "read_records",
    "records_to_frame",
    "result_settings",
    "seed_duplicates",
    "setting_text",
    "settings_conflicts",
]
