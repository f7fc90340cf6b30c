"""Owns: the sweep file (`bench sweep CONFIG.yaml`): its schema, parsing and expansion.

:func:`load_sweep` / :func:`parse_sweep` read and validate the YAML into a :class:`Sweep`,
whose runs are :class:`~bench.engine.config.RunConfig` objects (deterministic; the run id
names each run), with its lr-search cells (:class:`Cell`); errors are :class:`SweepError`.
What to run next is :mod:`bench.experiments.plan`, running it :mod:`bench.experiments.run`,
where runs execute :mod:`bench.experiments.executors` (``local``, ``ray`` or ``slurm``).

A benchmark is hundreds of runs (task x init x protocol x fraction x seed). YAML schema
(``configs/example.yaml`` is a commented example)::

    name: mybench              # default: the file name without .yaml
    out: runs/mybench          # records folder; default runs/<name>
    grid:                      # lists over any RunConfig field; the product is the sweep
      task: [task_a, task_b]   # registered task names (required); a scalar is a one-value axis
      init: [random, imagenet, mymoco]
      protocol: [linear, frozen, finetune]
      fraction: [0.01, 0.1, 1.0]
      seed: [0, 1, 2]
    settings:                  # RunConfig fields fixed for every run
      arch: resnet50
      image_size: 224
      epochs: 20
      data_root: null          # omitted/null: $CXRBENCH_DATA/<task>, else built-in synthetic
    per_task:                  # optional, per task: fields (scalars) or grid axes (lists),
      task_b: {batch_size: 8, data_root: /data/task_b,   # and that task's own per_protocol
               per_protocol: {frozen: {init: [imagenet]}}}
    per_protocol:              # optional, per protocol, the same way (e.g. a cheap linear
      linear: {epochs: 50}     # probe trains longer; with feature reuse its epochs are cheap)
    inits:                     # optional: grid init labels that stand for a checkpoint
      mymoco: {init: moco, checkpoint: ckpt/moco.pth, prefix: "module.encoder_q."}
    lr_search:                 # optional, LoVT: pick the lr on validation, then run the seeds
      candidates: [1.0e-3, 1.0e-4]   # or per protocol: {linear: [1.0e-2, 1.0e-3], frozen: [...], ...}
      seed: 0                  # selection seed (default 0)
      out: runs/mybench-lr-search   # default: <out>-lr-search
    executor:                  # optional parameters of each executor (bench sweep --executor)
      local: {workers: 1, threads: null}   # or runs_per_gpu: N (N runs share each GPU; GPUs only)
      ray: {address: null, num_cpus: 1, num_gpus: 0, cluster_cpus: null, threads: null}
      slurm: {partition: gpu, timeout_min: 240, gpus_per_node: 1, cpus_per_task: 8,
              mem_gb: 32, folder: null, cluster: null, threads: null}

Precedence for one run: RunConfig defaults < ``settings`` < ``per_task`` < grid values <
``per_protocol`` of its protocol < ``per_task.<task>.per_protocol`` of its protocol (one
task's protocol: ``per_task: {rsna: {per_protocol: {frozen: {init: [supervised]}}}}``) <
the ``inits`` entry of its init label (a ``per_protocol`` list replaces that grid axis
for the protocol's runs). A key may not be both a grid axis and a setting.
Unknown keys anywhere are errors naming the key, and every run is validated by
``RunConfig`` before anything runs. Numbers such as ``1e-3`` (a string to YAML) are read
as numbers. Relative paths are relative to the directory ``bench sweep`` runs in, as for
``bench run``; runs of a sweep get ``progress: false`` unless the settings say otherwise.

With ``lr_search``, the runs that differ only in their seed form a :class:`Cell`, with
one candidate run per candidate lr at the selection seed, in ``lr_search.out`` (kept
apart from ``out`` so that ``bench report --runs OUT`` averages only final runs); how
the lr is chosen is :mod:`bench.experiments.plan`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from bench.engine.config import PROTOCOLS, RunConfig
from bench.experiments.executors import EXECUTOR_KEYS
from tasks import task_names

TOP_KEYS = (
    "name", "out", "grid", "settings", "per_task", "per_protocol", "inits", "lr_search", "executor",
)  # fmt: skip
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
    candidates: list[float] | dict[str, list[float]]  # one list, or one per protocol
    seed: int
    out: str

    def candidates_for(self, protocol: str) -> list[float]:
        """The candidate learning rates of a run of ``protocol``."""
        if isinstance(self.candidates, dict):
            return self.candidates[protocol]
        return self.candidates


@dataclass
class Cell:
    """Runs that differ only in their seed, and their lr-search candidates."""

    runs: list[RunConfig]  # lr not yet chosen
    candidates: list[RunConfig]  # one per candidate lr, at the selection seed

    @property
    def label(self) -> str:
        """``task/init/protocol/f<fraction>``, as in the sweep summary's ``lr_chosen``."""
        c = self.runs[0]
        return f"{c.task}/{c.init_label}/{c.protocol}/f{c.fraction:g}"


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
                    dataclasses.replace(cfg, seed=s.seed, lr=lr, out=s.out)
                    for lr in s.candidates_for(cfg.protocol)
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
    per_task, task_protocol = _parse_per_task(data.get("per_task"), source)
    per_protocol = _parse_per_protocol(data.get("per_protocol"), f"{source}: per_protocol")
    init_entries = _parse_inits(data.get("inits"), source)
    lr_search = None
    if data.get("lr_search") is not None:
        lr_search = _parse_lr_search(data["lr_search"], out, source)
        for w, d in (
            [("grid", grid), ("settings", settings)]
            + [(f"per_task.{t}", v) for t, v in per_task.items()]
            + [(f"per_protocol.{p}", v) for p, v in per_protocol.items()]
            + [(f"per_task.{t}.per_protocol.{p}", v) for t, pp in task_protocol.items() for p, v in pp.items()]
        ):
            if "lr" in d:
                raise SweepError(f"{source}: {w} sets lr, but lr_search chooses it; drop one")
    executor = _parse_executor(data.get("executor"), source)
    runs = _expand(grid, settings, per_task, per_protocol, init_entries, out, source, task_protocol)
    if lr_search is not None and isinstance(lr_search.candidates, dict):
        missing = sorted({c.protocol for c in runs} - set(lr_search.candidates))
        if missing:
            raise SweepError(
                f"{source}: lr_search.candidates has no list for protocol {', '.join(missing)} "
                f"(it has {', '.join(lr_search.candidates)}); give one per protocol the sweep runs"
            )
    return Sweep(
        name=name, out=out, runs=runs, lr_search=lr_search, executor=executor, source=source
    )


