"""Owns: running a sweep: executing the stages of its plan, and the result.

:func:`run_sweep` takes the lock on the sweep's ``out`` (:mod:`bench.experiments.lock`),
executes the ``lr_search`` stage of :func:`bench.experiments.plan.plan_sweep`, plans
again (the candidates' records now choose the lr) and executes the ``runs`` stage. It
decides nothing itself: per step it skips, copies the lr-search candidate
(:func:`reuse_candidate`) or hands the run to an executor
(:mod:`bench.experiments.executors`). A skipped final run whose record lacks its
``lr_selection`` (killed between the run and the annotation) gets it (:func:`annotate`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.engine.config import RunConfig
from bench.engine.records import record_path, write_json_atomic
from bench.experiments import executors
from bench.experiments.executors import Executor, Outcome
from bench.experiments.lock import sweep_lock
from bench.experiments.plan import Step, SweepPlan, plan_sweep, read_status
from bench.experiments.sweep import Sweep
from bench.util import copy_atomic

Log = Callable[[str], None]


@dataclass
class SweepResult:
    outcomes: list[Outcome]  # in the order they finished
    selections: list[tuple[str, dict]]  # (cell, lr_selection) of each decided lr search
    pending: int = 0  # final runs waiting for an lr search that is not finished

    @property
    def failed(self) -> list[Outcome]:
        """Outcomes that make the sweep fail: runs not complete, run now or skipped (a
        nan_loss lr candidate is a legitimate result of the search and does not count)."""
        return [
            o
            for o in self.outcomes
            if o.status not in ("complete", "running")
            and not (o.stage == "lr_search" and o.status == "nan_loss")
        ]

    def summary(self, sweep: Sweep) -> dict:
        ran = [o for o in self.outcomes if o.action == "ran"]
        return {
            "sweep": sweep.name,
            "out": sweep.out,
            "runs": len(self.outcomes) + self.pending,
            "ran": len(ran),
            "complete_now": sum(o.status == "complete" for o in ran),
            "reused": sum(o.action == "reused" for o in self.outcomes),
            "skipped": sum(o.action == "skipped" for o in self.outcomes),
            "failed": len(self.failed),
            "pending": self.pending,
            "lr_chosen": [[cell, sel["chosen"]] for cell, sel in self.selections],
            "lr_rule": [[cell, sel.get("rule")] for cell, sel in self.selections],
        }


def annotate(cfg: RunConfig, selection: dict) -> bool:
    """Add ``lr_selection`` to a finished record that lacks it (atomic); True if written."""
    path = record_path(cfg.out, cfg.run_id)
    rec = read_status(path)
    if rec is None or rec.get("status") == "running" or rec.get("lr_selection") == selection:
        return False
    write_json_atomic(path, rec | {"lr_selection": selection})
    return True


def reuse_candidate(cfg: RunConfig, cand: RunConfig, selection: dict) -> dict | None:
    """Copy the complete candidate record (same run id) as the final record of ``cfg``."""
    src = record_path(cand.out, cand.run_id)
    rec = read_status(src)
    if rec is None or rec.get("status") != "complete":
        return None
    rec = dict(rec)
    for key in ("examples", "predictions"):  # side files live beside the record
        if rec.get(key) and Path(rec[key]).exists():
            dst = copy_atomic(rec[key], Path(cfg.out) / Path(rec[key]).name)
            rec[key] = str(dst)
    rec["config"] = dict(rec.get("config") or {}, out=cfg.out)
    rec["reused_from"] = str(src)
    rec["lr_selection"] = selection
    write_json_atomic(record_path(cfg.out, cfg.run_id), rec)
    return rec


def _execute_stage(
    steps: list[Step], label: str, runner: Executor, kind: str, result: SweepResult, log: Log
) -> None:
    """Skip, reuse or run (with ``runner``) the ``run``/``skip`` steps of one stage."""
    steps = [s for s in steps if s.action in ("run", "skip")]
    todo = []
    for step in steps:
        cfg, sel = step.cfg, step.selection
        if step.action == "skip":
            if sel is not None:
                annotate(cfg, sel)  # a kill between the run and its annotation
            result.outcomes.append(Outcome.from_disk(cfg, "skipped", label))
        elif step.reuse is not None and reuse_candidate(cfg, step.reuse, sel):
            log(f"{label}: {cfg.run_id} reused from the lr search ({step.reuse.out})")
            result.outcomes.append(Outcome.from_disk(cfg, "reused", label))
        else:
            todo.append((cfg, sel))
    skipped = len(steps) - len(todo)
    log(
        f"{label}: {len(steps)} runs, {skipped} already done or skipped, {len(todo)} to run "
        f"({kind} executor)"
    )
    for i, o in enumerate(runner(todo), 1):
        o.stage = label
        result.outcomes.append(o)
        log(f"[{i}/{len(todo)}] {o.line()}")


def selection_line(cell: str, sel: dict) -> str:
    """One log line for a decided lr search: the choice, the rule that decided it and
    the candidates left out (``diverged``, ``failed``, ...)."""
    out = sel.get("excluded") or {}
    left = f"; left out: {', '.join(f'{lr} ({why})' for lr, why in out.items())}" if out else ""
    if sel["chosen"] is None:
        return f"lr search {cell}: no candidate completed without diverging{left}"
    return f"lr search {cell}: lr {sel['chosen']:g} chosen by {sel.get('rule') or 'best validation score'}{left}"


def _take_selections(plan: SweepPlan, result: SweepResult, log: Log) -> None:
    """Record the lr choices of ``plan`` (one log line each: the rule that decided);
    its blocked runs fail, its waiting runs pend."""
    result.selections += plan.selections
    for cell, sel in plan.selections:
        log(selection_line(cell, sel))
    for step in plan.stage("runs"):
        if step.action == "blocked":
            ids = ", ".join(step.selection["selection_run_ids"])
            out = step.selection.get("excluded") or {}
            why = f" ({', '.join(f'{lr}: {r}' for lr, r in out.items())})" if out else ""
            error = f"no lr candidate completed without diverging{why}: {ids}"
            result.outcomes.append(Outcome(step.cfg.run_id, "error", error, stage="runs"))
    result.pending = plan.pending
    if result.pending:
        log(
            f"lr search not finished for {result.pending} runs (candidate records still "
            "running); run the sweep again once they are done"
        )


def run_sweep(
    sweep: Sweep,
    executor: str = "local",
    *,
    retry_failed: bool = False,
    skip_running: bool = False,
    options: dict | None = None,
    log: Log | None = None,
) -> SweepResult:
    """Run every run of ``sweep`` that its records say is still to do (see
    :mod:`bench.experiments.plan`). ``options`` override the YAML's
    ``executor.<executor>`` parameters (CLI flags).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    params = dict(sweep.executor.get(executor, {}))
    params.update({k: v for k, v in (options or {}).items() if v is not None})
    runner = executors.get_executor(executor, params, name=sweep.name)
    result = SweepResult(outcomes=[], selections=[])
    resume = {"retry_failed": retry_failed, "skip_running": skip_running}

    with sweep_lock(sweep.out):
        if sweep.lr_search is not None:
            steps = plan_sweep(sweep, **resume).stage("lr_search")
            _execute_stage(steps, "lr_search", runner, executor, result, log)
        plan = plan_sweep(sweep, **resume)  # after the lr search: its records choose the lr
        _take_selections(plan, result, log)
        _execute_stage(plan.stage("runs"), "runs", runner, executor, result, log)
    return result
