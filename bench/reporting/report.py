"""Markdown reports from run records (``bench report --runs DIR --out FILE.md``).

Owns reading a directory of run records (one JSON file per run, found recursively),
flattening them into a table, aggregating the test primary metric over seeds with
``bench.stats.summarize``, and writing the report: per task, a paper-style table (rows =
init, columns grouped by protocol then label fraction, cells ``mean ± CI half-width
(n=k)``, best per column bold, cells inside the best's 95% CI underlined), the same
table as tidy CSV and booktabs LaTeX beside the markdown, secondary metrics, a
label-efficiency figure, the learning rate behind each cell (with the validation
scores of ``bench sweep``'s lr search when records carry ``lr_selection``); then runs
that did not complete, the initializations, the software and settings found in the
records and a per-run appendix. ``bench.experiments.compare`` reuses the reading and aggregation.

Only ``status == "complete"`` runs enter the means; the others are listed. Files that
do not parse or are not run records (no ``run_id``) are skipped with a warning naming
them. Synthetic-data runs make the report say so loudly, and runs whose initialization
saw the evaluation data (``weights.leakage``) are marked with a dagger and never marked
best or within-CI.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pandas as pd

from bench.engine.records import get_field
from bench.metrics.stats import summarize

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


def _is_nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _primary(rec: dict) -> str:
    if rec.get("primary_metric"):
        return str(rec["primary_metric"])
    test = get_field(rec, "metrics.test", {}) or {}
    return "map" if "map" in test and "dice" not in test else "dice"


def _num(v) -> float:
    try:
        return float(v) if v is not None and not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _lr_selection(rec: dict) -> dict | None:
    """The record's ``lr_selection`` normalized: candidates and chosen as floats,
    val_scores keyed by float lr (JSON keys are strings); None when absent or unusable."""
    sel = rec.get("lr_selection")
    if not isinstance(sel, dict) or _is_nan(_num(sel.get("chosen"))):
        return None
    scores = {}
    for k, v in (sel.get("val_scores") or {}).items():
        if not _is_nan(_num(k)):
            scores[_num(k)] = _num(v)
    cands = [_num(c) for c in sel.get("candidates") or []]
    cands = sorted({c for c in cands if not _is_nan(c)} | set(scores))
    seed = sel.get("seed")
    return {
        "candidates": cands,
        "chosen": _num(sel["chosen"]),
        "val_scores": scores,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    }


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
        test_primary=_num(test.get(primary)),
        val_primary=_num(val.get(primary)),
        lr=_num(get_field(rec, "hparams.lr")),
        epochs=get_field(rec, "hparams.epochs"),
        batch_size=get_field(rec, "hparams.batch_size"),
        best_epoch=rec.get("best_epoch"),
        epochs_run=len(rec["history"]) if isinstance(rec.get("history"), list) else None,
        lr_selection=_lr_selection(rec),
        wall_s=_num(get_field(rec, "timing.wall_s")),
        synthetic=bool(get_field(rec, "data.synthetic", False)),
        partial=bool(get_field(rec, "weights.partial", False)),
        leakage=bool(get_field(rec, "weights.leakage", False)),
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


def _layout(a: pd.DataFrame) -> dict:
    """Rows, column groups and cells of one task's main table.

    Columns are (protocol, fraction, metric); a group is one (protocol, metric) pair
    (the metric only shows in its label when the task mixes primary metrics, as RSNA
    does: Dice for linear, mAP for frozen/finetune), holding its fractions in order.
    """
    metrics = _ordered(a["metric"], METRIC_ORDER)
    protocols = _ordered(a["protocol"], PROTOCOL_ORDER)
    pairs = {(p, m) for p, m in zip(a["protocol"], a["metric"])}
    pairs = sorted(pairs, key=lambda pm: (protocols.index(pm[0]), metrics.index(pm[1])))
    groups = []
    for p, m in pairs:
        fracs = sorted({f for f, p2, m2 in zip(a["fraction"], a["protocol"], a["metric"])
                        if p2 == p and m2 == m})  # fmt: skip
        label = f"{p} ({m})" if len(metrics) > 1 else p
        groups.append({"protocol": p, "metric": m, "label": label, "fractions": fracs})
    cols = [(g["protocol"], f, g["metric"]) for g in groups for f in g["fractions"]]
    by_key = {
        (r["init"], r["protocol"], r["fraction"], r["metric"]): r for r in a.to_dict("records")
    }
    return {
        "metrics": metrics,
        "groups": groups,
        "cols": cols,
        "inits": _ordered(a["init"], INIT_ORDER),
        "by_key": by_key,
        "marks": cell_marks(a),
    }


def cell_marks(agg: pd.DataFrame) -> dict[tuple, str]:
    """``"best"`` / ``"within_ci"`` per cell key (task, init, protocol, fraction, metric).

    Per column (task, protocol, fraction, metric), among cells with a mean and without
    leakage, and only when there are at least two: ``best`` is the highest mean at the
    printed precision (3 decimals, so ties are all best); ``within_ci`` is any other
    cell whose mean is not significantly worse than a best one, i.e. ``mean >=
    ci_low`` of the best cell's 95% CI (the lowest ci_low when several tie). A best
    cell with n=1 has no CI, so nothing is within it. Unmarked cells are absent.
    """
    marks: dict[tuple, str] = {}
    for _, col in agg.groupby(["task", "protocol", "fraction", "metric"], sort=False):
        cells = [r for r in col.to_dict("records") if not _is_nan(r["mean"]) and not r["leakage"]]
        if len(cells) < 2:
            continue
        top = max(round(r["mean"], 3) for r in cells)
        best = [r for r in cells if round(r["mean"], 3) == top]
        lows = [r["ci_low"] for r in best if not _is_nan(r.get("ci_low"))]
        for r in cells:
            key = tuple(r[k] for k in GROUP)
            if round(r["mean"], 3) == top:
                marks[key] = "best"
            elif lows and r["mean"] >= min(lows):
                marks[key] = "within_ci"
    return marks


def _caption_text(task: str, metrics: list[str]) -> str:
    return f"{task}: test {' / '.join(metrics)}, mean ± 95% CI half-width over seeds"


def make_table(agg: pd.DataFrame, task: str) -> str:
    """Markdown table of one task's test primary metric: caption, table, footnotes.

    Rows are inits; columns are grouped by protocol (two-level header, see below),
    one column per label fraction; cells ``mean ± ci_half (n=k)`` or ``mean (n=1)``.
    Markdown has no column spans, so the two levels are rendered the way pandas
    prints MultiIndex columns: the table's header row holds each protocol's name
    (``linear``, or ``finetune (map)`` when the task mixes primary metrics) above the
    first column of its group and blank cells over the rest of the group, and the
    first body row (italic, labelled *label fraction*) holds the fractions. Columns
    are left-aligned so a protocol name starts its group. The best cell of each
    column is **bold**, cells within the best's 95% CI are <u>underlined</u>
    (:func:`cell_marks`).
    """
    a = agg[agg["task"] == task]
    if a.empty:
        return ""
    lay = _layout(a)
    rows = [["*label fraction*"] + [f"*{_pct(f)}*" for _, f, _ in lay["cols"]]]
    for i in lay["inits"]:
        cells = [i]
        for c in lay["cols"]:
            r = lay["by_key"].get((i, *c))
            if r is None:
                cells.append("–")
                continue
            text = _cell(r)
            mark = lay["marks"].get((task, i, *c))
            if mark == "best":
                text = f"**{text}**"
            elif mark == "within_ci":
                text = f"<u>{text}</u>"
            cells.append(text + (" " + _marks(r) if _marks(r) else ""))
        rows.append(cells)
    header = ["init"]
    for g in lay["groups"]:
        header += [g["label"]] + [""] * (len(g["fractions"]) - 1)
    caption = _caption(_caption_text(task, lay["metrics"]), bool(a["synthetic"].any()))
    table = _md_table(header, rows, ["---"] + [":---"] * len(lay["cols"]))
    legend = (
        "Bold: best mean of the column; underlined: not significantly worse than it (mean "
        f"inside the best cell's 95% CI). {LEAK_MARK} cells are never marked."
    )
    parts = [caption, "", table, "", legend]
    notes = _footnotes(a)
    if notes:
        parts += ["", *notes]
    return "\n".join(parts)


TIDY_COLUMNS = ["task", "init", "protocol", "fraction", "metric",
                "mean", "std", "ci_low", "ci_high", "ci_half", "n"]  # fmt: skip


def table_frame(agg: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task's main table in tidy form, in the table's order: ``TIDY_COLUMNS`` plus
    ``mark`` (best / within_ci / empty), ``seeds`` and the leakage/partial/synthetic flags."""
    a = agg[agg["task"] == task]
    cols = [*TIDY_COLUMNS, "mark", "seeds", "leakage", "partial", "synthetic"]
    if a.empty:
        return pd.DataFrame(columns=cols)
    lay = _layout(a)
    rows = []
    for i in lay["inits"]:
        for c in lay["cols"]:
            r = lay["by_key"].get((i, *c))
            if r is None:
                continue
            row = {k: (None if _is_nan(r.get(k)) else r.get(k)) for k in TIDY_COLUMNS}
            row["n"] = int(r["n"])
            row["mark"] = lay["marks"].get((task, i, *c), "")
            row["seeds"] = " ".join(str(s) for s in r.get("seeds", []))
            row.update({k: bool(r.get(k, False)) for k in ("leakage", "partial", "synthetic")})
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}  # fmt: skip


