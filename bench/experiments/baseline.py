"""Owns: the baseline of ``bench compare``: its cells, and building, writing, loading it.

A cell is one (task, init, protocol, fraction, metric) of the report's main tables: the
test primary metric summarized over seeds by :func:`bench.reporting.frame.aggregate`
(no second aggregation here). The verdicts are :mod:`bench.experiments.compare`.

Baseline file (JSON, ``BASELINE_FORMAT`` version ``BASELINE_VERSION``)::

    {"format": "cxrbench-baseline", "version": 1,
     "created": "2025-01-01T00:00:00+00:00",      # UTC, when it was written
     "git_commit": "3f2c...",                     # commit(s) of the runs (env.git_commit)
     "config": "ci",                              # sweep config name (see config_name)
     "runs_dir": "runs/ci", "n_runs": 12,         # complete runs it was built from
     "metric": "test primary metric (dice / map)",
     "settings": {"arch": ["resnet18"], ...},     # distinct values, compared as notes
     "cells": {"mytask/random/linear/0.1/dice":
                 {"task": "mytask", "init": "random", "protocol": "linear",
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
from pathlib import Path

import pandas as pd

from bench.engine.records import get_field, write_json_atomic
from bench.reporting import GROUP, aggregate, read_records, records_to_frame

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


# ---------------------------------------------------------------- cells


def finite(v) -> float | None:
    """``v`` as a float, or None when it is not a finite number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def cell_key(cell: dict) -> str:
    """``task/init/protocol/fraction/metric``, e.g. ``mytask/random/linear/0.1/dice``."""
    return f"{cell['task']}/{cell['init']}/{cell['protocol']}/{float(cell['fraction']):g}/{cell['metric']}"


def cell_label(cell: dict) -> str:
    """Human name of a cell, e.g. ``mytask random linear 10% dice``."""
    return (
        f"{cell['task']} {cell['init']} {cell['protocol']} "
        f"{float(cell['fraction']) * 100:g}% {cell['metric']}"
    )


def match_key(cell: dict) -> tuple:
    """What matches a baseline cell with a cell of the runs (fraction rounded)."""
    return (str(cell["task"]), str(cell["init"]), str(cell["protocol"]),
            round(float(cell["fraction"]), 9), str(cell["metric"]))  # fmt: skip


def read_runs(runs_dir: str | Path) -> tuple[list[dict], pd.DataFrame]:
    """The records under ``runs_dir`` (recursively) and their report frame."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {runs_dir} does not exist")
    records, _ = read_records(runs_dir)
    return records, records_to_frame(records)


def cells_from_frame(df: pd.DataFrame) -> dict[str, dict]:
    """Baseline-style cells (key -> fields + stats + seeds) from
    :func:`~bench.reporting.frame.aggregate` of the complete runs in ``df`` (a
    :func:`~bench.reporting.frame.records_to_frame` frame)."""
    cells = {}
    for r in aggregate(df).to_dict("records"):
        cell = {k: r[k] for k in GROUP}
        cell["fraction"] = float(cell["fraction"])
        cell.update({k: finite(r.get(k)) for k in STAT_KEYS})
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


def settings_of(records: list[dict]) -> dict[str, list]:
    """The distinct values of each of ``SETTING_FIELDS`` in ``records`` (sorted)."""
    out = {}
    for field in SETTING_FIELDS:
        vals = {json.dumps(get_field(r, field)) for r in records if get_field(r, field) is not None}
        if vals:
            out[field] = [json.loads(v) for v in sorted(vals)]
    return out


# ---------------------------------------------------------------- baseline file


def build_baseline(runs_dir: str | Path, config: str | None = None) -> dict:
    """The baseline dict of the complete runs under ``runs_dir`` (see module doc)."""
    records, df = read_runs(runs_dir)
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
        "settings": settings_of(done),
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
