"""Owns: the plan of a sweep: which runs to skip, run or wait for, and the lr choice.

:func:`plan_sweep` is a pure function of a :class:`~bench.experiments.sweep.Sweep` and
the run records on disk (it reads, never writes). ``bench sweep --dry-run`` and
``bench status`` print it (:func:`plan`: one JSON-able row per step), and
:func:`bench.experiments.run.run_sweep` executes its stages: ``lr_search`` first, then,
planned again once the candidates' records are written, ``runs``.

Resume: before a run, its record ``<out>/<run_id>.json`` decides (:func:`resume_action`):
``complete`` -> skipped, unless the weights file it loaded (``weights.file``) is there
with other bytes now than its ``weights.sha256`` (a checkpoint pretrained again at the
same path: :func:`checkpoint_change`) -> run again; ``failed``/``nan_loss`` -> skipped unless ``--retry-failed``;
``failed`` because it was interrupted (Ctrl-C) -> run again; ``running`` -> its process
is gone (killed), run again, unless ``--skip-running`` (for ray/slurm, where a running
record may be live on another machine); no record -> run. Records are written
atomically by the runner, so a killed sweep leaves whole records only.

Learning-rate selection (LoVT, :func:`select_lr`): for each cell (the runs that differ
only in their seed), one run per candidate lr at the selection seed runs first, into
``lr_search.out``. Candidates that failed, stopped on a NaN loss, have no finite
validation score or *diverged* (:mod:`bench.engine.divergence`: a train loss above 10x
the first step's) are left out and never win. Among the rest the best *validation*
primary metric wins; candidates tied on it (equal up to float rounding,
:data:`TIE_REL_TOL`) are decided, in this order, by the lower validation loss of the
kept weights (``metrics.val.loss``, or ``loss`` / ``val_loss`` of the best epoch's
history entry, when every tied candidate recorded one), else by the lower final train
loss (the last epoch's mean; the runner records no validation loss today, and the
train loss is the recorded measure of how well the candidate fit), else by the
smaller lr (the cautious choice). Then every seed runs at that lr in ``out``. Final
records carry ``lr_selection: {candidates, chosen, val_scores, metric, split, seed,
selection_run_ids, selection_out, rule, excluded}``: ``rule`` says which rule decided
(see :data:`RULES`), ``excluded`` maps each left-out candidate (``repr(lr)``) to why
(``failed``, ``nan_loss``, ``diverged``, ``no validation score``). The candidate run at the
chosen lr is the same run (same run id) as the final run of the selection seed, so the
plan names it (:attr:`Step.reuse`) to be copied, not run again. Until every candidate
has a finished record the final runs ``wait``; when none completed they are ``blocked``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.engine.config import RunConfig
from bench.engine.divergence import record_diverged
from bench.engine.records import get_field, read_record, record_path
from bench.experiments.sweep import Cell, Sweep
from bench.util import sha256_file

STAGES = ("lr_search", "runs")
WAITING = ("wait", "blocked")  # final runs whose lr is not chosen (yet)
TIE_REL_TOL = 1e-9  # validation scores this close (relative) are a tie
# the ``rule`` of an ``lr_selection``, by how the choice was made
RULES = {
    "only": "the only candidate that completed without diverging",
    "val": "best validation {metric}",
    "val_loss": "tie on validation {metric}: lower validation loss",
    "train_loss": "tie on validation {metric}: lower final train loss (no validation loss recorded)",
    "lr": "tie on validation {metric} and loss: smaller lr",
}


# ---------------------------------------------------------------- resume decisions


def read_status(path: Path) -> dict | None:
    """The record at ``path``, or None when there is none (or it cannot be read)."""
    try:
        return read_record(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "unreadable"}


def is_interrupted(rec: dict) -> bool:
    return rec.get("status") == "failed" and str(rec.get("error") or "").startswith("interrupted")


def _why(rec: dict | None, *, retry_failed: bool, skip_running: bool) -> str | None:
    """Why a run with record ``rec`` must run (a short reason), or None to skip it."""
    if rec is None:
        return "new"
    status = rec.get("status")
    if status == "complete":
        changed = checkpoint_change(rec)
        return f"checkpoint changed since the record: {changed}" if changed else None
    if status == "running":
        return None if skip_running else "interrupted (record left running)"
    if is_interrupted(rec):
        return "interrupted"
    if status in ("failed", "nan_loss"):
        return f"retry {status}" if retry_failed else None
    return f"record status {status!r}"


_SHA_OF: dict[tuple[str, int, int], str] = {}  # (file, size, mtime_ns) -> sha256, per process


def checkpoint_change(rec: dict) -> str | None:
    """``"FILE: sha256 OLD... -> NEW..."`` when the weights file a record loaded is there now
    with other bytes than the record's ``weights.sha256``; None when they match, when the
    run loaded no file (``random``) or the file is gone (nothing to compare: the record
    stands). Each file is hashed once per process (by size and mtime), not once per record."""
    weights = rec.get("weights") or {}
    file, sha = weights.get("file"), weights.get("sha256")
    if not file or not sha:
        return None
    try:
        st = os.stat(file)
    except OSError:
        return None
    key = (str(file), st.st_size, st.st_mtime_ns)
    if key not in _SHA_OF:
        _SHA_OF[key] = sha256_file(file)
    now = _SHA_OF[key]
    return None if now == sha else f"{file}: sha256 {sha[:12]}... -> {now[:12]}..."


def resume_action(
    cfg: RunConfig, *, retry_failed: bool = False, skip_running: bool = False
) -> str | None:
    """Why ``cfg`` must run (a short reason), or None when its record says to skip it."""
    rec = read_status(record_path(cfg.out, cfg.run_id))
    return _why(rec, retry_failed=retry_failed, skip_running=skip_running)


# ---------------------------------------------------------------- lr selection


def _val_loss(rec: dict) -> float | None:
    """The validation loss of a candidate's kept weights, when its record has one."""
    value = get_field(rec, "metrics.val.loss")
    if value is None:
        history = rec.get("history") if isinstance(rec.get("history"), list) else []
        best = [
            h for h in history if isinstance(h, dict) and h.get("epoch") == rec.get("best_epoch")
        ]
        entry = best[0] if best else (history[-1] if history else {})
        value = get_field(
            entry, "val.loss", entry.get("val_loss") if isinstance(entry, dict) else None
        )
    return _finite(value)


