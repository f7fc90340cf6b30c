"""Owns: the baseline of ``bench compare``: its cells, and building, writing, loading it.

A cell is one (task, init, protocol, fraction, metric) of the report's main tables: the
test primary metric summarized over seeds by :func:`bench.reporting.frame.aggregate`
(no second aggregation here, each seed once). A cell is also one set of settings: runs
of one (task, init, protocol, fraction) that differ in a setting that changes the
result (:func:`bench.reporting.frame.result_settings`, e.g. a sweep read together with
its ``-lr-search`` candidates) are refused with a ValueError naming the settings
(:func:`check_one_setting_per_cell`), since a baseline cell holds one set of seeds.
Each cell keeps its ``settings`` so that ``bench compare`` can name the settings that
differ from the baseline's. The verdicts are :mod:`bench.experiments.compare`.

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
                  "seeds": [0, 1, 2], "values": [0.60, 0.62, 0.61],  # per seed, in seed order
                  "settings": {"arch": "resnet18", "lr": 0.001, ...}}, ...}}

     "machine": {"torch": ["2.14.1+cpu"],       # env.torch of the runs
                 "cpu": "AMD EPYC 9654",          # /proc/cpuinfo model name (else
                 "processor": "x86_64",           #   platform.processor()) of the
                 "platform": "Linux-..."}}        #   machine that wrote the baseline

``values`` (per-seed test values) and ``machine`` were added within version 1: a
baseline without them still loads; ``bench compare`` then says that the per-seed values
are missing, so no test runs and only the allowed drop (tolerance) applies.

The cell key is for reading diffs only; the fields inside each cell are what is
compared.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
from pathlib import Path

import pandas as pd

from bench.engine.records import get_field, write_json_atomic
from bench.env import cpu_model
from bench.reporting import GROUP, aggregate, read_records, records_to_frame
from bench.reporting.frame import one_per_seed, setting_text, settings_conflicts

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


def check_one_setting_per_cell(df: pd.DataFrame) -> None:
    """ValueError naming the cells whose complete runs differ in a setting that changes
    the result (:func:`bench.reporting.frame.settings_conflicts`), and those settings."""
    conflicts = settings_conflicts(df)
    if not conflicts:
        return
    parts = []
    for c in conflicts[:5]:
        differ = "; ".join(f"{k}: {', '.join(v)}" for k, v in c["settings"].items())
        parts.append(
            f"{c['task']} {c['init']} {c['protocol']} {float(c['fraction']) * 100:g}% ({differ})"
        )
    more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
    raise ValueError(
        f"the runs hold more than one set of settings for {len(conflicts)} cell(s), which "
        f"would be compared as one: {'; '.join(parts)}{more}. A cell is every setting "
        "that changes the result (the run id's settings minus the seed); give the folder "
        "of one sweep (not together with its -lr-search folder) or of one configuration"
    )


def cells_from_frame(df: pd.DataFrame) -> dict[str, dict]:
    """Baseline-style cells (key -> fields + stats + seeds + settings) from
    :func:`~bench.reporting.frame.aggregate` of the complete runs in ``df`` (a
    :func:`~bench.reporting.frame.records_to_frame` frame); ValueError when a cell's
    runs differ in a setting that changes the result (:func:`check_one_setting_per_cell`)."""
    check_one_setting_per_cell(df)
    settings = {}
    if "settings" in df and len(df):
        for r in df[df["status"] == "complete"].to_dict("records"):
            settings.setdefault((r["task"], r["init"], r["protocol"], float(r["fraction"])),
                                r["settings"])  # fmt: skip
    values = _per_seed_values(df)
    cells = {}
    for r in aggregate(df).to_dict("records"):
        cell = {k: r[k] for k in GROUP}
        cell["fraction"] = float(cell["fraction"])
        cell.update({k: finite(r.get(k)) for k in STAT_KEYS})
        cell["n"] = int(r.get("n") or 0)
        cell["seeds"] = [int(s) for s in r.get("seeds", [])]
        by_seed = values.get(match_key(cell), {})
        cell["values"] = [by_seed[s] for s in sorted(by_seed)]
        found = settings.get((cell["task"], cell["init"], cell["protocol"], cell["fraction"]))
        if found is not None:
            cell["settings"] = json.loads(json.dumps(found, default=str))
        cells[cell_key(cell)] = cell
    return cells


def _per_seed_values(df: pd.DataFrame) -> dict[tuple, dict[int, float]]:
    """match_key -> {seed: finite test primary value}, the same rows as ``aggregate``
    (complete runs, one per seed)."""
    d = df[df["status"] == "complete"] if "status" in df else df
    d = one_per_seed(d)
    out: dict[tuple, dict[int, float]] = {}
    if d.empty or "test_primary" not in d:
        return out
    for r in d.to_dict("records"):
        v = finite(r.get("test_primary"))
        if v is None:
            continue
        cell = {k: r[k] for k in GROUP[:-1]} | {"metric": r["primary_metric"]}
        out.setdefault(match_key(cell), {})[int(r["seed"])] = v
    return out


def torch_builds(records: list[dict]) -> list[str]:
    """The distinct ``env.torch`` of ``records`` (sorted)."""
    return sorted({str(v) for r in records if (v := get_field(r, "env.torch"))})


def machine_of(records: list[dict]) -> dict:
    """The torch build(s) of the runs and this machine's CPU: a baseline's ``machine``.
    The CPU is the records' ``env.cpu`` when they carry one, else this machine's."""
    cpus = sorted({str(v) for r in records if (v := get_field(r, "env.cpu"))})
    return {"torch": torch_builds(records), "cpu": ", ".join(cpus) or cpu_model(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform()}  # fmt: skip


def settings_differences(base: dict, new: dict) -> list[str]:
    """``name: baseline X, runs Y`` for each result-changing setting in which the two
    cells differ (none when either cell has no ``settings``, e.g. an older baseline)."""
    a, b = base.get("settings"), new.get("settings")
    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if json.dumps(va, sort_keys=True) != json.dumps(vb, sort_keys=True):
            out.append(f"{k}: baseline {setting_text(va)}, runs {setting_text(vb)}")
    return out


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
        "machine": machine_of(done),
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
