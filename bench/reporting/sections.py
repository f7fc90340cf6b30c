"""Owns: the report's sections outside the per-task results: the synthetic-data warning,
consistency notes, runs that did not complete, skipped files, the initializations, the
software and settings found in the records, and the per-run appendix."""

from __future__ import annotations

import json

import pandas as pd

from bench.reporting.frame import is_nan, lr_used, seed_duplicates, settings_conflicts
from bench.reporting.markdown import (
    LEAK_MARK,
    PARTIAL_MARK,
    SYNTH_WARNING,
    caption,
    details,
    md_table,
    pct,
    text,
)
from bench.reporting.names import sort_runs

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


def synthetic_block(df: pd.DataFrame) -> str:
    n = int(df["synthetic"].sum())
    return "\n".join(
        [
            "> [!WARNING]",
            f"> **{SYNTH_WARNING}.** {n} of {len(df)} run record(s) were trained and evaluated",
            "> on synthetic data (`bench synth`); they test the harness, not the initializations.",
        ]
    )


def consistency_notes(df: pd.DataFrame) -> list[str]:
    """Warnings about what a table holds side by side (synthetic and real data, archs,
    image sizes), the cells split by differing settings (each its own row), records of
    one seed counted once (the newest), and runs without a test metric."""
    notes = []
    done = df[df["status"] == "complete"]
    for task, g in done.groupby("task", sort=True):
        if g["synthetic"].nunique() > 1:
            notes.append(f"`{task}` mixes runs on synthetic and on real data in one table.")
        for col in ("arch", "image_size"):
            vals = sorted({str(v) for v in g[col].dropna()}) if col in g else []
            if len(vals) > 1:
                notes.append(f"`{task}` mixes {col} values {', '.join(vals)} in one table.")
    for c in settings_conflicts(df):
        differ = "; ".join(f"{k}: {', '.join(v)}" for k, v in c["settings"].items())
        rows = ", ".join(f"`{label}`" for label in c["cells"])
        notes.append(
            f"`{c['task']}` {c['init']} {c['protocol']} {pct(c['fraction'])}: the runs differ "
            f"in settings that change the result ({differ}); each setting is its own row "
            f"({rows}), never averaged together."
        )
    for d in seed_duplicates(df):
        notes.append(
            f"`{d['task']}` {d['init']} {d['protocol']} {pct(d['fraction'])}: seed {d['seed']} "
            f"has {1 + len(d['ignored'])} complete records of the same settings "
            f"({', '.join(d['ignored'])} and {d['used']}); the seed counts once, with the "
            f"newest: {d['used']}."
        )
    if "duplicates" in df:
        for r in done[done["duplicates"].map(bool)].to_dict("records"):
            others = ", ".join(f"`{p}`" for p in r["duplicates"])
            notes.append(
                f"run `{r['run_id']}` is in {1 + len(r['duplicates'])} files ({others} and "
                f"`{r['path']}`); it counts once, with the newest complete record `{r['path']}` "
                "(the others are listed under Skipped files)."
            )
    missing = done[done["test_primary"].isna()]
    if len(missing):
        ids = ", ".join(missing["run_id"].astype(str).head(10))
        notes.append(f"{len(missing)} complete run(s) have no test primary metric ({ids}).")
    return notes


def incomplete_section(df: pd.DataFrame) -> str:
    bad = df[df["status"] != "complete"]
    if bad.empty:
        return ""
    counts = ", ".join(f"{k}: {v}" for k, v in bad["status"].value_counts().sort_index().items())
    rows = [
        [r["run_id"], r["task"], r["init"], r["protocol"], pct(r["fraction"]), r["seed"],
         r["status"], text(r.get("error"))[:160], r["path"]]
        for r in bad.sort_values("run_id").to_dict("records")
    ]  # fmt: skip
    header = ["run_id", "task", "init", "protocol", "fraction", "seed", "status", "error", "file"]
    return "\n".join(
        [
            "## Runs that did not complete",
            "",
            f"{len(bad)} run(s) are not in any mean ({counts}).",
            "",
            md_table(header, rows),
        ]
    )


