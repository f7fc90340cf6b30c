"""Owns: ``bench compare RUNS --self-test``: proof by mutation that the regression check catches bugs.

``RUNS`` is a finished sweep (e.g. ``bench sweep configs/ci.yaml`` -> ``runs/ci``): its
complete records are the clean baseline. For each mutation below, the self-test breaks
one component *in the process of each run* (a patched function, as a bug would leave it), re-runs
the cells that the component touches with exactly the records' settings (the learning
rate the sweep's search chose included; same seeds, same run ids) into
``RUNS-selftest/<mutation>/``, and compares them with the clean runs of those cells
(:func:`bench.experiments.compare.compare`, two-sided: a broken harness is as often too
good as too bad). A mutation is *caught* when that comparison fails (``bench compare``
would exit 1).

=====================  ==============================================  =====================
mutation               what it breaks                                  cells it re-runs
=====================  ==============================================  =====================
``random-weights``     the init's weights replaced by random ones      init is not ``random``
                       after loading (a key mapping that loads nothing)
``rle-no-transpose``   SIIM RLE decoded without the transpose (the     tasks with RLE masks
                       column-major order read row-major)              (SIIM)
``bn-frozen``          BatchNorm statistics updating under ``frozen``  ``linear``, ``frozen``
                       and ``linear`` (the encoder left in train mode)
``dice-batch``         Dice averaged per batch (pooled within each     ``mask`` outputs
                       batch) with ``drop_last`` evaluation loaders
``boxes-shift``        predicted boxes shifted by a fixed offset       ``boxes`` outputs
                       (``BOX_SHIFT`` px at the cache size)
=====================  ==============================================  =====================

``rle-no-transpose`` also needs its own preprocessing cache (masks are decoded once,
into the cache): its runs use ``RUNS-selftest/rle-no-transpose/cache``, with the
synthetic data sets linked from the real cache so that the images are the same.

Order and cost: a mutation's cells run cheapest first (the clean runs' wall time), each
cell is compared as soon as its seeds are done, and the mutation is caught on the first
cell whose comparison fails; its costlier cells are then not run (``--all-cells`` runs
them all, for the full table). Runs go ``--workers`` at a time in worker processes, each
applying its mutation in its own process; a worker only starts a later cell of a
mutation (ahead of its turn) when no mutation has a run of its current cell waiting.

The result is a table (mutation, cells, verdict per cell, caught) in markdown; the exit
status of ``bench compare --self-test`` is 0 when every mutation is caught, else 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path

from bench.engine.config import RunConfig
from bench.experiments.baseline import build_baseline, read_runs
from bench.experiments.compare import compare
from bench.metrics.stats import ALPHA

BOX_SHIFT = 4.0  # px at the cache resolution (the CI sweep's 128 px: about 1/6 of a box side)


@dataclass(frozen=True)
class Mutation:
    name: str
    breaks: str
    applies: Callable[[RunConfig], bool]
    patch: Callable[[Path], contextlib.AbstractContextManager]


# ---------------------------------------------------------------- the broken components


@contextlib.contextmanager
def _setattr(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def _random_weights(work: Path):
    import torch

    from bench.engine import runner

    real = runner.load_weights

    def load_weights(cfg, **kw):
        encoder, winfo = real(cfg, **kw)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            for m in encoder.modules():
                if m is not encoder and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        return encoder, winfo

    with _setattr(runner, "load_weights", load_weights):
        yield


@contextlib.contextmanager
def _rle_no_transpose(work: Path):
    import numpy as np

    from tasks.cache import cache_root
    from tasks.siim import data, rle

    real = rle.rle_decode

    def rle_decode(s, height, width, fmt="relative"):
        # the bug: the column-major runs read row-major (the mask is the right one, transposed)
        return np.ascontiguousarray(real(s, height, width, fmt).T)

    real_root = cache_root()
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if (real_root / "synthetic").is_dir() and not (cache / "synthetic").exists():
        with contextlib.suppress(FileExistsError):  # another worker linked it first
            (cache / "synthetic").symlink_to((real_root / "synthetic").resolve(), target_is_directory=True)
    old_env = os.environ.get("CXRBENCH_CACHE")
    os.environ["CXRBENCH_CACHE"] = str(cache)
    try:
        with _setattr(rle, "rle_decode", rle_decode), _setattr(data, "rle_decode", rle_decode):
            yield
    finally:
        if old_env is None:
            os.environ.pop("CXRBENCH_CACHE", None)
        else:
            os.environ["CXRBENCH_CACHE"] = old_env


@contextlib.contextmanager
def _bn_frozen(work: Path):
    from torch import nn

    from bench.models.protocols import ProtocolModel

    def train(self, mode: bool = True):
        nn.Module.train(self, mode)  # the bug: the frozen encoder's BatchNorm stays in train mode
        return self

    with _setattr(ProtocolModel, "train", train):
        yield


@contextlib.contextmanager
def _dice_batch(work: Path):
    import torch

    from bench.models import segmentation

    def make_evaluate(normalize, device, ids):
        def evaluate(model, loader) -> dict:
            scores, size = [], None
            for _, probs, masks in segmentation.predict_probs(model, loader, normalize, device):
                size = size or len(probs)
                if len(probs) < size:  # the bug: drop_last (a short last batch is never scored)
                    break
                pred, target = probs > 0.5, masks > 0
                inter = (pred & target).sum().item()
                total = pred.sum().item() + target.sum().item()
                scores.append(1.0 if total == 0 else 2 * inter / total)  # the bug: one Dice per batch
            dice = float(torch.tensor(scores).mean()) if scores else float("nan")
            return {"dice": dice, "dice_pooled": dice, "dice_pos": dice}

        return evaluate

    with _setattr(segmentation, "make_evaluate", make_evaluate):
        yield


@contextlib.contextmanager
def _boxes_shift(work: Path):
    from bench.models import detection

    real = detection._foreground

    def foreground(output: dict) -> dict:
        out = real(output)
        out["boxes"] = out["boxes"] + BOX_SHIFT  # the bug: every box moved by a fixed offset
        return out

    with _setattr(detection, "_foreground", foreground):
        yield


def _output(cfg: RunConfig) -> str:
    return cfg.spec.output(cfg.protocol)


MUTATIONS = (
    Mutation("random-weights", "the init's weights replaced by random ones after loading",
             lambda c: c.init != "random", _random_weights),
    Mutation("rle-no-transpose", "SIIM RLE masks decoded without the transpose",
             lambda c: c.task == "siim", _rle_no_transpose),
    Mutation("bn-frozen", "BatchNorm statistics updating under frozen / linear",
             lambda c: c.protocol in ("frozen", "linear"), _bn_frozen),
    Mutation("dice-batch", "Dice averaged per batch, evaluation loaders with drop_last",
             lambda c: _output(c) == "mask", _dice_batch),
    Mutation("boxes-shift", f"predicted boxes shifted by {BOX_SHIFT:g} px",
             lambda c: _output(c) == "boxes", _boxes_shift),
)  # fmt: skip
MUTATION_NAMES = tuple(m.name for m in MUTATIONS)


# ---------------------------------------------------------------- running


def clean_configs(runs_dir: Path) -> list[RunConfig]:
    """The RunConfig of every complete record under ``runs_dir`` (its exact settings)."""
    records, _ = read_runs(runs_dir)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    out = []
    for r in records:
        if r.get("status") != "complete" or not isinstance(r.get("config"), dict):
            continue
        cfg = {k: v for k, v in r["config"].items() if k in fields}
        out.append(RunConfig(**cfg))
    if not out:
        raise ValueError(f"no complete run record under {runs_dir}: run the sweep first")
    return out


def record_threads(runs_dir: Path) -> int | None:
    """The torch thread count the clean runs recorded (``env.threads``, the most common one):
    the mutated runs use it too, so that nothing but the mutation differs (CPU results
    change in the last bits with the thread count)."""
    from collections import Counter

    records, _ = read_runs(runs_dir)
    counts = Counter((r.get("env") or {}).get("threads") for r in records if r.get("status") == "complete")
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else None


def _restricted(baseline: dict, configs: list[RunConfig]) -> dict:
    keep = {(c.task, c.init_label, c.protocol, float(c.fraction)) for c in configs}
    cells = {k: v for k, v in baseline["cells"].items()
             if (v["task"], v["init"], v["protocol"], float(v["fraction"])) in keep}  # fmt: skip
    return {**baseline, "cells": cells}


def run_seconds(runs_dir: Path) -> dict[str, float]:
    """Wall seconds of each complete clean run, by run id (what orders the cells, cheapest first)."""
    records, _ = read_runs(runs_dir)
    out = {}
    for r in records:
        wall = (r.get("timing") or {}).get("wall_s")
        if r.get("status") == "complete" and isinstance(wall, (int, float)):
            out[str(r.get("run_id"))] = float(wall)
    return out


def _cell_of(cfg: RunConfig) -> tuple:
    return (cfg.task, cfg.init_label, cfg.protocol, float(cfg.fraction))


def _cell_name(cell: tuple) -> str:
    task, init, protocol, fraction = cell
    return f"{task} {init} {protocol} {fraction * 100:g}%"


def _cell_dir(cell: tuple) -> str:
    task, init, protocol, fraction = cell
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{task}-{init}-{protocol}-f{fraction:g}")


def plan_cells(todo: list[RunConfig], seconds: dict[str, float]) -> list[tuple[tuple, list[RunConfig]]]:
    """The cells of ``todo`` with their runs, cheapest first (the clean runs' wall time;
    ties in cell order), so that a mutation is usually caught before its costly cells run."""
    cells: dict[tuple, list[RunConfig]] = {}
    for cfg in todo:
        cells.setdefault(_cell_of(cfg), []).append(cfg)
    order = list(cells)
    return sorted(cells.items(), key=lambda kv: (sum(seconds.get(c.run_id, 0.0) for c in kv[1]), order.index(kv[0])))


def _execute_mutated(m: Mutation, cfg: RunConfig, work: str, out: str) -> str | None:
    """One run of ``cfg`` into ``out`` with ``m``'s component broken (its files in ``work``):
    None, or why the run failed."""
    from bench.engine.runner import RunFailed, execute

    with m.patch(Path(work)):
        try:
            execute(dataclasses.replace(cfg, out=out, progress=False))
        except RunFailed as e:  # a failed run is a missing seed: a failure too
            return f"{cfg.run_id}: {e}"
    return None


def _execute_mutated_by_name(name: str, cfg: RunConfig, work: str, out: str) -> str | None:
    """:func:`_execute_mutated` in a worker process (a Mutation's ``applies`` does not pickle)."""
    (m,) = [m for m in MUTATIONS if m.name == name]
    return _execute_mutated(m, cfg, work, out)


class _Inline:
    """A one-worker executor that runs each call in this process when submitted."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(e)
        return fut


@dataclass
class _State:
    """One mutation's progress: its cells in order, what ran, what was compared."""

    m: Mutation
    cells: list  # [(cell, [cfg, ...]), ...] cheapest first
    submitted: set = dataclasses.field(default_factory=set)  # run ids
    done: dict = dataclasses.field(default_factory=dict)  # cell -> runs finished
    failed: list = dataclasses.field(default_factory=list)
    rows: list = dataclasses.field(default_factory=list)
    compared: list = dataclasses.field(default_factory=list)  # cells compared, in order
    caught_on: str | None = None
    decided: bool = False

    def active(self) -> int | None:
        """Index of the first cell not compared yet (None when all are)."""
        for i, (cell, _) in enumerate(self.cells):
            if cell not in self.compared:
                return i
        return None


def _next_run(states: list[_State]):
    """The next (state, cell, cfg) to start: a run of a mutation's first undecided cell
    first, in mutation order; only when there is none, a run of a later cell (ahead of
    its turn: wasted if the mutation is caught before)."""
    for ahead in (False, True):
        for st in states:
            if st.decided:
                continue
            first = st.active()
            for i, (cell, cfgs) in enumerate(st.cells):
                if i < first or (i > first and not ahead):
                    continue
                for cfg in cfgs:
                    if cfg.run_id not in st.submitted:
                        return st, cell, cfg
    return None


def self_test(runs_dir: str | Path, *, mutations: tuple[str, ...] | None = None, alpha: float = ALPHA,
              threads: int | None = None, workers: int = 1, all_cells: bool = False, log=print) -> dict:  # fmt: skip
    """Run every mutation (or ``mutations``) against the clean runs of ``runs_dir``, with
    ``threads`` torch threads a run (default: the clean runs' own, :func:`record_threads`),
    ``workers`` runs at a time (worker processes when more than 1).

    Each mutation's cells run cheapest first; a cell is compared as soon as its runs are
    done, and the mutation is caught on the first cell whose comparison fails: its
    remaining cells are not run, unless ``all_cells`` (the full table).
    """
    import torch

    from bench.experiments.executors import local_pool, stop_workers

    runs_dir = Path(runs_dir)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    chosen = [m for m in MUTATIONS if mutations is None or m.name in mutations]
    unknown = sorted(set(mutations or ()) - set(MUTATION_NAMES))
    if unknown:
        raise ValueError(f"unknown mutation(s) {unknown}; known: {', '.join(MUTATION_NAMES)}")
    configs = clean_configs(runs_dir)
    baseline = build_baseline(runs_dir)
    seconds = run_seconds(runs_dir)
    root = runs_dir.parent / f"{runs_dir.name}-selftest"
    threads = threads or record_threads(runs_dir)
    states, results = [], {}
    for m in chosen:
        todo = [c for c in configs if m.applies(c)]
        if not todo:
            results[m.name] = {"mutation": m.name, "breaks": m.breaks, "runs": 0, "rows": [], "caught": None,
                               "note": "no cell of these runs uses the component"}  # fmt: skip
            continue
        shutil.rmtree(root / m.name, ignore_errors=True)
        states.append(_State(m, plan_cells(todo, seconds)))
    total = sum(len(cfgs) for st in states for _, cfgs in st.cells)
    log(f"self-test: {len(states)} mutation(s), up to {total} run(s), {workers} at a time"
        + ("" if all_cells else "; each mutation stops at the first cell that catches it (--all-cells: every cell)"))

    def out_of(st: _State, cell: tuple) -> Path:
        return root / st.m.name / "runs" / _cell_dir(cell)

    def finish_cell(st: _State, cell: tuple, cfgs: list[RunConfig]) -> None:
        out = out_of(st, cell)
        result = compare(out, _restricted(baseline, cfgs), alpha=alpha, two_sided=True) if out.is_dir() else None
        rows = [] if result is None else [
            {"cell": r["cell"], "verdict": r["verdict"], "delta": r["delta"], "p": r.get("p"),
             "p_up": r.get("p_up"), "test": r.get("test")} for r in result["rows"]]  # fmt: skip
        caught = True if result is None else bool(result["failed"])
        st.rows += rows
        st.compared.append(cell)
        verdicts = ", ".join(f"{r['verdict']}" + ("" if r["delta"] is None else f" (Δ {r['delta']:+.3f})")
                             for r in rows) or "no run completed"  # fmt: skip
        log(f"self-test {st.m.name}: {_cell_name(cell)}: {verdicts} -> {'caught' if caught else 'not caught'}")
        if caught and st.caught_on is None:
            st.caught_on = _cell_name(cell)
            if not all_cells:
                st.decided = True
        if st.active() is None:
            st.decided = True

    before = torch.get_num_threads()
    if threads and workers == 1:
        torch.set_num_threads(threads)
    pool_cm = local_pool(workers, threads) if workers > 1 else contextlib.nullcontext(_Inline())
    inflight: dict = {}
    finished = 0
    try:
        with pool_cm as pool:
            while True:
                while len(inflight) < workers and (nxt := _next_run(states)):
                    st, cell, cfg = nxt
                    st.submitted.add(cfg.run_id)
                    args = (cfg, str(root / st.m.name), str(out_of(st, cell)))
                    fut = (pool.submit(_execute_mutated, st.m, *args) if workers == 1
                           else pool.submit(_execute_mutated_by_name, st.m.name, *args))  # fmt: skip
                    inflight[fut] = (st, cell, cfg)
                if not inflight:
                    break
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    st, cell, cfg = inflight.pop(fut)
                    finished += 1
                    if st.decided:  # started ahead of its turn, the mutation caught meanwhile
                        continue
                    why = fut.result()
                    if why:
                        st.failed.append(why)
                    st.done[cell] = st.done.get(cell, 0) + 1
                    log(f"[{finished}] self-test {st.m.name}: {cfg.run_id} " + ("FAILED" if why else "done"))
                    # compare, in order, every cell whose runs are all done
                    while not st.decided and (i := st.active()) is not None:
                        c, cfgs = st.cells[i]
                        if st.done.get(c, 0) < len(cfgs):
                            break
                        finish_cell(st, c, cfgs)
                if inflight and all(st.decided for st in states):
                    # only runs started ahead of their turn are left, for mutations already caught
                    log(f"self-test: every mutation decided; stopping {len(inflight)} run(s) started ahead")
                    if workers > 1:
                        stop_workers(pool)
                    inflight.clear()
    finally:
        torch.set_num_threads(before)
    for st in states:
        ran = [cell for cell, _ in st.cells if cell in st.compared]
        skipped = [_cell_name(cell) for cell, _ in st.cells if cell not in st.compared]
        results[st.m.name] = {
            "mutation": st.m.name, "breaks": st.m.breaks,
            "runs": sum(len(cfgs) for cell, cfgs in st.cells if cell in ran),
            "rows": st.rows, "caught": st.caught_on is not None, "caught_on": st.caught_on,
            "failed_runs": st.failed, "cells_not_run": skipped,
        }  # fmt: skip
    ordered = [results[m.name] for m in chosen]
    ok = all(r["caught"] is not False for r in ordered) and any(r["caught"] for r in ordered)
    return {"runs_dir": str(runs_dir), "alpha": alpha, "mutations": ordered, "ok": ok, "all_cells": all_cells}


def format_self_test(result: dict) -> str:
    how = ("every cell it touches" if result.get("all_cells")
           else "the cells it touches, cheapest first, until one catches it")  # fmt: skip
    lines = [f"## cxrbench compare --self-test: {'✅ every mutation caught' if result['ok'] else '❌ NOT caught'}",
             "", f"Clean runs `{result['runs_dir']}`; each mutation re-runs {how}, each cell compared with "
             f"the clean runs two-sided at alpha {result['alpha']:g} (caught = `bench compare` exits 1).",
             "", "| mutation | what it breaks | runs | cells: verdict (Δ, p) | caught |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in result["mutations"]:
        cells = "; ".join(
            f"{row['cell']}: {row['verdict']}"
            + ("" if row["delta"] is None else f" (Δ {row['delta']:+.3f}"
               + ("" if row["p"] is None else f", p↓ {row['p']:.3g}, p↑ {row['p_up']:.3g}") + ")")
            for row in r["rows"]
        ) or r.get("note", "")  # fmt: skip
        if r.get("failed_runs"):
            cells += f"; {len(r['failed_runs'])} run(s) failed"
        if r.get("cells_not_run"):
            cells += f"; not run (caught before): {', '.join(r['cells_not_run'])}"
        mark = "–" if r["caught"] is None else ("✅ yes" if r["caught"] else "❌ no")
        lines.append(f"| {r['mutation']} | {r['breaks']} | {r['runs']} | {cells} | {mark} |")
    return "\n".join(lines) + "\n"


def run_self_test(runs_dir, *, mutations=None, alpha: float = ALPHA, summary=None, workers: int | None = None,
                  all_cells: bool = False) -> int:  # fmt: skip
    """``bench compare RUNS --self-test``: print (and write to ``summary``) the table; 0 when
    every mutation is caught. ``workers`` defaults to the cores over the clean runs' threads."""
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) // (record_threads(Path(runs_dir)) or 1))
    result = self_test(runs_dir, mutations=mutations, alpha=alpha, workers=workers, all_cells=all_cells,
                       log=lambda s: print(s, file=sys.stderr))  # fmt: skip
    text = format_self_test(result)
    print(text, end="")
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(text)
    return 0 if result["ok"] else 1
