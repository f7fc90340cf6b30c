"""Owns: `bench status RUNS [--config SWEEP.yaml]`: what is done, running, failed, missing.

Reads the run records under RUNS (recursively, as ``bench report`` does) and prints the
count per status and one table per status. With the sweep file, it also lists the runs
of the sweep that have no record yet (``missing``; final runs whose lr search has not
finished are listed without a run id), and reads the sweep's lr-search folder too.
A ``running`` record is live only while its process runs; the header says whether a
``bench sweep`` holds the folder's lock on this machine.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from bench.engine.records import STATUSES

ORDER = ("running", "failed", "nan_loss", "complete")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def read_folder(folder: Path, stage: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Run records under ``folder`` (``bench.reporting.frame.read_records``), tagged with
    ``stage``."""
    from bench.reporting import read_records

    if not folder.exists():
        return [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records, skipped = read_records(folder)
    return [r | {"_stage": stage} for r in records], skipped


BASE = ["run_id", "stage", "task", "init", "protocol", "fraction", "seed", "lr"]
_IDENTITY = ("task", "init", "protocol", "fraction", "seed")  # the columns between stage, lr


def _row(r: dict, status: str) -> list:
    lr = (r.get("lr_selection") or {}).get("chosen") or (r.get("hparams") or {}).get("lr")
    row = [r["run_id"], r.get("_stage"), *(r.get(k) for k in _IDENTITY), lr]
    timing = r.get("timing") or {}
    if status == "complete":
        metric = r.get("primary_metric")
        val = ((r.get("metrics") or {}).get("val") or {}).get(metric)
        test = ((r.get("metrics") or {}).get("test") or {}).get(metric)
        return row + [metric, val, test, timing.get("wall_s")]
    if status == "running":
        return row + [timing.get("started")]
    return row + [str(r.get("error") or "")[:120]]


def _missing_row(r: dict) -> list:
    """A row of the ``missing`` table from a plan row (``bench.experiments.plan.plan``)."""
    return [r["run_id"] or "(after lr search)", r["stage"], *(r[k] for k in _IDENTITY), r["lr"]]


def _extra_header(status: str) -> list[str]:
    if status == "complete":
        return ["metric", "val", "test", "wall_s"]
    if status == "running":
        return ["started"]
    return ["error"]


def _read_all(runs: Path, sweep) -> tuple[list[dict], list[tuple[str, str]], list[Path]]:
    """The records of ``runs`` and, with an lr-searching sweep, of its lr-search folder."""
    records, skipped = read_folder(runs, "runs")
    folders = [runs]
    if sweep is not None and sweep.lr_search is not None:
        lr_out = Path(sweep.lr_search.out)
        more, more_skipped = read_folder(lr_out, "lr_search")
        records += more
        skipped += more_skipped
        folders.append(lr_out)
    return records, skipped, folders


def _sweep_line(sweep, rows: list[dict], missing: list[dict]) -> str:
    n_lr = sum(r["stage"] == "lr_search" for r in rows)
    return (
        f"sweep {sweep.source} (out {sweep.out}): {len(rows) - n_lr} runs"
        + (f" + {n_lr} lr-search runs" if n_lr else "")
        + f", {len(missing)} without a record"
    )


def _status_tables(by_status: dict[str, list[dict]]) -> list[str]:
    lines = []
    for status in [*ORDER, *sorted(set(by_status) - set(ORDER))]:
        recs = by_status.get(status)
        if not recs:
            continue
        rows = [_row(r, status) for r in sorted(recs, key=lambda r: (r["_stage"], r["run_id"]))]
        lines += ["", f"{status} ({len(recs)})", _table(BASE + _extra_header(status), rows)]
    return lines


def status_text(runs: str | Path | None = None, config: str | Path | None = None) -> str:
    """The text ``bench status`` prints (RUNS defaults to the sweep's ``out``)."""
    from bench.experiments.lock import lock_holder
    from bench.experiments.plan import plan
    from bench.experiments.sweep import load_sweep

    sweep = load_sweep(config) if config else None
    if runs is None:
        if sweep is None:
            raise ValueError("give a runs folder, a --config sweep file, or both")
        runs = sweep.out
    runs = Path(runs)
    if sweep is None and not runs.exists():
        raise FileNotFoundError(f"no such folder: {runs}")
    records, skipped, folders = _read_all(runs, sweep)

    by_status: dict[str, list[dict]] = {}
    for r in records:
        by_status.setdefault(str(r.get("status")), []).append(r)
    counts = {s: len(by_status.get(s, [])) for s in STATUSES}
    counts.update({s: len(v) for s, v in by_status.items() if s not in counts})

    lines = [f"records in {', '.join(map(str, folders))}: {len(records)}"]
    for folder in folders:
        pid = lock_holder(folder)
        if pid is not None:
            lines.append(f"a `bench sweep` (pid {pid}) is running on {folder}")
    missing = []
    if sweep is not None:
        rows = plan(sweep)  # looks in the sweep's own folders
        missing = [r for r in rows if r["record"] is None]
        lines.append(_sweep_line(sweep, rows, missing))
    summary = ", ".join(f"{s} {n}" for s, n in counts.items())
    lines.append(summary + (f", missing {len(missing)}" if sweep else ""))

    lines += _status_tables(by_status)
    if missing:
        rows = [_missing_row(r) for r in missing]
        lines += ["", f"missing ({len(missing)})", _table(BASE, rows)]
    if skipped:
        lines += [
            "",
            f"not run records ({len(skipped)})",
            _table(["file", "why"], [list(s) for s in skipped]),
        ]
    return "\n".join(lines)