def skipped_section(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    lines = [f"- `{p}`: {why}" for p, why in skipped]
    return "\n".join(["## Skipped files", "", *lines])


def weights_section(records: list[dict]) -> str:
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
    return "\n".join(["## Initializations", "", md_table(header, rows)])


# ---------------------------------------------------------------- settings


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj


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
            shown = json.dumps(v) if isinstance(v, bool) else str(v)
            values.setdefault(k, {}).setdefault(shown, 0)
            values[k][shown] += 1
    return values


def _values_text(vs: dict[str, int], n_records: int) -> str:
    out = ", ".join(f"`{v}`" + (f" ({c})" if len(vs) > 1 else "") for v, c in sorted(vs.items()))
    missing = n_records - sum(vs.values())
    if missing > 0:
        out += f", not recorded ({missing})"
    return out if len(vs) == 1 and missing <= 0 else f"{out} — differs between runs"


def settings_section(records: list[dict]) -> str:
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
            md_table(["setting", "record field", "values"], key_rows),
            "",
            details("All recorded settings", md_table(["field", "values"], rows)),
        ]
    )


# ---------------------------------------------------------------- appendix

APPENDIX_HEADER = ["run_id", "task", "init", "protocol", "fraction", "seed", "status", "lr",
                   "lr from", "epochs run/max", "best epoch", "wall s", "metric", "test", "val",
                   "flags"]  # fmt: skip


def _fmt(v, spec) -> str:
    return "" if is_nan(v) else format(v, spec)


def _epochs(r: dict) -> str:
    run, top = r.get("epochs_run"), r.get("epochs")
    run = None if is_nan(run) else int(run)
    top = None if is_nan(top) else int(top)
    if run is None and top is None:
        return ""
    return f"{'?' if run is None else run}/{'?' if top is None else top}"


def _lr_from(r: dict) -> str:
    sel = r.get("lr_selection")
    return f"search ({len(sel['candidates'])})" if isinstance(sel, dict) else "fixed"


def _flags(r: dict) -> str:
    out = [("partial " + PARTIAL_MARK) if r["partial"] else "",
           ("leakage " + LEAK_MARK) if r["leakage"] else "",
           "synthetic" if r["synthetic"] else "",
           "diverged" if r.get("diverged") is True else ""]  # fmt: skip
    return ", ".join(f for f in out if f)


def _appendix_row(r: dict) -> list:
    return [
        r["run_id"], r["task"], r["init"], r["protocol"], pct(r["fraction"]), r["seed"],
        r["status"], _fmt(lr_used(r), "g"), _lr_from(r), _epochs(r),
        "" if is_nan(r.get("best_epoch")) else int(r["best_epoch"]), _fmt(r["wall_s"], ".1f"),
        r["primary_metric"], _fmt(r["test_primary"], ".4f"), _fmt(r["val_primary"], ".4f"),
        _flags(r),
    ]  # fmt: skip


def appendix(df: pd.DataFrame) -> str:
    """Every run record (any status): ids, lr (and whether it was searched), epochs run
    of the maximum, best epoch, wall time, status, test/val primary metric, flags."""
    if df.empty:
        return ""
    d = sort_runs(df, by=["task"], then=["fraction", "seed", "run_id"])
    rows = [_appendix_row(r) for r in d.to_dict("records")]
    title = caption("All runs", bool(d["synthetic"].any()))
    legend = (
        "`lr from`: `search (k)` = chosen on validation among k candidates, `fixed` = "
        "configured. `diverged`: a train loss above 10x its first step's (an lr search "
        "never chooses such a run). Only `complete` runs enter the tables."
    )
    table = md_table(APPENDIX_HEADER, rows)
    return "\n".join(["## Appendix: per-run results", "", title, "", table, "", legend])


__all__ = [
    "appendix",
    "consistency_notes",
    "incomplete_section",
    "settings_section",
    "skipped_section",
    "synthetic_block",
    "weights_section",
]
