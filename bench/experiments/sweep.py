"""`bench sweep CONFIG.yaml`: a grid of runs from a YAML file, resumable, on any executor.

A benchmark is hundreds of runs (task x init x protocol x fraction x seed). This module
reads the YAML that describes them, expands it into :class:`~bench.config.RunConfig`s
(deterministically; the run id names each run), runs LoVT's learning-rate selection
when asked, skips what is already done and hands the rest to an executor
(:mod:`bench.experiments.executors`: ``local``, ``ray`` or ``slurm``).

YAML schema (``configs/example.yaml`` is a commented example)::

    name: mybench              # default: the file name without .yaml
    out: runs/mybench          # records folder; default runs/<name>
    grid:                      # lists over any RunConfig field; the product is the sweep
      task: [siim, rsna]       # a scalar is a one-value axis
      init: [random, imagenet, mymoco]
      protocol: [linear, frozen, finetune]
      fraction: [0.01, 0.1, 1.0]
      seed: [0, 1, 2]
    settings:                  # RunConfig fields fixed for every run
      arch: resnet50
      image_size: 224
      epochs: 20
      data_root: null          # omitted/null: $CXRBENCH_DATA/<task>, else built-in synthetic
    per_task:                  # optional, per task: fields (scalars) or grid axes (lists)
      rsna: {batch_size: 8, data_root: /data/rsna}
    inits:                     # optional: grid init labels that stand for a checkpoint
      mymoco: {init: moco, checkpoint: ckpt/moco.pth, prefix: "module.encoder_q."}
    lr_search:                 # optional, LoVT: pick the lr on validation, then run the seeds
      candidates: [1.0e-3, 1.0e-4]
      seed: 0                  # selection seed (default 0)
      out: runs/mybench-lr-search   # default: <out>-lr-search
    executor:                  # optional parameters of each executor (bench sweep --executor)
      local: {workers: 1, threads: null}
      ray: {address: null, num_cpus: 1, num_gpus: 0, cluster_cpus: null, threads: null}
      slurm: {partition: gpu, timeout_min: 240, gpus_per_node: 1, cpus_per_task: 8,
              mem_gb: 32, folder: null, cluster: null, threads: null}

Precedence for one run: RunConfig defaults < ``settings`` < ``per_task`` < grid values <
the ``inits`` entry of its init label. A key may not be both a grid axis and a setting.
Unknown keys anywhere are errors naming the key, and every run is validated by
``RunConfig`` before anything runs. Numbers such as ``1e-3`` (a string to YAML) are read
as numbers. Relative paths are relative to the directory ``bench sweep`` runs in, as for
``bench run``; runs of a sweep get ``progress: false`` unless the settings say otherwise.

Learning-rate selection (LoVT): the runs that differ only in their seed form a cell.
For each cell, one run per candidate lr at the selection seed is run first, into the
``lr_search.out`` folder (kept apart from ``out`` so that ``bench report --runs OUT``
averages only final runs). The candidate with the best *validation* primary metric wins
(ties: the first listed; failed or diverged candidates are left out), then every seed
runs at that lr in ``out``. Final records carry ``lr_selection: {candidates, chosen,
val_scores, metric, seed, selection_run_ids}``. The candidate run at the chosen lr is
the same run (same run id) as the final run of the selection seed, so it is copied,
not run again.

Resume: before a run, its record ``<out>/<run_id>.json`` decides:
``complete`` -> skipped; ``failed``/``nan_loss`` -> skipped unless ``--retry-failed``;
``failed`` because it was interrupted (Ctrl-C) -> run again; ``running`` -> its process
is gone (killed), run again, unless ``--skip-running`` (for ray/slurm, where a running
record may be live on another machine); no record -> run. Records are written
atomically by the runner, so a killed sweep leaves whole records only. Two sweeps on
one ``out`` folder on one machine are refused (a lock file, ``<out>/.sweep.lock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.engine.config import RunConfig
from bench.engine.records import read_record, record_path, write_json_atomic
from bench.experiments.executors import EXECUTOR_KEYS
from bench.util import copy_atomic
from tasks import task_names

TOP_KEYS = ("name", "out", "grid", "settings", "per_task", "inits", "lr_search", "executor")
INIT_KEYS = tuple(
    "init checkpoint prefix init_name allow_partial allow_leakage trust_checkpoint mean std".split()
)
LR_SEARCH_KEYS = ("candidates", "seed", "out")
_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)
_NOT_SETTABLE = ("out",)  # the sweep's own `out` decides it


class SweepError(ValueError):
    """The sweep file is wrong; the message names the file and the key."""


@dataclass
class LrSearch:
    candidates: list[float]
    seed: int
    out: str


@dataclass
class Cell:
    """Runs that differ only in their seed, and their lr-search candidates."""

    runs: list[RunConfig]  # lr not yet chosen
    candidates: list[RunConfig]  # one per candidate lr, at the selection seed


@dataclass
class Sweep:
    name: str
    out: str
    runs: list[RunConfig]  # every final run; with lr_search, lr is chosen later
    lr_search: LrSearch | None = None
    executor: dict[str, dict] = field(default_factory=dict)
    source: str = "<sweep>"

    def cells(self) -> list[Cell]:
        """The lr-search cells, in the order of the runs (empty without lr_search)."""
        if self.lr_search is None:
            return []
        cells: dict[str, Cell] = {}
        for cfg in self.runs:
            ident = {k: v for k, v in cfg.identity().items() if k not in ("seed", "lr")}
            key = json.dumps(ident, sort_keys=True, default=str)
            if key not in cells:
                s = self.lr_search
                cands = [
                    dataclasses.replace(cfg, seed=s.seed, lr=lr, out=s.out) for lr in s.candidates
                ]
                cells[key] = Cell(runs=[], candidates=cands)
            cells[key].runs.append(cfg)
        return list(cells.values())


# ---------------------------------------------------------------- reading the YAML


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file (every run is checked by RunConfig)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    data.setdefault("name", path.stem)
    return parse_sweep(data, source=str(path))


def _check_keys(obj, allowed, where: str) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise SweepError(f"{where}: expected a mapping, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise SweepError(
                f"{where}: unknown key {key!r}; allowed: {', '.join(map(str, allowed))}"
            )
    return obj


def _coerce(key: str, value, where: str):
    """A YAML value as the type of RunConfig field ``key`` (1 -> 1.0, "1e-3" -> 0.001)."""
    hint = _HINTS[key]
    types = typing.get_args(hint) or (hint,)
    bad = SweepError(f"{where}: {key} = {value!r} is not a valid {hint}")
    if value is None:
        if type(None) in types:
            return None
        raise bad
    if isinstance(value, bool):
        if bool in types:
            return value
        raise bad
    if float in types:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(v):
            raise bad
        return v
    for t in (int, str, dict):
        if t in types and isinstance(value, t):
            return value
    raise bad


def _fields(obj, where: str, allow_lists: bool) -> dict:
    obj = _check_keys(obj, sorted(_FIELDS - set(_NOT_SETTABLE)), where)
    out = {}
    for key, value in obj.items():
        if isinstance(value, list):
            if not allow_lists:
                raise SweepError(f"{where}: {key} is a list; lists belong under grid")
            if not value:
                raise SweepError(f"{where}: {key} is an empty list")
            out[key] = [_coerce(key, v, where) for v in value]
        else:
            out[key] = _coerce(key, value, where)
    return out


def parse_sweep(data: dict, source: str = "<sweep>") -> Sweep:
    """Validate a parsed sweep mapping and expand it (see the module docstring)."""
    _check_keys(data, TOP_KEYS, source)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SweepError(f"{source}: name must be a non-empty string")
    out = data.get("out") or f"runs/{name}"
    if not isinstance(out, str):
        raise SweepError(f"{source}: out must be a path")

    grid = _fields(data.get("grid"), f"{source}: grid", True)
    grid = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    settings = _fields(data.get("settings"), f"{source}: settings", False)
    if both := sorted(set(grid) & set(settings)):
        raise SweepError(f"{source}: {', '.join(both)} is both a grid axis and a setting; keep one")
    per_task = _check_keys(data.get("per_task"), task_names(), f"{source}: per_task")
    per_task = {t: _fields(v, f"{source}: per_task.{t}", True) for t, v in per_task.items()}
    for t, over in per_task.items():
        if "task" in over:
            raise SweepError(f"{source}: per_task.{t} may not set task")
    inits = _check_keys(data.get("inits"), list(data.get("inits") or {}), f"{source}: inits")
    init_entries = {}
    for label, entry in inits.items():
        where = f"{source}: inits.{label}"
        entry = _check_keys(entry, INIT_KEYS, where)
        if "init" not in entry:
            raise SweepError(f"{where}: needs `init` (a catalogue name or a checkpoint path)")
        init_entries[str(label)] = {"init_name": str(label)} | {
            k: _coerce(k, v, where) for k, v in entry.items()
        }

    lr_search = None
    if data.get("lr_search") is not None:
        where = f"{source}: lr_search"
        s = _check_keys(data["lr_search"], LR_SEARCH_KEYS, where)
        cands = s.get("candidates")
        if not isinstance(cands, list) or not cands:
            raise SweepError(f"{where}: candidates must be a non-empty list of learning rates")
        cands = [_coerce("lr", c, where) for c in cands]
        if any(c is None or c <= 0 for c in cands) or len(set(cands)) != len(cands):
            raise SweepError(f"{where}: candidates must be distinct positive numbers, got {cands}")
        seed = s.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise SweepError(f"{where}: seed must be an integer, got {seed!r}")
        lr_search = LrSearch(cands, seed, str(s.get("out") or f"{out.rstrip('/')}-lr-search"))
        for w, d in [("grid", grid), ("settings", settings)] + [
            (f"per_task.{t}", v) for t, v in per_task.items()
        ]:
            if "lr" in d:
                raise SweepError(f"{source}: {w} sets lr, but lr_search chooses it; drop one")

    executor = _check_keys(data.get("executor"), tuple(EXECUTOR_KEYS), f"{source}: executor")
    for kind, params in executor.items():
        where = f"{source}: executor.{kind}"
        # slurm also passes any slurm_* parameter on to submitit's SlurmExecutor
        extra = [k for k in params or {} if kind == "slurm" and str(k).startswith("slurm_")]
        executor[kind] = _check_keys(params, EXECUTOR_KEYS[kind] + tuple(extra), where)

    runs = _expand(grid, settings, per_task, init_entries, out, source)
    return Sweep(
        name=name, out=out, runs=runs, lr_search=lr_search, executor=executor, source=source
    )


def _expand(grid, settings, per_task, inits, out, source) -> list[RunConfig]:
    tasks = grid.get("task") or [settings.get("task", RunConfig.task)]
    for t in per_task:
        if t not in tasks:
            raise SweepError(f"{source}: per_task.{t}, but the sweep has no task {t!r}")
    runs: dict[str, RunConfig] = {}
    for task in tasks:
        over = per_task.get(task, {})
        axes = {k: v for k, v in grid.items() if k != "task"}
        fixed = {"progress": False, **settings, "task": task}
        for k, v in over.items():
            if isinstance(v, list):
                axes[k] = v
            elif k in axes:
                axes[k] = [v]
            else:
                fixed[k] = v
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            kw = fixed | dict(zip(keys, combo)) | {"out": out}
            label = kw.get("init")
            if isinstance(label, str) and label in inits:
                kw |= inits[label]
            try:
                cfg = RunConfig(**kw)
            except (TypeError, ValueError) as e:
                shown = {k: v for k, v in kw.items() if k in ("task", *keys)}
                raise SweepError(f"{source}: run {shown}: {e}") from None
            runs.setdefault(cfg.run_id, cfg)
    return list(runs.values())


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


def resume_action(
    cfg: RunConfig, *, retry_failed: bool = False, skip_running: bool = False
) -> str | None:
    """Why ``cfg`` must run (a short reason), or None when its record says to skip it."""
    rec = read_status(record_path(cfg.out, cfg.run_id))
    if rec is None:
        return "new"
    status = rec.get("status")
    if status == "complete":
        return None
    if status == "running":
        return None if skip_running else "interrupted (record left running)"
    if is_interrupted(rec):
        return "interrupted"
    if status in ("failed", "nan_loss"):
        return f"retry {status}" if retry_failed else None
    return f"record status {status!r}"


# ---------------------------------------------------------------- running a sweep


@dataclass
class SweepResult:
    outcomes: list  # bench.executors.Outcome, in the order they finished
    selections: list[tuple[str, dict]]  # (cell, lr_selection) of each decided lr search
    pending: int = 0  # final runs waiting for an lr search that is not finished

    @property
    def failed(self) -> list:
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
        }


@contextlib.contextmanager
def sweep_lock(out: str | Path) -> Iterator[None]:
    """Refuse a second ``bench sweep`` on the same folder on this machine."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    path = Path(out) / ".sweep.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise SweepError(
                f"another `bench sweep` is writing to {out} (pid {f.read().strip() or '?'}); "
                "wait for it or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_holder(out: str | Path) -> int | None:
    """The pid of the `bench sweep` holding ``out``'s lock on this machine, else None."""
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(out) / ".sweep.lock"
    if not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def select_lr(cell: Cell) -> dict | None:
    """The ``lr_selection`` of a cell from its candidates' records, or None while any
    candidate has no finished record. ``chosen`` is None when no candidate completed."""
    scores: dict[str, float | None] = {}
    best, metric = None, None
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
        scores[repr(cand.lr)] = score
        if score is not None and (best is None or score > best[1]):
            best = (cand.lr, score)
    return {
        "candidates": [c.lr for c in cell.candidates],
        "chosen": None if best is None else best[0],
        "val_scores": scores,
        "metric": metric,
        "split": "val",
        "seed": cell.candidates[0].seed,
        "selection_run_ids": [c.run_id for c in cell.candidates],
        "selection_out": cell.candidates[0].out,
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


def run_sweep(
    sweep: Sweep,
    executor: str = "local",
    *,
    retry_failed: bool = False,
    skip_running: bool = False,
    options: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run every run of ``sweep`` that its records say is still to do (module docstring).

    ``options`` override the YAML's ``executor.<executor>`` parameters (CLI flags).
    """
    from bench.experiments import executors

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    params = dict(sweep.executor.get(executor, {}))
    params.update({k: v for k, v in (options or {}).items() if v is not None})
    runner = executors.get_executor(executor, params, name=sweep.name)
    result = SweepResult(outcomes=[], selections=[])

    def stage(configs, label, selections=None, reuse=None):
        todo = []
        for cfg in configs:
            why = resume_action(cfg, retry_failed=retry_failed, skip_running=skip_running)
            sel = (selections or {}).get(cfg.run_id)
            if why is None:
                if sel is not None:
                    annotate(cfg, sel)  # a kill between the run and its annotation
                result.outcomes.append(executors.Outcome.from_disk(cfg, "skipped", label))
            elif reuse and cfg.run_id in reuse and reuse_candidate(cfg, reuse[cfg.run_id], sel):
                log(f"{label}: {cfg.run_id} reused from the lr search ({reuse[cfg.run_id].out})")
                result.outcomes.append(executors.Outcome.from_disk(cfg, "reused", label))
            else:
                todo.append((cfg, sel))
        skipped = len(configs) - len(todo)
        log(
            f"{label}: {len(configs)} runs, {skipped} already done or skipped, {len(todo)} to run "
            f"({executor} executor)"
        )
        for i, o in enumerate(runner(todo), 1):
            o.stage = label
            result.outcomes.append(o)
            log(f"[{i}/{len(todo)}] {o.line()}")

    with sweep_lock(sweep.out):
        if sweep.lr_search is None:
            stage(sweep.runs, "runs")
            return result
        cells = sweep.cells()
        stage([c for cell in cells for c in cell.candidates], "lr_search")
        finals, selections, reuse = [], {}, {}
        for cell in cells:
            sel = select_lr(cell)
            if sel is None:
                result.pending += len(cell.runs)
                continue
            c = cell.runs[0]
            result.selections.append((f"{c.task}/{c.init_label}/{c.protocol}/f{c.fraction:g}", sel))
            if sel["chosen"] is None:
                for cfg in cell.runs:
                    result.outcomes.append(
                        executors.Outcome(
                            cfg.run_id,
                            "error",
                            "no lr candidate completed: " + ", ".join(sel["selection_run_ids"]),
                            stage="runs",
                        )
                    )
                continue
            for cfg in cell.runs:
                final = dataclasses.replace(cfg, lr=sel["chosen"])
                finals.append(final)
                selections[final.run_id] = sel
                for cand in cell.candidates:
                    if cand.run_id == final.run_id:
                        reuse[final.run_id] = cand
        if result.pending:
            log(
                f"lr search not finished for {result.pending} runs (candidate records still "
                "running); run the sweep again once they are done"
            )
        stage(finals, "runs", selections, reuse)
    return result


def plan(sweep: Sweep, *, retry_failed: bool = False, skip_running: bool = False) -> list[dict]:
    """What ``run_sweep`` would do, without running anything (``bench sweep --dry-run``)."""
    rows = []

    def add(cfg, stage):
        rec = read_status(record_path(cfg.out, cfg.run_id))
        why = resume_action(cfg, retry_failed=retry_failed, skip_running=skip_running)
        rows.append(
            {
                "stage": stage,
                "run_id": cfg.run_id,
                "task": cfg.task,
                "init": cfg.init_label,
                "protocol": cfg.protocol,
                "fraction": cfg.fraction,
                "seed": cfg.seed,
                "lr": cfg.resolved_lr,
                "record": None if rec is None else rec.get("status"),
                "action": "run" if why else "skip",
                "why": why,
            }
        )

    if sweep.lr_search is None:
        for cfg in sweep.runs:
            add(cfg, "runs")
        return rows
    for cell in sweep.cells():
        for cand in cell.candidates:
            add(cand, "lr_search")
        sel = select_lr(cell)
        for cfg in cell.runs:
            if sel is None or sel["chosen"] is None:
                rows.append(
                    {
                        "stage": "runs",
                        "run_id": None,
                        "task": cfg.task,
                        "init": cfg.init_label,
                        "protocol": cfg.protocol,
                        "fraction": cfg.fraction,
                        "seed": cfg.seed,
                        "lr": "after lr search",
                        "record": None,
                        "action": "wait" if sel is None else "blocked",
                        "why": "lr search not finished"
                        if sel is None
                        else "no lr candidate completed",
                    }
                )
            else:
                add(dataclasses.replace(cfg, lr=sel["chosen"]), "runs")
    return rows
