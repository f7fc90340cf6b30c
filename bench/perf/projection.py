"""The standard table's wall time on the measured device, projected from one ``bench perf`` run.

Owns :data:`REAL_IMAGES` (images of each task's real data set), :data:`STANDARD_TABLE`
(issue 12's table: 7 initializations x 3 protocols x 3 label fractions x 5 seeds per
task, 20 epochs at most) and :func:`project` (hours per protocol and fraction, the total
and the part that dominates, from the figures of a ``bench perf`` result).

One run of protocol p at label fraction f on a task of N real images (the 70/15/15
split: n_train = 0.70 N f, n_val = n_test = 0.15 N), with E epochs:

- without feature reuse (``finetune``; a frozen protocol whose features would not fit,
  see :func:`bench.models.reuse.storage_for`): E x (n_train / train_ips + n_val /
  eval_ips) + n_test / eval_ips, where train_ips is the real pipeline's (``pipeline_ips``
  for ``finetune``, ``reuse[p].pipeline_ips`` for a frozen protocol) and eval_ips the
  evaluator's (``eval.eval_ips``: the full model's forward plus the metrics);
- with reuse (``linear``, ``frozen``, as ``bench run`` does): the features of all
  n_train + n_val + n_test images once (``reuse[p].encoder_ips``), then E x (n_train x
  t_head + n_val x t_eval) + n_test x t_eval, with t_head the measured time of one image
  in a real replayed training epoch (``reuse_epoch_s / n_train``) and t_eval = t_head +
  1 / ``eval.metric_ips``: a replayed evaluation image costs a forward of the head (less
  than its training step) plus the metrics, so this bounds it from above.

Upper bounds, and what is left out: every run counts all E epochs (early stopping, patience
5, often ends sooner); RSNA's ``linear`` rows (masks) are evaluated at the speed of the
measured output's metrics (boxes: mAP is slower than Dice); the learning-rate search, the
set-up of each run (model build, weights, cache opening: seconds) and the one-off cache
build are not counted. ``pipeline_ips`` is measured for ``--protocol``: the ``finetune``
rows need ``--protocol finetune`` (the default).
"""

from __future__ import annotations

from bench.models.reuse import memory_budget, storage_for
from bench.perf.settings import REUSE_PROTOCOLS

REAL_IMAGES = {"siim": 12_047, "rsna": 26_684}  # the Kaggle training sets (issue 12)
STANDARD_TABLE = {"inits": 7, "protocols": ("linear", "frozen", "finetune"),
                  "fractions": (0.01, 0.1, 1.0), "seeds": 5, "epochs": 20}  # fmt: skip
SPLIT = (0.70, 0.15, 0.15)  # train, val, test (tasks.splits.assign_splits)
GOAL_HOURS = 12.0  # issue 12: both tasks' tables at resnet50, 224 px, on one GPU


def project(r: dict, *, budget: int | None = None) -> dict:
    """The standard table of ``r``'s task on ``r``'s device and settings, or ``{"skipped": why}``.

    Returns ``{"task", "images", "runs", "hours", "rows": [{protocol, fraction, runs,
    reuse, hours_per_run, hours, share, phases: {features, train, eval}}], "phases"
    (hours), "dominant", "assumptions"}``."""
    s = r["settings"]
    n = REAL_IMAGES.get(s["task"])
    if n is None:
        return {"skipped": f"no real data set size for task {s['task']!r} (known: {sorted(REAL_IMAGES)})"}
    if s["protocol"] != "finetune":
        return {"skipped": "the finetune rows need the finetune pipeline: run bench perf with --protocol finetune"}
    t = STANDARD_TABLE
    budget = memory_budget() if budget is None else budget
    device_type = s["device"].split(":")[0]
    per_cell = t["inits"] * t["seeds"]
    n_val, n_test = SPLIT[1] * n, SPLIT[2] * n
    eval_s = 1.0 / r["eval"]["eval_ips"]
    rows = []
    for protocol in t["protocols"]:
        for fraction in t["fractions"]:
            n_train = SPLIT[0] * n * fraction
            phases, reuse = _run_phases(r, protocol, n_train, n_val, n_test, eval_s, t["epochs"],
                                        device_type, budget)  # fmt: skip
            per_run = sum(phases.values()) / 3600
            rows.append({"protocol": protocol, "fraction": fraction, "runs": per_cell, "reuse": reuse,
                         "hours_per_run": per_run, "hours": per_run * per_cell,
                         "phases": {k: v * per_cell / 3600 for k, v in phases.items()}})  # fmt: skip
    total = sum(row["hours"] for row in rows)
    for row in rows:
        row["share"] = row["hours"] / total if total else 0.0
    phases = {k: sum(row["phases"][k] for row in rows) for k in ("features", "train", "eval")}
    top = max(rows, key=lambda row: row["hours"])
    by_protocol = {p: sum(row["hours"] for row in rows if row["protocol"] == p) for p in t["protocols"]}
    main = max(by_protocol, key=by_protocol.get)
    dominant = (f"{main} ({by_protocol[main] / total:.0%} of the time; its {top['fraction']:.0%} rows alone "
                f"{top['share']:.0%}), of which {max(phases, key=phases.get)} is the largest phase "
                f"({max(phases.values()) / total:.0%} of all)") if total else ""  # fmt: skip
    return {
        "task": s["task"], "images": n, "runs": per_cell * len(rows), "epochs": t["epochs"],
        "settings": f"{s['arch']}, {s['image_size']} px, batch {s['batch_size']}, {s['device']}",
        "hours": total, "by_protocol": by_protocol, "phases": phases, "dominant": dominant, "rows": rows,
        "memory_budget_gib": budget / 2**30,
    }  # fmt: skip


def _run_phases(r, protocol, n_train, n_val, n_test, eval_s, epochs, device_type, budget):
    """({features, train, eval}: seconds of one run, how its encoder runs)."""
    if protocol in REUSE_PROTOCOLS:
        m = r["reuse"][protocol]
        store = m["store"]
        needed = n_train + n_val + n_test  # the engine encodes the run's train, val and test images
        storage, _ = storage_for(int(store["bytes"] / store["images"] * needed), device_type, budget)
        if storage is not None:
            head_s = m["reuse_epoch_s"] / m["n_train"]
            replay_eval_s = head_s + 1.0 / r["eval"]["metric_ips"]
            return {"features": needed / m["encoder_ips"], "train": epochs * n_train * head_s,
                    "eval": (epochs * n_val + n_test) * replay_eval_s}, f"reuse ({storage})"  # fmt: skip
        train_ips = m["pipeline_ips"]
        how = "none (features over the memory budget)"
    else:
        train_ips, how = r["pipeline_ips"], "none (trains the encoder)"
    return {"features": 0.0, "train": epochs * n_train / train_ips, "eval": (epochs * n_val + n_test) * eval_s}, how