def _parse_per_task(obj, source: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(task -> its fields, task -> its own ``per_protocol``: ``per_task.T.per_protocol``)."""
    per_task = _check_keys(obj, task_names(), f"{source}: per_task")
    fields, nested = {}, {}
    for t, v in per_task.items():
        where = f"{source}: per_task.{t}"
        v = dict(v) if isinstance(v, dict) else v
        inner = v.pop("per_protocol", None) if isinstance(v, dict) else None
        fields[t] = _fields(v, where, True)
        if "task" in fields[t]:
            raise SweepError(f"{where} may not set task")
        if inner is not None:
            nested[t] = _parse_per_protocol(inner, f"{where}.per_protocol")
    return fields, nested


def _parse_per_protocol(obj, prefix: str) -> dict[str, dict]:
    """A ``per_protocol`` mapping; ``prefix`` names it in errors (``<file>: per_protocol``,
    or ``<file>: per_task.T.per_protocol``)."""
    per_protocol = _check_keys(obj, PROTOCOLS, prefix)
    per_protocol = {p: _fields(v, f"{prefix}.{p}", True) for p, v in per_protocol.items()}
    for p, over in per_protocol.items():
        if bad := sorted({"task", "protocol"} & set(over)):
            raise SweepError(f"{prefix}.{p} may not set {', '.join(bad)}")
    return per_protocol


def _parse_inits(obj, source: str) -> dict[str, dict]:
    inits = _check_keys(obj, list(obj or {}), f"{source}: inits")
    init_entries = {}
    for label, entry in inits.items():
        where = f"{source}: inits.{label}"
        entry = _check_keys(entry, INIT_KEYS, where)
        if "init" not in entry:
            raise SweepError(f"{where}: needs `init` (a catalogue name or a checkpoint path)")
        init_entries[str(label)] = {"init_name": str(label)} | {
            k: _coerce(k, v, where) for k, v in entry.items()
        }
    return init_entries


def _parse_lr_search(obj, out: str, source: str) -> LrSearch:
    where = f"{source}: lr_search"
    s = _check_keys(obj, LR_SEARCH_KEYS, where)
    cands = s.get("candidates")
    if isinstance(cands, dict):
        _check_keys(cands, PROTOCOLS, f"{where}.candidates")
        if not cands:
            raise SweepError(f"{where}: candidates is an empty mapping")
        cands = {str(p): _lr_list(v, f"{where}.candidates.{p}") for p, v in cands.items()}
    else:
        cands = _lr_list(cands, f"{where}.candidates")
    seed = s.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SweepError(f"{where}: seed must be an integer, got {seed!r}")
    return LrSearch(cands, seed, str(s.get("out") or f"{out.rstrip('/')}-lr-search"))


def _lr_list(cands, where: str) -> list[float]:
    if not isinstance(cands, list) or not cands:
        raise SweepError(
            f"{where}: must be a non-empty list of learning rates "
            "(or, for candidates, a mapping protocol -> list)"
        )
    cands = [_coerce("lr", c, where) for c in cands]
    if any(c is None or c <= 0 for c in cands) or len(set(cands)) != len(cands):
        raise SweepError(f"{where}: must be distinct positive numbers, got {cands}")
    return cands


def _parse_executor(obj, source: str) -> dict[str, dict]:
    executor = _check_keys(obj, tuple(EXECUTOR_KEYS), f"{source}: executor")
    for kind, params in executor.items():
        where = f"{source}: executor.{kind}"
        # slurm also passes any slurm_* parameter on to submitit's SlurmExecutor
        extra = [k for k in params or {} if kind == "slurm" and str(k).startswith("slurm_")]
        executor[kind] = _check_keys(params, EXECUTOR_KEYS[kind] + tuple(extra), where)
    return executor


def _task_axes(grid: dict, settings: dict, over: dict, task: str) -> tuple[dict, dict]:
    """The grid axes and the fixed fields of ``task``'s runs (``over``: its per_task)."""
    axes = {k: v for k, v in grid.items() if k != "task"}
    fixed = {"progress": False, **settings, "task": task}
    for k, v in over.items():
        if isinstance(v, list):
            axes[k] = v
        elif k in axes:
            axes[k] = [v]
        else:
            fixed[k] = v
    return axes, fixed


def _protocol_combos(kw: dict, per_protocol: dict):
    """``kw`` with its protocol's ``per_protocol`` fields: one dict, or one per value of
    each list it gives (that list replaces the grid axis for this protocol)."""
    over = per_protocol.get(kw.get("protocol", RunConfig.protocol), {})
    scalars = {k: v for k, v in over.items() if not isinstance(v, list)}
    lists = {k: v for k, v in over.items() if isinstance(v, list)}
    for combo in itertools.product(*lists.values()):
        yield kw | scalars | dict(zip(lists, combo))


def _expand(grid, settings, per_task, per_protocol, inits, out, source, task_protocol=None) -> list[RunConfig]:
    tasks = grid.get("task") or ([settings["task"]] if "task" in settings else [])
    if not tasks:
        from tasks import task_names

        raise SweepError(f"{source}: no task: set grid.task or settings.task "
                         f"(one of {', '.join(task_names())})")  # fmt: skip
    for t in per_task:
        if t not in tasks:
            raise SweepError(f"{source}: per_task.{t}, but the sweep has no task {t!r}")
    runs: dict[str, RunConfig] = {}
    for task in tasks:
        axes, fixed = _task_axes(grid, settings, per_task.get(task, {}), task)
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            base = fixed | dict(zip(keys, combo)) | {"out": out}
            combos = (k2 for k1 in _protocol_combos(base, per_protocol)
                      for k2 in _protocol_combos(k1, (task_protocol or {}).get(task, {})))  # fmt: skip
            for kw in combos:
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
