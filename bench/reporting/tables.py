"""Owns: the markdown tables of one task: the main table (its layout and the best /
within-CI cell marks that the exports reuse), its footnotes, the secondary-metrics
table and the learning-rate table (with the validation scores of an lr search).

Main table: rows = init, columns grouped by protocol then label fraction, cells
``mean ± CI half-width (n=k)``, best per column bold, cells inside the best's 95% CI
underlined; leakage cells (dagger) are never marked.
"""

from __future__ import annotations

import json

import pandas as pd

from bench.reporting.frame import GROUP, aggregate, is_nan, lr_used, num
from bench.reporting.markdown import (
    LEAK_MARK,
    PARTIAL_MARK,
    caption,
    cell,
    details,
    marks,
    md_table,
    pct,
)
from bench.reporting.names import (
    INIT_ORDER,
    PROTOCOL_ORDER,
    metric_notes,
    metric_order,
    ordered,
    sort_runs,
)

# ---------------------------------------------------------------- main table


def layout(a: pd.DataFrame) -> dict:
    """Rows, column groups and cells of one task's main table (``a``: its aggregate).

    Columns are (protocol, fraction, metric); a group is one (protocol, metric) pair
    (the metric only shows in its label when the task mixes primary metrics, e.g. Dice
    for a linear mask output and mAP for frozen/finetune boxes), holding its fractions
    in order.
    """
    metrics = ordered(a["metric"], metric_order())
    protocols = ordered(a["protocol"], PROTOCOL_ORDER)
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
        "inits": ordered(a["init"], INIT_ORDER),
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
    out: dict[tuple, str] = {}
    for _, col in agg.groupby(["task", "protocol", "fraction", "metric"], sort=False):
        cells = [r for r in col.to_dict("records") if not is_nan(r["mean"]) and not r["leakage"]]
        if len(cells) < 2:
            continue
        top = max(round(r["mean"], 3) for r in cells)
        best = [r for r in cells if round(r["mean"], 3) == top]
        lows = [r["ci_low"] for r in best if not is_nan(r.get("ci_low"))]
        for r in cells:
            key = tuple(r[k] for k in GROUP)
            if round(r["mean"], 3) == top:
                out[key] = "best"
            elif lows and r["mean"] >= min(lows):
                out[key] = "within_ci"
    return out


def caption_text(task: str, metrics: list[str]) -> str:
    return f"{task}: test {' / '.join(metrics)}, mean ± 95% CI half-width over seeds"


def _main_cell(r: dict | None, mark: str | None) -> str:
    if r is None:
        return "–"
    text = cell(r)
    if mark == "best":
        text = f"**{text}**"
    elif mark == "within_ci":
        text = f"<u>{text}</u>"
    return text + (" " + marks(r) if marks(r) else "")


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
    lay = layout(a)
    rows = [["*label fraction*"] + [f"*{pct(f)}*" for _, f, _ in lay["cols"]]]
    for i in lay["inits"]:
        rows.append(
            [i] + [_main_cell(lay["by_key"].get((i, *c)), lay["marks"].get((task, i, *c)))
                   for c in lay["cols"]]
        )  # fmt: skip
    header = ["init"]
    for g in lay["groups"]:
        header += [g["label"]] + [""] * (len(g["fractions"]) - 1)
    title = caption(caption_text(task, lay["metrics"]), bool(a["synthetic"].any()))
    table = md_table(header, rows, ["---"] + [":---"] * len(lay["cols"]))
    legend = (
        "Bold: best mean of the column; underlined: not significantly worse than it (mean "
        f"inside the best cell's 95% CI). {LEAK_MARK} cells are never marked."
    )
    parts = [title, "", table, "", legend]
    notes = footnotes(a)
    if notes:
        parts += ["", *notes]
    return "\n".join(parts)


def footnotes(flags: pd.DataFrame) -> list[str]:
    """The dagger / double-dagger footnotes the cells of ``flags`` need."""
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


# ---------------------------------------------------------------- secondary metrics


def _secondary_metrics(d: pd.DataFrame) -> list[str]:
    names = [c[len("test_") :] for c in d.columns if c.startswith("test_") and c != "test_primary"]
    names = [m for m in names if not m.startswith("n_") and d[f"test_{m}"].notna().any()]
    always_primary = {m for m in names if (d["primary_metric"] == m).all()}
    return ordered([m for m in names if m not in always_primary], metric_order())


def secondary_table(d: pd.DataFrame, task: str) -> str:
    """Markdown: every test metric of one task's complete runs ``d`` that is not the
    primary of every run, per (init, protocol, fraction), with the metrics' notes."""
    metrics = _secondary_metrics(d)
    if not metrics:
        return ""
    aggs = {m: aggregate(d, m) for m in metrics}
    index = sort_runs(d[["init", "protocol", "fraction"]].drop_duplicates(), by=[],
                      then=["fraction"])  # fmt: skip
    rows = []
    for init, proto, frac in zip(index["init"], index["protocol"], index["fraction"]):
        cells = [init, proto, pct(frac)]
        for m in metrics:
            a = aggs[m]
            hit = a[(a["init"] == init) & (a["protocol"] == proto) & (a["fraction"] == frac)]
            cells.append(cell(hit.iloc[0].to_dict()) if len(hit) else "–")
        rows.append(cells)
    title = caption(f"{task}: secondary test metrics", bool(d["synthetic"].any()))
    table = md_table(["init", "protocol", "fraction", *metrics], rows)
    known = metric_notes(task)
    notes = [f"- `{m}`: {known[m]}" for m in metrics if m in known]
    return "\n".join([title, "", table, "", *notes])