def _tex(text) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def make_latex(agg: pd.DataFrame, task: str) -> str:
    """One task's main table as a booktabs ``tabular`` (no float: ``\\input`` it inside
    your own ``table``). Protocol groups are ``\\multicolumn`` headers with
    ``\\cmidrule``s, the best cell of a column is ``\\textbf``, cells within its 95% CI
    ``\\underline``. ``n`` is printed per cell only when it differs across the table;
    otherwise the leading comment says it. Needs ``\\usepackage{booktabs}``."""
    a = agg[agg["task"] == task]
    if a.empty:
        return ""
    lay = _layout(a)
    ns = {int(r["n"]) for r in lay["by_key"].values()}
    per_cell_n = len(ns) > 1

    def cell(r, mark) -> str:
        if _is_nan(r["mean"]):
            return "n/a"
        text = f"{r['mean']:.3f}"
        if not _is_nan(r.get("ci_half")):
            text += f" $\\pm$ {r['ci_half']:.3f}"
        if mark == "best":
            text = f"\\textbf{{{text}}}"
        elif mark == "within_ci":
            text = f"\\underline{{{text}}}"
        if per_cell_n:
            text += f" {{\\scriptsize ($n{{=}}{int(r['n'])}$)}}"
        if r.get("leakage"):
            text += "$^\\dagger$"
        if r.get("partial"):
            text += "$^\\ddagger$"
        return text

    synthetic = bool(a["synthetic"].any())
    n_note = "n differs per cell" if per_cell_n else f"n = {ns.pop()} seed(s) per cell"
    lines = [
        f"% cxrbench: {_caption_text(task, lay['metrics'])} ({n_note}).",
        "% Bold: best mean of the column; underlined: mean inside the best cell's 95% CI.",
    ]
    if synthetic:
        lines.append(f"% {SYNTH_WARNING}.")
    if a["leakage"].any():
        lines.append("% \\dagger: the initialization saw this task's images (leakage).")
    if a["partial"].any():
        lines.append("% \\ddagger: partial checkpoint load.")
    lines.append("% Requires \\usepackage{booktabs}.")
    spec = "l" + "".join(" " + "r" * len(g["fractions"]) for g in lay["groups"])
    lines += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    top, rules, start = [""], [], 2
    for g in lay["groups"]:
        k = len(g["fractions"])
        top.append(f"\\multicolumn{{{k}}}{{c}}{{{_tex(g['label'])}}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + k - 1}}}")
        start += k
    lines += [" & ".join(top) + " \\\\", " ".join(rules)]
    lines.append(" & ".join(["init"] + [_tex(_pct(f)) for _, f, _ in lay["cols"]]) + " \\\\")
    lines.append("\\midrule")
    for i in lay["inits"]:
        cells = [_tex(i)]
        for c in lay["cols"]:
            r = lay["by_key"].get((i, *c))
            cells.append("--" if r is None else cell(r, lay["marks"].get((task, i, *c))))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _slug(task) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(task))


