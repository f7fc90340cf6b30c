"""Owns: the verdict of ``bench compare``: a set of runs against a committed baseline.

Cells and the baseline file are :mod:`bench.experiments.baseline`; each cell is the test
primary metric summarized over seeds by :func:`bench.reporting.frame.aggregate`. Per cell:

- ✅ ``ok`` without a test when the per-seed values are identical (same seeds, same
  values: same machine, same build).
- ❌ ``regression``: a one-sided test of the new per-seed values against the baseline's
  rejects H0 "new >= baseline" at ``alpha`` (default 0.05, ``p <= alpha``), with at
  least ``MIN_SEEDS`` (3) seeds on both sides; or the new mean is below the baseline
  mean by more than ``tolerance`` (absolute) when one is given. The test
  (:func:`bench.metrics.stats.drop_test`) is Welch's t-test when both sides have >= 5
  seeds, else an exact permutation test of the difference of the means (with 3 vs 3
  seeds its smallest p is 1/20 = 0.05, so a clear drop can still reject at 0.05).
- ⚠ ``no power``: fewer than 3 seeds on a side and no tolerance regression: the check
  cannot detect a drop, which is said rather than passed. It fails (exit 1) unless
  ``allow_low_power`` (``--allow-low-power``), where it is reported only.
- ✅ ``improved`` (the same test rejects "new <= baseline") or ✅ ``ok``. With
  ``two_sided`` (``--two-sided``, what the CI benchmark uses) each side is tested at
  ``alpha / 2`` and a significant rise (or one beyond ``tolerance``) is ❌ ``changed``,
  a failure: a harness whose numbers rise by themselves has a bug as surely as one
  whose numbers drop (a metric that counts the wrong thing usually inflates).
- An older baseline without per-seed ``values``: no test; the allowed drop is
  ``tolerance``, else that baseline's 95% CI half-width (its rule), and the summary says
  that the per-seed values are missing.

Each row shows the test, its p-value and the minimum detectable drop for the baseline's
n and standard deviation s at ``alpha`` and power 0.8:
``(t_{1-alpha,2n-2} + t_{0.8,2n-2}) * s * sqrt(2/n)``
(:func:`bench.metrics.stats.min_detectable_drop`). The header warns when the runs'
torch build (``env.torch``) or CPU (the records' ``env.cpu``, else this machine's model
name) differs from the baseline's ``machine``.
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
    machine_of,
    match_key,
    read_runs,
    settings_differences,
    settings_of,
    write_baseline,
)
from bench.metrics.stats import ALPHA, MIN_SEEDS, POWER, drop_test, min_detectable_drop

ICONS = {"ok": "✅", "improved": "✅", "regression": "❌", "changed": "❌", "no power": "⚠", "missing": "⚠",
         "incomplete": "⚠", "new": "🆕"}  # fmt: skip
FAILING = ("regression", "changed", "missing", "incomplete")  # + "no power" unless allow_low_power
ORDER = ("regression", "changed", "no power", "missing", "incomplete", "improved", "ok", "new")
_EPS = 1e-12  # float noise allowed on top of the margin


# ---------------------------------------------------------------- comparison


def _identical(base: dict, new: dict) -> bool:
    """Same seeds with the same per-seed values (same machine, same build)."""
    bv, nv = base.get("values"), new.get("values")
    if not bv or not nv or base.get("seeds") != new.get("seeds") or len(bv) != len(nv):
        return False
    return all(abs(float(a) - float(b)) <= _EPS for a, b in zip(bv, nv))


def _verdict(base: dict, new: dict | None, tolerance: float | None, alpha: float,
             two_sided: bool = False) -> dict:  # fmt: skip
    row = {"key": cell_key(base), "cell": cell_label(base), "baseline": base, "new": new,
           "test": None, "p": None}  # fmt: skip
    b_mean, b_half = finite(base.get("mean")), finite(base.get("ci_half"))
    per_seed = isinstance(base.get("values"), list) and len(base["values"]) > 0
    # the allowed drop: --tolerance; an old baseline without per-seed values falls back
    # to its 95% CI half-width (the rule it was written for)
    if tolerance is not None:
        margin, margin_from = tolerance, "tolerance"
    elif not per_seed:
        margin, margin_from = (b_half, "ci_half") if b_half is not None else (0.0, "none")
    else:
        margin, margin_from = None, None
    row.update(margin=margin, margin_from=margin_from)
    row["mdd"] = min_detectable_drop(finite(base.get("std")), int(base.get("n") or 0), alpha)
    n_mean = None if new is None else finite(new.get("mean"))
    if new is None or n_mean is None or b_mean is None:
        row.update(verdict="missing", delta=None)
        return row
    delta = n_mean - b_mean
    row["delta"] = delta
    n_new, n_base = int(new.get("n") or 0), int(base.get("n") or 0)
    if per_seed and _identical(base, new):
        row.update(test="identical", verdict="ok")
        return row
    level = alpha / 2 if two_sided else alpha  # two-sided: alpha/2 on each side
    if not per_seed:
        row["test"] = "no per-seed values"
    else:
        t = drop_test(new.get("values") or [], base["values"], level)
        row.update(test=t["test"], p=t["p"], p_up=t["p_up"])
    powered = per_seed and min(n_new, n_base) >= MIN_SEEDS
    rose = powered and t["p_up"] is not None and t["p_up"] <= level + _EPS
    if margin is not None and delta < -margin - _EPS:
        row["verdict"] = "regression"
    elif powered and t["reject"]:
        row["verdict"] = "regression"
    elif two_sided and (rose or (margin is not None and delta > margin + _EPS)):
        row["verdict"] = "changed"
    elif n_new < n_base:
        row["verdict"] = "incomplete"
    elif per_seed and min(n_new, n_base) < MIN_SEEDS:
        row["verdict"] = "no power"
    elif rose:
        row["verdict"] = "improved"
    elif not per_seed and delta > margin + _EPS:
        row["verdict"] = "improved"
    else:
        row["verdict"] = "ok"
    return row


def _machine_notes(base: dict, done: list[dict]) -> list[str]:
    """Warnings when the runs' torch build or CPU differs from the baseline's."""
    was = base.get("machine")
    if not isinstance(was, dict):
        return ["the baseline records no torch build or CPU (an older baseline): the "
                "machine cannot be checked"]  # fmt: skip
    now = machine_of(done)
    out = []
    if was.get("torch") and now["torch"] and list(was["torch"]) != now["torch"]:
        out.append(f"torch build differs: baseline {', '.join(was['torch'])}, runs "
                   f"{', '.join(now['torch'])}")  # fmt: skip
    if was.get("cpu") and was["cpu"] != now["cpu"]:
        out.append(f"CPU differs: baseline {was['cpu']}, runs {now['cpu']}")
    return out


def compare(
    runs_dir: str | Path,
    baseline: dict | str | Path,
    tolerance: float | None = None,
    alpha: float = ALPHA,
    allow_low_power: bool = False,
    two_sided: bool = False,
) -> dict:
    """Compare the runs under ``runs_dir`` with a baseline (dict or file).

    Returns ``{"rows", "counts", "failed", "runs_dir", "baseline", "n_complete",
    "not_complete", "notes", "machine_notes", "per_seed", "tolerance", "alpha",
    "allow_low_power"}``: one row per baseline cell then per new cell, each ``{"key",
    "cell", "baseline", "new", "delta", "margin", "margin_from", "test", "p", "mdd",
    "verdict"}``; ``failed`` is True when any verdict is in ``FAILING`` (or is ``no
    power`` without ``allow_low_power``).
    """
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"--tolerance must be a non-negative number, got {tolerance}")
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise ValueError(f"--alpha must be between 0 and 1, got {alpha}")
    base = baseline if isinstance(baseline, dict) else load_baseline(baseline)
    records, df = read_runs(runs_dir)
    new_cells = {match_key(c): c for c in cells_from_frame(df).values()}
    rows, seen = [], set()
    for cell in base["cells"].values():
        k = match_key(cell)
        seen.add(k)
        rows.append(_verdict(cell, new_cells.get(k), tolerance, alpha, two_sided))
    for k, cell in new_cells.items():
        if k not in seen:
            row = {"key": cell_key(cell), "cell": cell_label(cell), "baseline": None,
                   "new": cell, "delta": None, "margin": None, "margin_from": None,
                   "test": None, "p": None, "mdd": None, "verdict": "new"}  # fmt: skip
            rows.append(row)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ICONS}
    failing = FAILING if allow_low_power else (*FAILING, "no power")
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
        "failed": any(r["verdict"] in failing for r in rows),
        "runs_dir": str(runs_dir),
        "baseline": {k: v for k, v in base.items() if k != "cells"},
        "n_complete": len(done),
        "not_complete": sorted(not_complete),
        "notes": notes,
        "machine_notes": _machine_notes(base, done),
        "per_seed": all(isinstance(c.get("values"), list) and c["values"]
                        for c in base["cells"].values()),  # fmt: skip
        "tolerance": tolerance,
        "alpha": alpha,
        "allow_low_power": allow_low_power,
        "two_sided": two_sided,
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
    for v, word in (("regression", "regression(s)"), ("changed", "changed"), ("no power", "no power"),
                    ("missing", "missing"),
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
    for n in result.get("machine_notes", []):
        lines.append(f"⚠ {n}" + ("" if "cannot be checked" in n else
                                  ": the numbers may differ for that reason alone."))  # fmt: skip
    alpha = result["alpha"]
    tol = result["tolerance"]
    two = result.get("two_sided", False)
    rule = (
        f"A cell regresses when a one-sided test of its new per-seed values against the "
        f"baseline's rejects \"new >= baseline\" at alpha {alpha / 2 if two else alpha:g} (Welch's t-test with "
        f">= 5 seeds on both sides, else an exact permutation test of the mean difference)"
        + (f", or when its mean drops by more than the tolerance {tol:g}" if tol is not None else "")
        + (f"; --two-sided: a rise is tested the same way at alpha {alpha / 2:g} and fails too "
           "(❌ changed: a harness's numbers must not move without a baseline refresh)" if two else "")
        + f". With fewer than {MIN_SEEDS} seeds on a side the check has no power (⚠ no power, "
        + ("reported, not failed: --allow-low-power" if result["allow_low_power"] else "fails")
        + "). Identical per-seed values pass without a test. Min. detectable drop = "
        f"(t_(1-alpha, 2n-2) + t_({POWER:g}, 2n-2)) * s * sqrt(2/n), s and n the baseline's "
        f"(power {POWER:g}). Missing cells and cells with fewer seeds fail too."
    )
    if not result.get("per_seed", True):
        allowed = f"the tolerance {tol:g}" if tol is not None else "the baseline's 95% CI half-width"
        rule += (
            f" ⚠ The baseline stores no per-seed values (an older baseline), so no test runs "
            f"for its cells: only the allowed drop ({allowed}) applies. Refresh it with "
            "--update-baseline to get the test."
        )
    return lines + ["", rule]


def _failing(rows: list[dict]) -> list[str]:
    failed = [r for r in rows if r["verdict"] in FAILING]
    if not failed:
        return []
    lines = ["", "**Failing cells:**", ""]
    for r in failed:
        delta = ""
        if r["delta"] is not None:
            parts = [f"Δ {r['delta']:+.4f}"]
            if r["margin"] is not None:
                parts.append(f"allowed drop {r['margin']:.4f}")
            if r["p"] is not None:
                parts.append(f"{r['test']} p={r['p']:.3g}")
            delta = f" ({', '.join(parts)})"
        lines.append(f"- {ICONS[r['verdict']]} `{r['cell']}`: {r['verdict']}{delta}")
    return lines


def _cell_table(rows: list[dict]) -> list[str]:
    table = [
        "| cell | baseline | new | Δ | allowed drop | test | p | min. detectable drop | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {v: i for i, v in enumerate(ORDER)}
    for r in sorted(rows, key=lambda r: order[r["verdict"]]):
        delta = "" if r["delta"] is None else f"{r['delta']:+.4f}"
        margin = "" if r["margin"] is None else f"{r['margin']:.4f}"
        if r["margin_from"] == "none":
            margin += " (n=1, no CI)"
        p = "" if r.get("p") is None else f"{r['p']:.3g}"
        if r["verdict"] in ("changed", "improved") and r.get("p_up") is not None:
            p = f"{r['p_up']:.3g} (rise)"
        mdd = "" if r.get("mdd") is None else f"{r['mdd']:.4f}"
        table.append(
            f"| {r['cell']} | {_stats_text(r['baseline'])} | {_stats_text(r['new'])} | "
            f"{delta} | {margin} | {r.get('test') or ''} | {p} | {mdd} | "
            f"{ICONS[r['verdict']]} {r['verdict']} |"
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
    runs_dir: str | Path, baseline_path: str | Path, tolerance: float | None, config: str | None,
    alpha: float = ALPHA, allow_low_power: bool = False, two_sided: bool = False,
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
        previous = format_summary(compare(runs_dir, old, tolerance, alpha, allow_low_power, two_sided))
        text += "\nThese runs against the previous baseline:\n\n" + previous.split("\n", 2)[2]
    return text


def run_compare(
    runs_dir: str | Path,
    baseline_path: str | Path,
    tolerance: float | None = None,
    update: bool = False,
    summary: str | Path | None = None,
    config: str | None = None,
    alpha: float = ALPHA,
    allow_low_power: bool = False,
    two_sided: bool = False,
) -> int:
    """What ``bench compare`` does; returns the exit status (0 ok, 1 regression/missing).

    ``update=True`` writes a new baseline from the runs (printing how it differs from
    the old one when there is one) and returns 0.
    """
    if update:
        _emit(_update(runs_dir, baseline_path, tolerance, config, alpha, allow_low_power, two_sided), summary)
        return 0
    result = compare(runs_dir, baseline_path, tolerance, alpha, allow_low_power, two_sided)
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