# ---------------------------------------------------------------- learning rates


def _lr_list(values) -> str:
    counts: dict[str, int] = {}
    for v in values:
        key = "?" if is_nan(v) else f"{v:g}"
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} ×{c}" for k, c in sorted(counts.items(), key=lambda kc: num(kc[0])))


def _lr_cell(rs: list[dict] | None, searched_any: bool) -> str:
    if not rs:
        return "–"
    text = _lr_list(lr_used(r) for r in rs)
    n_sel = sum(isinstance(r.get("lr_selection"), dict) for r in rs)
    if searched_any and n_sel == 0:
        text += " (fixed)"
    elif searched_any and n_sel < len(rs):
        text += f" (searched in {n_sel}/{len(rs)} runs)"
    return text


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
    protocols = ordered(d["protocol"], PROTOCOL_ORDER)
    cols = sorted({(r["protocol"], r["fraction"]) for r in recs},
                  key=lambda c: (protocols.index(c[0]), c[1]))  # fmt: skip
    cells: dict[tuple, list[dict]] = {}
    for r in recs:
        cells.setdefault((r["init"], r["protocol"], r["fraction"]), []).append(r)
    rows = [
        [i] + [_lr_cell(cells.get((i, p, f)), searched_any) for p, f in cols]
        for i in ordered(d["init"], INIT_ORDER)
    ]
    header = ["init"] + [f"{p} {pct(f)}" for p, f in cols]
    synthetic = bool(d["synthetic"].any())
    if not searched_any:
        title = caption(f"{task}: learning rate per cell (fixed, no lr search recorded)",
                        synthetic)  # fmt: skip
        return "\n".join([title, "", md_table(header, rows)])
    title = caption(f"{task}: learning rate chosen per cell", synthetic)
    note = (
        "Chosen on the validation split among the candidate learning rates (LoVT-style "
        "search, `bench sweep`); `(fixed)`: no search recorded, the configured lr."
    )
    return "\n".join([title, "", md_table(header, rows), "", note, "", _lr_scores(d)])


def _lr_score_row(key: tuple, sel: dict, seeds: list, cands: list[float], rules: bool) -> list[str]:
    init, proto, frac, metric, _ = key
    sel_seed = "" if sel.get("seed") is None else str(sel["seed"])
    row = [init, proto, pct(frac), " ".join(map(str, sorted(seeds))), sel_seed, metric]
    excluded = sel.get("excluded") or {}
    for c in cands:
        v = sel["val_scores"].get(c)
        text = "–" if c not in sel["candidates"] else ("n/a" if is_nan(v) else f"{v:.4f}")
        if excluded.get(c) == "diverged":
            text += " ✗ diverged"
        row.append(text + (" ✓" if c == sel["chosen"] else ""))
    if rules:
        row.append(sel.get("rule") or "–")
    return row


def _lr_scores(d: pd.DataFrame) -> str:
    """Collapsed table: validation score per candidate lr, one row per distinct search."""
    recs = [r for r in d.to_dict("records") if isinstance(r.get("lr_selection"), dict)]
    cands = sorted({c for r in recs for c in r["lr_selection"]["candidates"]})
    groups: dict[tuple, dict] = {}
    for r in recs:
        sel = r["lr_selection"]
        sig = json.dumps([sel["chosen"], sorted(sel["val_scores"].items()), sel.get("rule")])
        key = (r["init"], r["protocol"], r["fraction"], r["primary_metric"], sig)
        groups.setdefault(key, {"sel": sel, "seeds": []})["seeds"].append(r["seed"])
    inits = ordered(d["init"], INIT_ORDER)
    protocols = ordered(d["protocol"], PROTOCOL_ORDER)
    rules = any(g["sel"].get("rule") for g in groups.values())
    rows = [
        _lr_score_row(key, groups[key]["sel"], groups[key]["seeds"], cands, rules)
        for key in sorted(groups, key=lambda k: (inits.index(k[0]), protocols.index(k[1]), k[2]))
    ]
    header = ["init", "protocol", "fraction", "seeds", "selected at seed", "val metric",
              *(f"lr {c:g}" for c in cands), *(["decided by"] if rules else [])]  # fmt: skip
    legend = (
        "✓ = chosen; n/a = the candidate run failed or stopped on a NaN loss; ✗ diverged = "
        "its train loss rose above 10x its first step's (left out of the choice, whatever "
        "its score); ties on the validation metric go to the lower validation loss, else "
        "the lower final train loss, else the smaller lr (`decided by`); `seeds` = the "
        "final runs that used this choice."
    )
    body = "\n".join([md_table(header, rows), "", legend])
    return details("Validation score of each candidate learning rate", body)


__all__ = [
    "caption_text",
    "cell_marks",
    "footnotes",
    "layout",
    "lr_table",
    "make_table",
    "secondary_table",
]