def write_table_exports(agg: pd.DataFrame, task: str, out_md: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>_<task>.csv`` (:func:`table_frame`) and ``<stem>_<task>.tex``
    (:func:`make_latex`) next to ``out_md``; returns their paths."""
    out_md = Path(out_md)
    base = out_md.with_name(f"{out_md.stem}_{_slug(task)}")
    csv_path, tex_path = base.with_suffix(".csv"), base.with_suffix(".tex")
    table_frame(agg, task).to_csv(csv_path, index=False)
    tex_path.write_text(make_latex(agg, task))
    return csv_path, tex_path


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


# ---------------------------------------------------------------- learning rates


def _lr_used(r: dict) -> float:
    sel = r.get("lr_selection")
    return sel["chosen"] if isinstance(sel, dict) else r.get("lr")


def _lr_list(values) -> str:
    counts: dict[str, int] = {}
    for v in values:
        key = "?" if _is_nan(v) else f"{v:g}"
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} ×{c}" for k, c in sorted(counts.items(), key=lambda kc: _num(kc[0])))


def lr_table(df: pd.DataFrame, task: str) -> str:
    """Markdown: the learning rate behind each cell of one task's main table.

    Rows are inits, columns ``protocol fraction``. When records carry ``lr_selection``
    (``bench sweep``'s LoVT-style search: ``{"candidates", "chosen", "val_scores"}``)
    the cell is the chosen lr, cells without a search say ``(fixed)``, and a collapsed
    table lists the validation score of every candidate (✓ = chosen). Seeds that used
    different lrs are listed with counts (``0.001 ×2, 0.01 ×1``). Complete runs only.
    """
    d = df[(df["task"] == task) & (df["status"] == "complete")]
    if d.empty:
        return ""
    recs = d.to_dict("records")
    searched_any = any(isinstance(r.get("lr_selection"), dict) for r in recs)
    inits = _ordered(d["init"], INIT_ORDER)
    protocols = _ordered(d["protocol"], PROTOCOL_ORDER)
    cols = sorted({(r["protocol"], r["fraction"]) for r in recs},
                  key=lambda c: (protocols.index(c[0]), c[1]))  # fmt: skip
    cells: dict[tuple, list[dict]] = {}
    for r in recs:
        cells.setdefault((r["init"], r["protocol"], r["fraction"]), []).append(r)
    rows = []
    for i in inits:
        row = [i]
        for p, f in cols:
            rs = cells.get((i, p, f))
            if not rs:
                row.append("–")
                continue
            text = _lr_list(_lr_used(r) for r in rs)
            n_sel = sum(isinstance(r.get("lr_selection"), dict) for r in rs)
            if searched_any and n_sel == 0:
                text += " (fixed)"
            elif searched_any and n_sel < len(rs):
                text += f" (searched in {n_sel}/{len(rs)} runs)"
            row.append(text)
        rows.append(row)
    header = ["init"] + [f"{p} {_pct(f)}" for p, f in cols]
    synthetic = bool(d["synthetic"].any())
    if not searched_any:
        caption = _caption(f"{task}: learning rate per cell (fixed, no lr search recorded)",
                           synthetic)  # fmt: skip
        return "\n".join([caption, "", _md_table(header, rows)])
    caption = _caption(f"{task}: learning rate chosen per cell", synthetic)
    note = (
        "Chosen on the validation split among the candidate learning rates (LoVT-style "
        "search, `bench sweep`); `(fixed)`: no search recorded, the configured lr."
    )
    return "\n".join([caption, "", _md_table(header, rows), "", note, "", _lr_scores(d)])


def _lr_scores(d: pd.DataFrame) -> str:
    """Collapsed table: validation score per candidate lr, one row per distinct search."""
    recs = [r for r in d.to_dict("records") if isinstance(r.get("lr_selection"), dict)]
    cands = sorted({c for r in recs for c in r["lr_selection"]["candidates"]})
    groups: dict[tuple, dict] = {}
    for r in recs:
        sel = r["lr_selection"]
        sig = json.dumps([sel["chosen"], sorted(sel["val_scores"].items())])
        key = (r["init"], r["protocol"], r["fraction"], r["primary_metric"], sig)
        groups.setdefault(key, {"sel": sel, "seeds": []})["seeds"].append(r["seed"])
    inits = _ordered(d["init"], INIT_ORDER)
    protocols = _ordered(d["protocol"], PROTOCOL_ORDER)
    rows = []
    for key in sorted(groups, key=lambda k: (inits.index(k[0]), protocols.index(k[1]), k[2])):
        init, proto, frac, metric, _ = key
        sel, seeds = groups[key]["sel"], sorted(groups[key]["seeds"])
        sel_seed = "" if sel.get("seed") is None else str(sel["seed"])
        row = [init, proto, _pct(frac), " ".join(map(str, seeds)), sel_seed, metric]
        for c in cands:
            v = sel["val_scores"].get(c)
            text = "–" if c not in sel["candidates"] else ("n/a" if _is_nan(v) else f"{v:.4f}")
            row.append(text + (" ✓" if c == sel["chosen"] else ""))
        rows.append(row)
    header = ["init", "protocol", "fraction", "seeds", "selected at seed", "val metric",
              *(f"lr {c:g}" for c in cands)]  # fmt: skip
    return "\n".join(
        [
            "<details><summary>Validation score of each candidate learning rate</summary>",
            "",
            _md_table(header, rows),
            "",
            "✓ = chosen; n/a = the candidate run failed or diverged (left out of the choice); "
            "`seeds` = the final runs that used this choice.",
            "",
            "</details>",
        ]
    )


# ---------------------------------------------------------------- figure


def _t_interval(values) -> tuple[float, float]:
    """The 95% t-interval for the figure, clipped to [0, 1] where every metric lives
    (with few seeds the interval can reach past the metric's range; tables keep it)."""
    s = summarize(values)
    if s["ci_low"] is None:
        return (math.nan, math.nan)
    return (max(s["ci_low"], 0.0), min(s["ci_high"], 1.0))


def plot_label_efficiency(df: pd.DataFrame, task: str, path: str | Path) -> Path | None:
    """PNG of the test primary metric against the label fraction (log x) for one task:
    one panel per protocol, one line per init, error bars = Student-t 95% CI over seeds
    clipped to the metrics' range [0, 1].
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
    fig.suptitle(f"{task}: label efficiency (mean and 95% CI over seeds, clipped to [0, 1]){synth}")
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


# (field, label): shown first in the settings section, "not recorded" when absent
KEY_SETTINGS = (
    ("env.git_commit", "git commit"),
    ("env.cxrbench", "cxrbench"),
    ("env.python", "python"),
    ("env.torch", "torch"),
    ("env.torchvision", "torchvision"),
    ("env.smp", "segmentation-models-pytorch"),
    ("env.pycocotools", "pycocotools"),
    ("env.device", "device"),
    ("env.gpu", "GPU"),
    ("arch", "arch"),
    ("image_size", "image size"),
    ("hparams.epochs", "max epochs"),
    ("hparams.patience", "early-stopping patience"),
    ("hparams.batch_size", "batch size"),
    ("hparams.optimizer", "optimizer"),
    ("hparams.weight_decay", "weight decay"),
    ("hparams.detector", "detector"),
    ("split.name", "split"),
    ("data.synthetic", "synthetic data"),
)
OPTIONAL_SETTINGS = {"env.gpu", "hparams.detector"}


def _setting_values(records: list[dict]) -> dict[str, dict[str, int]]:
    values: dict[str, dict[str, int]] = {}
    for rec in records:
        flat: dict = {}
        for key in ("arch", "image_size", "primary_metric"):
            flat[key] = rec.get(key)
        for key in ("env", "hparams", "data", "split"):
            _flatten(key, rec.get(key), flat)
        for k, v in flat.items():
            if v is None or isinstance(v, (list, dict)):
                continue
            text = json.dumps(v) if isinstance(v, bool) else str(v)
            values.setdefault(k, {}).setdefault(text, 0)
            values[k][text] += 1
    return values


def _values_text(vs: dict[str, int], n_records: int) -> str:
    text = ", ".join(f"`{v}`" + (f" ({c})" if len(vs) > 1 else "") for v, c in sorted(vs.items()))
    missing = n_records - sum(vs.values())
    if missing > 0:
        text += f", not recorded ({missing})"
    return text if len(vs) == 1 and missing <= 0 else f"{text} — differs between runs"


def _settings_section(records: list[dict]) -> str:
    """What produced the numbers: key settings and versions first (git commit(s),
    torch/torchvision/smp/pycocotools, device, arch, image size, epochs, batch size,
    split), then every other scalar field of ``env``/``hparams``/``data``/``split``."""
    values = _setting_values(records)
    n = len(records)
    key_rows = []
    for field, label in KEY_SETTINGS:
        if field in values:
            key_rows.append([label, f"`{field}`", _values_text(values[field], n)])
        elif field not in OPTIONAL_SETTINGS:
            key_rows.append([label, f"`{field}`", "not recorded"])
    shown = {f for f, _ in KEY_SETTINGS}
    order = sorted((k for k in values if k not in shown),
                   key=lambda k: (k.split(".")[0] != "env", k))  # fmt: skip
    rows = [[f"`{k}`", _values_text(values[k], n)] for k in order]
    return "\n".join(
        [
            "## Software and settings",
            "",
            "Distinct values found in the run records (run counts when they differ).",
            "",
            _md_table(["setting", "record field", "values"], key_rows),
            "",
            "<details><summary>All recorded settings</summary>",
            "",
            _md_table(["field", "values"], rows),
            "",
            "</details>",
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
    """Every run record (any status): ids, lr (and whether it was searched), epochs run
    of the maximum, best epoch, wall time, status, test/val primary metric, flags."""
    if df.empty:
        return ""
    d = df.assign(
        _i=df["init"].map(_ordered(df["init"], INIT_ORDER).index),
        _p=df["protocol"].map(_ordered(df["protocol"], PROTOCOL_ORDER).index),
    ).sort_values(["task", "_i", "_p", "fraction", "seed", "run_id"])

    def fmt(v, spec):
        return "" if _is_nan(v) else format(v, spec)

    def epochs(r):
        run, top = r.get("epochs_run"), r.get("epochs")
        run = None if _is_nan(run) else int(run)
        top = None if _is_nan(top) else int(top)
        if run is None and top is None:
            return ""
        return f"{'?' if run is None else run}/{'?' if top is None else top}"

    def lr_from(r):
        sel = r.get("lr_selection")
        return f"search ({len(sel['candidates'])})" if isinstance(sel, dict) else "fixed"

    def flags(r):
        out = [("partial " + PARTIAL_MARK) if r["partial"] else "",
               ("leakage " + LEAK_MARK) if r["leakage"] else "",
               "synthetic" if r["synthetic"] else ""]  # fmt: skip
        return ", ".join(f for f in out if f)

    rows = [
        [r["run_id"], r["task"], r["init"], r["protocol"], _pct(r["fraction"]), r["seed"],
         r["status"], fmt(_lr_used(r), "g"), lr_from(r), epochs(r),
         "" if _is_nan(r.get("best_epoch")) else int(r["best_epoch"]), fmt(r["wall_s"], ".1f"),
         r["primary_metric"], fmt(r["test_primary"], ".4f"), fmt(r["val_primary"], ".4f"),
         flags(r)]
        for r in d.to_dict("records")
    ]  # fmt: skip
    header = ["run_id", "task", "init", "protocol", "fraction", "seed", "status", "lr",
              "lr from", "epochs run/max", "best epoch", "wall s", "metric", "test", "val",
              "flags"]  # fmt: skip
    caption = _caption("All runs", bool(d["synthetic"].any()))
    legend = (
        "`lr from`: `search (k)` = chosen on validation among k candidates, `fixed` = "
        "configured. Only `complete` runs enter the tables."
    )
    return "\n".join(
        ["## Appendix: per-run results", "", caption, "", _md_table(header, rows), "", legend]
    )


def _synthetic_block(df: pd.DataFrame) -> str:
    n = int(df["synthetic"].sum())
    return "\n".join(
        [
            "> [!WARNING]",
            f"> **{SYNTH_WARNING}.** {n} of {len(df)} run record(s) were trained and evaluated",
            "> on synthetic data (`bench synth`); they test the harness, not the initializations.",
        ]
    )


def _task_section(df: pd.DataFrame, task: str, out_md: Path, figures: bool = True) -> str:
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
    for m in _ordered(d["primary_metric"], METRIC_ORDER):
        parts.append(f"- `{m}` (primary): {METRIC_NOTES.get(m, 'see the run records')}")
    png = out_md.with_name(f"{out_md.stem}_{_slug(task)}_label_efficiency.png")
    if figures and plot_label_efficiency(d, task, png) is not None:
        parts += ["", f"![{task} label efficiency]({png.name})"]
    parts += ["", lr_table(df, task)]
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
    parts = ["# cxrbench report", ""]
    if len(df) and df["synthetic"].any():
        parts += [_synthetic_block(df), ""]
    n_done = int((df["status"] == "complete").sum()) if len(df) else 0
    parts += [
        f"Run records read from `{runs_dir}`: {len(df)} ({n_done} complete, "
        f"{len(df) - n_done} not complete, {len(skipped)} file(s) skipped).",
        "",
        "Each cell is the mean over seeds ± the half-width of the 95% Student-t confidence "
        "interval (n = number of seeds; with n=1 there is no interval). Columns are grouped "
        "by protocol: the header row names the protocol above the first column of its group "
        "(the blank header cells after it belong to the same protocol), the first row gives "
        "the label fraction. **Bold** marks the best mean of its column (ties included), "
        "<u>underlined</u> cells are not significantly worse (their mean lies inside the best "
        f"cell's 95% CI); {LEAK_MARK} cells are never marked. Only runs with status "
        "`complete` enter the means.",
    ]
    if df.empty:
        parts += ["", "No run records found."]
    else:
        for task in sorted(df["task"].astype(str).unique()):
            parts += ["", _task_section(df, task, out_md, figures=figures)]
        notes = _consistency_notes(df)
        if notes:
            parts += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    sections = list(extra_sections or [])
    if figures and records:
        from bench.reporting.examples import example_sections

        drawn = example_sections(records, Path(runs_dir), out_md)
        if drawn:
            sections.insert(0, "\n".join(["## Example predictions", "", *drawn]))
    for section in sections:
        if section and section.strip():
            parts += ["", section.strip("\n")]
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
    "TIDY_COLUMNS",
    "aggregate",
    "cell_marks",
    "load_records",
    "lr_table",
    "make_latex",
    "make_table",
    "plot_label_efficiency",
    "read_records",
    "records_to_frame",
    "table_frame",
    "write_report",
    "write_table_exports",
]