def _final_train_loss(rec: dict) -> float | None:
    history = rec.get("history") if isinstance(rec.get("history"), list) else []
    return (
        _finite(history[-1].get("train_loss"))
        if history and isinstance(history[-1], dict)
        else None
    )


def _finite(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def choose_lr(
    results: list[tuple[float, float, dict]], metric: str | None
) -> tuple[float | None, str | None]:
    """``(chosen lr, rule)`` among ``(lr, validation score, record)`` of the eligible
    candidates (complete, finite score, not diverged); ``(None, None)`` when there is
    none. The rule texts are :data:`RULES` (module docstring for the order)."""
    if not results:
        return None, None
    if len(results) == 1:
        return results[0][0], RULES["only"]
    top = max(score for _, score, _ in results)
    tied = [r for r in results if math.isclose(r[1], top, rel_tol=TIE_REL_TOL, abs_tol=1e-12)]
    what = metric or "metric"
    if len(tied) == 1:
        return tied[0][0], RULES["val"].format(metric=what)
    for key, measure in (("val_loss", _val_loss), ("train_loss", _final_train_loss)):
        losses = [measure(rec) for _, _, rec in tied]
        if all(v is not None for v in losses):
            low = min(losses)
            best = [r for r, v in zip(tied, losses) if v == low]
            if len(best) == 1:
                return best[0][0], RULES[key].format(metric=what)
            tied = best
            if key == "val_loss":
                break  # equal validation losses: the smaller lr decides
    return min(lr for lr, _, _ in tied), RULES["lr"].format(metric=what)


def select_lr(cell: Cell) -> dict | None:
    """The ``lr_selection`` of a cell from its candidates' records, or None while any
    candidate has no finished record. ``chosen`` is None when no candidate completed
    without diverging (module docstring: the rules, in order)."""
    scores: dict[str, float | None] = {}
    excluded: dict[str, str] = {}
    eligible: list[tuple[float, float, dict]] = []
    metric = None
    for cand in cell.candidates:
        rec = read_status(record_path(cand.out, cand.run_id))
        if (
            rec is None
            or rec.get("status") not in ("complete", "failed", "nan_loss")
            or is_interrupted(rec)
        ):
            return None
        score = None
        if rec["status"] == "complete":
            metric = rec["primary_metric"]
            score = rec["metrics"]["val"].get(metric)
            if score is not None and not math.isfinite(score):
                score = None
        key = repr(cand.lr)
        scores[key] = score
        if rec["status"] != "complete":
            excluded[key] = rec["status"]
        elif record_diverged(rec):
            excluded[key] = "diverged"
        elif score is None:
            excluded[key] = "no validation score"
        else:
            eligible.append((cand.lr, score, rec))
    chosen, rule = choose_lr(eligible, metric)
    return {
        "candidates": [c.lr for c in cell.candidates],
        "chosen": chosen,
        "val_scores": scores,
        "metric": metric,
        "split": "val",
        "seed": cell.candidates[0].seed,
        "selection_run_ids": [c.run_id for c in cell.candidates],
        "selection_out": cell.candidates[0].out,
        "rule": rule,
        "excluded": excluded,
    }


# ---------------------------------------------------------------- the plan


@dataclass
class Step:
    """One run of the plan and what to do with it.

    ``action``: ``run``, ``skip`` (its record says so), ``wait`` (a final run whose lr
    search is not finished) or ``blocked`` (no lr candidate completed). For ``wait`` and
    ``blocked``, ``cfg`` is the run before its lr is chosen. ``selection`` is the
    ``lr_selection`` of a final run (None without lr search, and while waiting);
    ``reuse`` the lr-search candidate with the same run id, to copy instead of running.
    """

    stage: str
    cfg: RunConfig
    action: str
    why: str | None
    record: str | None = None  # status of its record on disk, None without one
    selection: dict | None = None
    reuse: RunConfig | None = None

    def row(self) -> dict:
        """The ``bench sweep --dry-run`` line of this step."""
        cfg, waiting = self.cfg, self.action in WAITING
        return {
            "stage": self.stage,
            "run_id": None if waiting else cfg.run_id,
            "task": cfg.task,
            "init": cfg.init_label,
            "protocol": cfg.protocol,
            "fraction": cfg.fraction,
            "seed": cfg.seed,
            "lr": "after lr search" if waiting else cfg.resolved_lr,
            "record": self.record,
            "action": self.action,
            "why": self.why,
        }


@dataclass
class SweepPlan:
    """The steps of a sweep in plan order (per cell: its candidates, then its runs)."""

    steps: list[Step] = field(default_factory=list)
    selections: list[tuple[str, dict]] = field(default_factory=list)  # (cell, lr_selection)

    def stage(self, name: str) -> list[Step]:
        """The steps of stage ``name`` (``lr_search`` or ``runs``), in plan order."""
        return [s for s in self.steps if s.stage == name]

    @property
    def pending(self) -> int:
        """Final runs waiting for an lr search that is not finished."""
        return sum(s.action == "wait" for s in self.steps)


def _step(cfg: RunConfig, stage: str, resume: dict, **extra) -> Step:
    rec = read_status(record_path(cfg.out, cfg.run_id))
    why = _why(rec, **resume)
    record = None if rec is None else rec.get("status")
    return Step(stage, cfg, "run" if why else "skip", why, record, **extra)


def _final_steps(cell: Cell, sel: dict | None, resume: dict) -> list[Step]:
    """The ``runs`` steps of an lr-search cell, given its selection (None: not finished)."""
    if sel is None:
        return [Step("runs", cfg, "wait", "lr search not finished") for cfg in cell.runs]
    if sel["chosen"] is None:
        return [
            Step("runs", cfg, "blocked", "no lr candidate completed", selection=sel)
            for cfg in cell.runs
        ]
    steps = []
    for cfg in cell.runs:
        final = dataclasses.replace(cfg, lr=sel["chosen"])
        reuse = next((c for c in cell.candidates if c.run_id == final.run_id), None)
        steps.append(_step(final, "runs", resume, selection=sel, reuse=reuse))
    return steps


def plan_sweep(
    sweep: Sweep, *, retry_failed: bool = False, skip_running: bool = False
) -> SweepPlan:
    """What to do with every run of ``sweep``, from the records on disk (module docstring)."""
    resume = {"retry_failed": retry_failed, "skip_running": skip_running}
    if sweep.lr_search is None:
        return SweepPlan([_step(cfg, "runs", resume) for cfg in sweep.runs])
    result = SweepPlan()
    for cell in sweep.cells():
        result.steps += [_step(cand, "lr_search", resume) for cand in cell.candidates]
        sel = select_lr(cell)
        if sel is not None:
            result.selections.append((cell.label, sel))
        result.steps += _final_steps(cell, sel, resume)
    return result


def plan(sweep: Sweep, *, retry_failed: bool = False, skip_running: bool = False) -> list[dict]:
    """The plan as rows, without running anything (``bench sweep --dry-run``)."""
    steps = plan_sweep(sweep, retry_failed=retry_failed, skip_running=skip_running).steps
    return [s.row() for s in steps]
