"""Owns: ``bench compare RUNS --self-test``: proof by mutation that the regression check catches bugs.

``RUNS`` is a finished sweep (e.g. ``bench sweep configs/ci.yaml`` -> ``runs/ci``): its
complete records are the clean baseline. For each mutation below, the self-test breaks
one component *in this process* (a patched function, as a bug would leave it), re-runs
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

The result is a table (mutation, cells, verdict per cell, caught) in markdown; the exit
status of ``bench compare --self-test`` is 0 when every mutation is caught, else 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
from collections.abc import Callable
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


def self_test(runs_dir: str | Path, *, mutations: tuple[str, ...] | None = None, alpha: float = ALPHA,
              threads: int | None = None, log=print) -> dict:  # fmt: skip
    """Run every mutation (or ``mutations``) against the clean runs of ``runs_dir``, with
    ``threads`` torch threads (default: the clean runs' own, :func:`record_threads`)."""
    import torch

    from bench.engine.runner import RunFailed, execute

    runs_dir = Path(runs_dir)
    chosen = [m for m in MUTATIONS if mutations is None or m.name in mutations]
    unknown = sorted(set(mutations or ()) - set(MUTATION_NAMES))
    if unknown:
        raise ValueError(f"unknown mutation(s) {unknown}; known: {', '.join(MUTATION_NAMES)}")
    configs = clean_configs(runs_dir)
    baseline = build_baseline(runs_dir)
    root = runs_dir.parent / f"{runs_dir.name}-selftest"
    results = []
    before = torch.get_num_threads()
    threads = threads or record_threads(runs_dir)
    if threads:
        torch.set_num_threads(threads)
    try:
        for m in chosen:
            todo = [c for c in configs if m.applies(c)]
            work = root / m.name
            if not todo:
                results.append({"mutation": m.name, "breaks": m.breaks, "runs": 0, "rows": [],
                                "caught": None, "note": "no cell of these runs uses the component"})  # fmt: skip
                continue
            shutil.rmtree(work, ignore_errors=True)
            out = work / "runs"
            log(f"self-test {m.name}: {len(todo)} run(s) with {m.breaks}")
            failed = []
            with m.patch(work):
                for cfg in todo:
                    try:
                        execute(dataclasses.replace(cfg, out=str(out), progress=False))
                    except RunFailed as e:  # a failed run is a missing seed: a failure too
                        failed.append(f"{cfg.run_id}: {e}")
            result = compare(out, _restricted(baseline, todo), alpha=alpha, two_sided=True) if out.is_dir() \
                else None  # fmt: skip
            rows = [] if result is None else [
                {"cell": r["cell"], "verdict": r["verdict"], "delta": r["delta"], "p": r.get("p"),
                 "p_up": r.get("p_up"), "test": r.get("test")} for r in result["rows"]]  # fmt: skip
            caught = True if result is None else bool(result["failed"])
            results.append({"mutation": m.name, "breaks": m.breaks, "runs": len(todo), "rows": rows,
                            "caught": caught, "failed_runs": failed})  # fmt: skip
    finally:
        torch.set_num_threads(before)
    ok = all(r["caught"] is not False for r in results) and any(r["caught"] for r in results)
    return {"runs_dir": str(runs_dir), "alpha": alpha, "mutations": results, "ok": ok}


def format_self_test(result: dict) -> str:
    lines = [f"## cxrbench compare --self-test: {'✅ every mutation caught' if result['ok'] else '❌ NOT caught'}",
             "", f"Clean runs `{result['runs_dir']}`; each mutation re-runs the cells it touches and is "
             f"compared with them two-sided at alpha {result['alpha']:g} (caught = `bench compare` exits 1).",
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
        mark = "–" if r["caught"] is None else ("✅ yes" if r["caught"] else "❌ no")
        lines.append(f"| {r['mutation']} | {r['breaks']} | {r['runs']} | {cells} | {mark} |")
    return "\n".join(lines) + "\n"


def run_self_test(runs_dir, *, mutations=None, alpha: float = ALPHA, summary=None) -> int:
    result = self_test(runs_dir, mutations=mutations, alpha=alpha, log=lambda s: print(s, file=sys.stderr))
    text = format_self_test(result)
    print(text, end="")
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(text)
    return 0 if result["ok"] else 1
