"""Owns: the divergence rule of a training run, as plain functions of its history.

No torch here: :func:`bench.engine.train.fit` applies the rule while it trains and the
sweep planner (:mod:`bench.experiments.plan`) reads it back from run records.

A run **diverged** when the mean training loss of any epoch is more than
:data:`DIVERGENCE_FACTOR` (10) times its *starting loss*: the loss of the very first
training step, before any parameter update. ``fit`` stores that value as
``start_loss`` in the first history entry and flags every epoch (``diverged``: its mean
loss is above the threshold). For records written before these fields existed, the
first epoch's mean loss stands in for the starting loss. A loss that is not finite
stops the run earlier (``NanLossError``, status ``nan_loss``); divergence catches the
runs that explode without ever becoming NaN (lr 1e9: loss 4.8e17, masks all empty).

Why 10x the first step: an lr that is merely too high makes the loss noisy or flat; one
that explodes moves it by orders of magnitude within the first epoch, so the first
epoch's *mean* can already be huge — the first step, taken before any update, is the
only value that is always the model's real starting point.
"""

from __future__ import annotations

import math

DIVERGENCE_FACTOR = 10.0


def loss_diverged(loss, start, factor: float = DIVERGENCE_FACTOR) -> bool:
    """Whether one epoch's mean training loss ``loss`` is above ``factor`` x ``start``
    (False when either is missing; a non-finite ``loss`` counts as diverged)."""
    if loss is None or start is None or isinstance(loss, bool) or isinstance(start, bool):
        return False
    try:
        loss, start = float(loss), float(start)
    except (TypeError, ValueError):
        return False
    if not math.isfinite(start):
        return False
    if not math.isfinite(loss):
        return True
    return loss > factor * abs(start)


def start_loss(history) -> float | None:
    """The starting loss of a run's history: ``start_loss`` of its first entry, else
    that entry's mean ``train_loss`` (records written before ``start_loss`` existed)."""
    if not isinstance(history, list) or not history or not isinstance(history[0], dict):
        return None
    first = history[0]
    value = first.get("start_loss", first.get("train_loss"))
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def diverged_epochs(history, factor: float = DIVERGENCE_FACTOR) -> list[int]:
    """The epochs of ``history`` whose mean train loss is above ``factor`` x the start.

    Entries that carry ``fit``'s own ``diverged`` flag are taken as flagged; the others
    are judged here from ``train_loss`` and :func:`start_loss`.
    """
    if not isinstance(history, list):
        return []
    start = start_loss(history)
    out = []
    for i, entry in enumerate(history, 1):
        if not isinstance(entry, dict):
            continue
        flag = entry.get("diverged")
        hit = (
            flag
            if isinstance(flag, bool)
            else loss_diverged(entry.get("train_loss"), start, factor)
        )
        if hit:
            out.append(int(entry.get("epoch", i)))
    return out


def record_diverged(rec: dict) -> bool:
    """Whether a run record's training diverged: its ``diverged`` field when it has one,
    else its history judged by :func:`diverged_epochs`."""
    flag = rec.get("diverged") if isinstance(rec, dict) else None
    if isinstance(flag, bool):
        return flag
    return bool(diverged_epochs(rec.get("history") if isinstance(rec, dict) else None))


__all__ = ["DIVERGENCE_FACTOR", "diverged_epochs", "loss_diverged", "record_diverged", "start_loss"]
