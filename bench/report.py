"""Markdown reports from run records (``bench report --runs DIR --out FILE.md``).

Owns reading a directory of run records (one JSON file per run, found recursively),
flattening them into a table, aggregating the test primary metric over seeds with
``bench.stats.summarize``, and writing the report: one table per task (rows = init,
columns = protocol x label fraction, cells ``mean ± CI half-width (n=k)``), secondary
metrics, a label-efficiency figure per task, runs that did not complete, the
software/settings found in the records and a per-run appendix.

Only ``status == "complete"`` runs enter the means; the others are listed. Files that
do not parse or are not run records (no ``run_id``) are skipped with a warning naming
them. Synthetic-data runs make the report say so loudly, and runs whose initialization
saw the evaluation data (``weights.leakage``) are marked with a dagger and never bolded.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pandas as pd

from bench.stats import summarize

PROTOCOL_ORDER = ("linear", "frozen", "finetune")
INIT_ORDER = ("random", "imagenet", "supervised", "moco", "simclr", "convirt", "clip")
METRIC_ORDER = ("dice", "dice_pooled", "dice_pos", "map", "map50", "map75", "rsna_score")
LEAK_MARK, PARTIAL_MARK = "†", "‡"
SYNTH_MARK = "⚠ SYNTHETIC DATA"
SYNTH_WARNING = "SYNTHETIC DATA — these numbers are not the benchmark"
METRIC_NOTES = {
    "dice": "mean over test images of the per-image Dice at threshold 0.5 (empty target and "
    "empty prediction = 1, empty target and any prediction = 0): the Kaggle SIIM-ACR metric",
    "dice_pooled": "Dice over all pixels of all test images pooled together (LoVT's number)",
    "dice_pos": "mean per-image Dice over the test images with a non-empty target",
    "map": "COCO-style AP averaged over IoU 0.40:0.05:0.75 (101 recall points) over all "
    "test images, negatives included",
    "map50": "COCO-style AP at IoU 0.50",
    "map75": "COCO-style AP at IoU 0.75",
    "rsna_score": "the Kaggle RSNA Pneumonia metric (per image and IoU threshold "
    "TP/(TP+FP+FN), averaged over thresholds then images)",
}
KEYS = ("run_id", "task", "init", "protocol", "fraction", "seed")
GROUP = ["task", "init", "protocol", "fraction", "metric"]


# ---------------------------------------------------------------- reading records


def _get(rec: dict, dotted: str, default=None):
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


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
        reason = None
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            rec, reason = None, f"not valid JSON ({exc.__class__.__name__}: {exc})"
        if reason is None and (not isinstance(rec, dict) or "run_id" not in rec):
            reason = "not a run record (no run_id)"
        elif reason is None and (missing := [k for k in KEYS if rec.get(k) is None]):
            reason = f"run record without {', '.join(missing)}"
        elif reason is None and not _is_number(rec["fraction"]):
            reason = f"fraction {rec['fraction']!r} is not a number"
        elif reason is None and rec["run_id"] in seen:
            reason = f"duplicate run_id {rec['run_id']} (already read from {seen[rec['run_id']]})"
        if reason is not None:
            warnings.warn(f"skipping {path}: {reason}", stacklevel=2)
            skipped.append((path.relative_to(runs_dir).as_posix(), reason))
            continue
        seen[rec["run_id"]] = path
        records.append({**rec, "_path": path.relative_to(runs_dir).as_posix()})
    return records, skipped


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _primary(rec: dict) -> str:
    if rec.get("primary_metric"):
        return str(rec["primary_metric"])
    test = _get(rec, "metrics.test", {}) or {}
    return "map" if "map" in test and "dice" not in test else "dice"


def _num(v) -> float:
    try:
        return float(v) if v is not None and not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _row(rec: dict) -> dict:
    primary = _primary(rec)
    test = _get(rec, "metrics.test", {}) or {}
    val = _get(rec, "metrics.val", {}) or {}
    error = rec.get("error")
    row = {k: rec.get(k) for k in KEYS}
    row.update(
        fraction=float(rec["fraction"]),
        status=str(rec.get("status") or "unknown"),
        arch=rec.get("arch"),
        image_size=rec.get("image_size"),
        primary_metric=primary,
        test_primary=_num(test.get(primary)),
        val_primary=_num(val.get(primary)),
        lr=_num(_get(rec, "hparams.lr")),
        epochs=_get(rec, "hparams.epochs"),
        batch_size=_get(rec, "hparams.batch_size"),
        best_epoch=rec.get("best_epoch"),
        wall_s=_num(_get(rec, "timing.wall_s")),
        synthetic=bool(_get(rec, "data.synthetic", False)),
        partial=bool(_get(rec, "weights.partial", False)),
        leakage=bool(_get(rec, "weights.leakage", False)),
        error=None if error is None else str(error),
        path=rec.get("_path"),
    )
    for k, v in test.items():
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            row[f"test_{k}"] = _num(v)
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


# ---------------------------------------------------------------- formatting


def _ordered(values, known) -> list:
    vals = list(dict.fromkeys(values))
    return [v for v in known if v in vals] + sorted(v for v in vals if v not in known)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _cell(s: dict) -> str:
    if s.get("mean") is None or (isinstance(s["mean"], float) and math.isnan(s["mean"])):
        return f"n/a (n={int(s.get('n', 0))})"
    n = f"n={int(s['n'])}"
    if s.get("n_ignored"):
        n += f", {int(s['n_ignored'])} missing"
    ci = s.get("ci_half")
    if ci is None or (isinstance(ci, float) and math.isnan(ci)):
        return f"{s['mean']:.3f} ({n})"
    return f"{s['mean']:.3f} ± {ci:.3f} ({n})"


def _marks(s: dict) -> str:
    return (LEAK_MARK if s.get("leakage") else "") + (PARTIAL_MARK if s.get("partial") else "")


def _text(v) -> str:
    """Cell text; None and NaN (pandas' missing values) become empty."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _md(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _md_table(header, rows, align=None) -> str:
    align = align or ["---"] * len(header)
    return "\n".join([_md(header), _md(align), *(_md(r) for r in rows)])


def _caption(text: str, synthetic: bool) -> str:
    return f"**{text}**" + (f" — {SYNTH_MARK}" if synthetic else "")


def _footnotes(flags: pd.DataFrame) -> list[str]:
    notes = []
    if "leakage" in flags and flags["leakage"].any():
        notes.append(
            f"{LEAK_MARK} the initialization was pretrained on data that includes this task's "
            "images (leakage, design §8.8): not comparable, never bolded."
        )
    if "partial" in flags and flags["partial"].any():
        notes.append(
            f"{PARTIAL_MARK} the checkpoint did not cover every encoder tensor (partial "
            "weights load); see the appendix for tensors loaded/expected."
        )
    return notes


def make_table(agg: pd.DataFrame, task: str) -> str:
    """Markdown table of one task's test primary metric: caption, table, footnotes.

    Rows are inits, columns protocol x fraction (``linear 10%``; the metric is appended
    when a task mixes primary metrics), cells ``mean ± ci_half (n=k)`` or ``mean (n=1)``.
    The best mean of each column (3 decimals, ties included, leakage-marked cells
    excluded, at least two cells) is bold.
    """
    a = agg[agg["task"] == task]
    if a.empty:
        return ""
    metrics = _ordered(a["metric"], METRIC_ORDER)
    mixed = len(metrics) > 1
    cols = sorted(
        {(p, f, m) for p, f, m in zip(a["protocol"], a["fraction"], a["metric"])},
        key=lambda c: (
            _ordered(a["protocol"], PROTOCOL_ORDER).index(c[0]),
            c[1],
            metrics.index(c[2]),
        ),
    )
    inits = _ordered(a["init"], INIT_ORDER)
    by_key = {
        (r["init"], r["protocol"], r["fraction"], r["metric"]): r for r in a.to_dict("records")
    }
    best = {}
    for c in cols:
        vals = [
            round(r["mean"], 3)
            for i in inits
            if (r := by_key.get((i, *c))) and r["mean"] is not None and not r["leakage"]
        ]
        vals = [v for v in vals if not math.isnan(v)]
        best[c] = max(vals) if len(vals) >= 2 else None
    rows = []
    for i in inits:
        cells = [i]
        for c in cols:
            r = by_key.get((i, *c))
            if r is None:
                cells.append("–")
                continue
            text = _cell(r)
            mean = r["mean"]
            is_best = best[c] is not None and mean is not None and not r["leakage"]
            if is_best and not math.isnan(mean) and round(mean, 3) == best[c]:
                text = f"**{text}**"
            cells.append(text + (" " + _marks(r) if _marks(r) else ""))
        rows.append(cells)
    header = ["init"] + [f"{p} {_pct(f)}" + (f" ({m})" if mixed else "") for p, f, m in cols]
    caption = _caption(
        f"{task}: test {' / '.join(metrics)}, mean ± 95% CI half-width over seeds",
        bool(a["synthetic"].any()),
    )
    parts = [caption, "", _md_table(header, rows, ["---"] + ["---:"] * len(cols))]
    notes = _footnotes(a)
    if notes:
        parts += ["", *notes]
    return "\n".join(parts)


def _secondary_metrics(d: pd.DataFrame) -> list[str]:
    names = [c[len("test_") :] for c in d.columns if c.startswith("test_") and c != "test_primary"]
    names = [m for m in names if not m.startswith("n_") and d[f"test_{m}"].notna().any()]
    always_primary = {m for m in names if (d["primary_metric"] == m).all()}
    return _ordered([m for m in names if m not in always_primary], METRIC_ORDER)


def _secondary_table(d: pd.DataFrame, task: str) -> str:
    metrics = _secondary_metrics(d)
    if not metrics:
        return ""
    aggs = {m: aggregate(d, m) for m in metrics}
    index = d[["init", "protocol", "fraction"]].drop_duplicates()
    index = index.assign(
        _i=index["init"].map(_ordered(d["init"], INIT_ORDER).index),
        _p=index["protocol"].map(_ordered(d["protocol"], PROTOCOL_ORDER).index),
    ).sort_values(["_i", "_p", "fraction"])
    rows = []
    for init, proto, frac in zip(index["init"], index["protocol"], index["fraction"]):
        cells = [init, proto, _pct(frac)]
        for m in metrics:
            a = aggs[m]
            hit = a[(a["init"] == init) & (a["protocol"] == proto) & (a["fraction"] == frac)]
            cells.append(_cell(hit.iloc[0].to_dict()) if len(hit) else "–")
        rows.append(cells)
    caption = _caption(f"{task}: secondary test metrics", bool(d["synthetic"].any()))
    table = _md_table(["init", "protocol", "fraction", *metrics], rows)
    notes = [f"- `{m}`: {METRIC_NOTES[m]}" for m in metrics if m in METRIC_NOTES]
    return "\n".join([caption, "", table, "", *notes])


# ---------------------------------------------------------------- figure


def _t_interval(values) -> tuple[float, float]:
    s = summarize(values)
    if s["ci_low"] is None:
        return (math.nan, math.nan)
    return (s["ci_low"], s["ci_high"])


def plot_label_efficiency(df: pd.DataFrame, task: str, path: str | Path) -> Path | None:
    """PNG of the test primary metric against the label fraction (log x) for one task:
    one panel per protocol, one line per init, error bars = Student-t 95% CI over seeds.
    Drawn on an Agg canvas (no pyplot state). Returns None if there is nothing to plot."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    d = df[(df["task"] == task) & (df["status"] == "complete")].dropna(subset=["test_primary"])
    if d.empty:
        return None
    mixed = d["primary_metric"].nunique() > 1
    panels = [
        (p, m)
        for p in _ordered(d["protocol"], PROTOCOL_ORDER)
        for m in _ordered(d.loc[d["protocol"] == p, "primary_metric"], METRIC_ORDER)
    ]
    inits = _ordered(d["init"], INIT_ORDER)
    palette = dict(zip(inits, sns.color_palette(n_colors=len(inits))))
    markers = dict(
        zip(inits, (["o", "s", "^", "D", "v", "P", "X", "*"] * len(inits))[: len(inits)])
    )
    fig = Figure(figsize=(max(6.5, 3.6 * len(panels) + 1.8), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharex=True, sharey=not mixed, squeeze=False)[0]
    fractions = sorted(d["fraction"].unique())
    for ax, (proto, metric) in zip(axes, panels):
        sub = d[(d["protocol"] == proto) & (d["primary_metric"] == metric)]
        sns.lineplot(
            data=sub, x="fraction", y="test_primary", hue="init", style="init",
            hue_order=[i for i in inits if i in set(sub["init"])], palette=palette,
            markers=markers, dashes=False, errorbar=_t_interval, err_style="bars",
            err_kws={"capsize": 3}, legend=False, ax=ax,
        )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(fractions))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticklabels([_pct(f) for f in fractions])
        ax.set_xlabel("label fraction")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{proto} ({metric})" if mixed else proto)
        ax.set_xlim(fractions[0] / 1.6, fractions[-1] * 1.6)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=palette[i], marker=markers[i], label=i) for i in inits]
    fig.legend(handles=handles, title="init", loc="outside right center")
    synth = " — SYNTHETIC DATA" if d["synthetic"].any() else ""
    fig.suptitle(f"{task}: label efficiency (mean and 95% CI over seeds){synth}")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------- other sections


def _incomplete_section(df: pd.DataFrame) -> str:
    bad = df[df["status"] != "complete"]
    if bad.empty:
        return ""
    counts = ", ".join(f"{k}: {v}" for k, v in bad["status"].value_counts().sort_index().items())
    rows = [
        [r["run_id"], r["task"], r["init"], r["protocol"], _pct(r["fraction"]), r["seed"],
         r["status"], _text(r.get("error"))[:160], r["path"]]
        for r in bad.sort_values("run_id").to_dict("records")
    ]  # fmt: skip
    header = ["run_id", "task", "init", "protocol", "fraction", "seed", "status", "error", "file"]
    return "\n".join(
        [
            "## Runs that did not complete",
            "",
            f"{len(bad)} run(s) are not in any mean ({counts}).",
            "",
            _md_table(header, rows),
        ]
    )


def _skipped_section(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    lines = [f"- `{p}`: {why}" for p, why in skipped]
    return "\n".join(["## Skipped files", "", *lines])


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj


def _settings_section(records: list[dict]) -> str:
    values: dict[str, dict[str, int]] = {}
    for rec in records:
        flat: dict = {}
        for key in ("arch", "image_size", "primary_metric"):
            flat[key] = rec.get(key)
        for key in ("env", "hparams", "data"):
            _flatten(key, rec.get(key), flat)
        for k, v in flat.items():
            if v is None or isinstance(v, (list, dict)):
                continue
            text = json.dumps(v) if isinstance(v, bool) else str(v)
            values.setdefault(k, {}).setdefault(text, 0)
            values[k][text] += 1
    order = sorted(values, key=lambda k: (k.split(".")[0] != "env", k))
    rows = []
    for k in order:
        vs = values[k]
        text = ", ".join(
            f"`{v}`" + (f" ({c})" if len(vs) > 1 else "") for v, c in sorted(vs.items())
        )
        rows.append([f"`{k}`", text if len(vs) == 1 else f"{text} — differs between runs"])
    return "\n".join(
        [
            "## Software and settings",
            "",
            "Distinct values found in the run records (run counts when they differ).",
            "",
            _md_table(["field", "values"], rows),
        ]
    )


def _weights_section(records: list[dict]) -> str:
    rows, seen = [], set()
    for rec in sorted(records, key=lambda r: (str(r.get("init")), r["run_id"])):
        w = rec.get("weights") or {}
        sha = str(w.get("sha256") or "")
        row = (
            str(rec.get("init")),
            str(w.get("source") or ""),
            sha[:16] + ("…" if len(sha) > 16 else ""),
            f"{w.get('tensors_loaded', '')}/{w.get('tensors_expected', '')}",
            "yes" if w.get("partial") else "no",
            "yes" if w.get("leakage") else "no",
        )
        if row not in seen:
            seen.add(row)
            rows.append(list(row))
    header = ["init", "source", "sha256", "tensors loaded/expected", "partial", "leakage"]
    return "\n".join(["## Initializations", "", _md_table(header, rows)])


def _consistency_notes(df: pd.DataFrame) -> list[str]:
    notes = []
    done = df[df["status"] == "complete"]
    for task, g in done.groupby("task", sort=True):
        if g["synthetic"].nunique() > 1:
            notes.append(f"`{task}` mixes runs on synthetic and on real data in one table.")
        for col in ("arch", "image_size"):
            vals = sorted({str(v) for v in g[col].dropna()}) if col in g else []
            if len(vals) > 1:
                notes.append(f"`{task}` mixes {col} values {', '.join(vals)} in one table.")
    dup = done.groupby(["task", "init", "protocol", "fraction", "seed"]).size()
    for key, count in dup[dup > 1].items():
        task, init, proto, frac, seed = key
        notes.append(
            f"`{task}` {init} {proto} {_pct(frac)} has {count} complete runs for seed {seed}; "
            "all enter the mean (differing hyper-parameters?)."
        )
    missing = done[done["test_primary"].isna()]
    if len(missing):
        ids = ", ".join(missing["run_id"].astype(str).head(10))
        notes.append(f"{len(missing)} complete run(s) have no test primary metric ({ids}).")
    return notes


def _appendix(df: pd.DataFrame) -> str:
    done = df[df["status"] == "complete"]
    done = done.assign(
        _i=done["init"].map(_ordered(done["init"], INIT_ORDER).index),
        _p=done["protocol"].map(_ordered(done["protocol"], PROTOCOL_ORDER).index),
    ).sort_values(["task", "_i", "_p", "fraction", "seed"])
    if done.empty:
        return ""

    def fmt(v, spec):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    rows = [
        [r["run_id"], r["task"], r["init"], r["protocol"], _pct(r["fraction"]), r["seed"],
         fmt(r["lr"], "g"), "" if r.get("best_epoch") is None else r["best_epoch"],
         fmt(r["wall_s"], ".1f"), r["primary_metric"], fmt(r["test_primary"], ".4f"),
         fmt(r["val_primary"], ".4f"), "yes" if r["partial"] else "no",
         "yes " + LEAK_MARK if r["leakage"] else "no", "yes" if r["synthetic"] else "no"]
        for r in done.to_dict("records")
    ]  # fmt: skip
    header = ["run_id", "task", "init", "protocol", "fraction", "seed", "lr", "best_epoch",
              "wall s", "metric", "test", "val", "partial", "leakage", "synthetic"]  # fmt: skip
    caption = _caption("All complete runs", bool(done["synthetic"].any()))
    return "\n".join(["## Appendix: per-run results", "", caption, "", _md_table(header, rows)])


def _synthetic_block(df: pd.DataFrame) -> str:
    n = int(df["synthetic"].sum())
    return "\n".join(
        [
            "> [!WARNING]",
            f"> **{SYNTH_WARNING}.** {n} of {len(df)} run record(s) were trained and evaluated",
            "> on synthetic data (`bench synth`); they test the harness, not the initializations.",
        ]
    )


def _task_section(df: pd.DataFrame, task: str, out_md: Path) -> str:
    d = df[(df["task"] == task) & (df["status"] == "complete")]
    parts = [f"## {task}", ""]
    if d.empty:
        return "\n".join([*parts, "No complete runs."])
    parts += [make_table(aggregate(d), task), ""]
    for m in _ordered(d["primary_metric"], METRIC_ORDER):
        parts.append(f"- `{m}` (primary): {METRIC_NOTES.get(m, 'see the run records')}")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(task))
    png = out_md.with_name(f"{out_md.stem}_{slug}_label_efficiency.png")
    if plot_label_efficiency(d, task, png) is not None:
        parts += ["", f"![{task} label efficiency]({png.name})"]
    secondary = _secondary_table(d, task)
    if secondary:
        parts += [
            "",
            "<details><summary>Secondary metrics</summary>",
            "",
            secondary,
            "",
            "</details>",
        ]
    return "\n".join(parts)


def write_report(runs_dir: str | Path, out_md: str | Path) -> Path:
    """Write the markdown report (and one PNG per task beside it); returns its path."""
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    records, skipped = read_records(runs_dir)
    df = records_to_frame(records)
    parts = ["# cxrbench report", ""]
    if len(df) and df["synthetic"].any():
        parts += [_synthetic_block(df), ""]
    n_done = int((df["status"] == "complete").sum()) if len(df) else 0
    parts += [
        f"Run records read from `{runs_dir}`: {len(df)} ({n_done} complete, "
        f"{len(df) - n_done} not complete, {len(skipped)} file(s) skipped).",
        "",
        "Each cell is the mean over seeds ± the half-width of the 95% Student-t confidence "
        "interval (n = number of seeds; with n=1 there is no interval). Bold marks the best "
        f"mean of its column (ties included; {LEAK_MARK} cells excluded). Only runs with status "
        "`complete` enter the means.",
    ]
    if df.empty:
        parts += ["", "No run records found."]
    else:
        for task in sorted(df["task"].astype(str).unique()):
            parts += ["", _task_section(df, task, out_md)]
        notes = _consistency_notes(df)
        if notes:
            parts += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    for section in (
        _incomplete_section(df) if len(df) else "",
        _skipped_section(skipped),
        _weights_section(records) if records else "",
        _settings_section(records) if records else "",
        _appendix(df) if len(df) else "",
    ):
        if section:
            parts += ["", section]
    out_md.write_text("\n".join(parts) + "\n")
    return out_md


__all__ = [
    "aggregate",
    "load_records",
    "make_table",
    "plot_label_efficiency",
    "read_records",
    "records_to_frame",
    "write_report",
]
