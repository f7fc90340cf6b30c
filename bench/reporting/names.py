"""Owns: the names a report puts in order and explains: protocols, inits and metrics.

The metric order and the metric notes come from the task registry (:mod:`tasks.registry`):
the order is every registered task's ``metrics`` in registration order (deduplicated),
the notes of a task's section are :data:`GENERIC_NOTES` (metrics any task of an output
kind reports) updated with that task's ``metric_notes``. Nothing here names a task.
Names a list does not know are shown after the known ones, sorted.
"""

from __future__ import annotations

import pandas as pd

PROTOCOL_ORDER = ("linear", "frozen", "finetune")
# display order of the usual initializations (the weights catalogue's order)
INIT_ORDER = ("random", "imagenet", "supervised", "moco", "simclr", "convirt", "clip")
GENERIC_NOTES = {
    "dice": "mean over test images of the per-image Dice at threshold 0.5 (empty target and "
    "empty prediction = 1, empty target and any prediction = 0)",
    "dice_pooled": "Dice over all pixels of all test images pooled together (LoVT's number)",
    "dice_pos": "mean per-image Dice over the test images with a non-empty target",
    "map": "COCO-style AP averaged over IoU 0.40:0.05:0.75 (101 recall points) over all "
    "test images, negatives included",
    "map50": "COCO-style AP at IoU 0.50",
    "map75": "COCO-style AP at IoU 0.75",
}


def metric_order() -> tuple[str, ...]:
    """Every registered task's metrics (primary first per output kind), deduplicated."""
    from tasks import all_tasks

    names = (m for spec in all_tasks() for ms in spec.metrics.values() for m in ms)
    return tuple(dict.fromkeys(names))


def metric_notes(task: str | None = None) -> dict[str, str]:
    """Metric -> one line for the report: :data:`GENERIC_NOTES` updated with the
    ``metric_notes`` of ``task`` (none for a task not registered), or for no task with
    those of every registered task in registration order (a later note for a name wins)."""
    from tasks import all_tasks

    notes = dict(GENERIC_NOTES)
    for spec in all_tasks():
        if task is None or spec.name == task:
            notes.update(spec.metric_notes)
    return notes


def ordered(values, known) -> list:
    """The distinct ``values``: those in ``known`` in its order, then the others sorted.

    A row label of a cell with differing settings (``imagenet [lr=0.001]``, see
    :mod:`bench.reporting.frame`) sorts right after its init name's place."""
    vals = list(dict.fromkeys(values))
    rest = [v for v in vals if v not in known]
    base = {v: v.split(" [", 1)[0] for v in rest if isinstance(v, str) and " [" in v}
    placed = {v: b for v, b in base.items() if b in known}
    out = []
    for k in known:
        if k in vals:
            out.append(k)
        out += sorted(v for v, b in placed.items() if b == k)
    return out + sorted(v for v in rest if v not in placed)


def sort_runs(df: pd.DataFrame, *, by: list[str], then: list[str]) -> pd.DataFrame:
    """``df`` sorted by the columns ``by`` (plain order), then by init and protocol in
    display order, then by the columns ``then``."""
    d = df.assign(
        _i=df["init"].map(ordered(df["init"], INIT_ORDER).index),
        _p=df["protocol"].map(ordered(df["protocol"], PROTOCOL_ORDER).index),
    )
    return d.sort_values([*by, "_i", "_p", *then])
