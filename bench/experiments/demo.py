"""`bench demo`: the whole benchmark in miniature, on synthetic data, in minutes on a laptop.

Settings: ``bench/experiments/demo.yaml`` (the task, sizes, epochs; ``quick`` for
``--quick``). The demo

1. writes a synthetic downstream dataset in the task's official layout (``bench synth``);
2. pretrains a small ``supervised`` ResNet on a *separate* synthetic set (another seed:
   other patients, other images; checked) with image-level labels, through
   :mod:`bench.pretrain.supervised`, saved as a plain torchvision checkpoint, so the
   demo compares two real initializations through the real checkpoint loader;
3. runs it and ``random`` under linear / frozen / finetune at two label fractions and
   two seeds (finished runs are skipped when the demo is run again);
4. writes the report (``reports/demo.md`` by default) with its figures.
"""

from __future__ import annotations

import itertools
import sys
import time
from importlib import resources
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from bench.engine.config import PROTOCOLS, RunConfig
from bench.engine.dataroot import announce_synthetic
from bench.engine.records import read_record, record_path


def demo_settings(quick: bool = False) -> dict:
    """The demo's settings from ``demo.yaml`` (``quick`` applied when asked)."""
    raw = yaml.safe_load(resources.files("bench.experiments").joinpath("demo.yaml").read_text())
    overrides = raw.pop("quick", {})
    return {**raw, **overrides} if quick else raw


def demo_configs(out: Path, data_root: Path, checkpoint: Path, s: dict) -> list[RunConfig]:
    inits = [("random", None), (str(checkpoint), "supervised-synth")]
    return [
        RunConfig(task=s["task"], init=init, init_name=name, protocol=protocol, fraction=fraction,
                  seed=seed, data_root=str(data_root), out=str(out / "records"), arch=s["arch"],
                  image_size=s["image_size"], epochs=s["epochs"], patience=s["patience"],
                  batch_size=s["batch_size"], lr=s["lr"], device="cpu", progress=False)  # fmt: skip
        for (init, name), protocol, fraction, seed in itertools.product(
            inits, PROTOCOLS, s["fractions"], s["seeds"]
        )
    ]


def _datasets(out: Path, s: dict, progress: bool) -> tuple[Path, Path]:
    """The downstream set and the separate pretraining set, generated once; disjoint."""
    from bench.engine.dataroot import synth_once

    task = s["task"]
    data_root, pretrain_root = out / "data" / task, out / "data" / f"{task}-pretrain"
    for root, n, seed in ((data_root, s["n"], 0), (pretrain_root, s["pretrain_n"], s["pretrain_seed"])):
        synth_once(task, root, n=n, seed=seed, size=s["synth_size"], progress=progress)
    return data_root, pretrain_root


def _pretrain(task, pretrain_root: Path, data_ids: set, out_file: Path, s: dict, progress: bool) -> Path:
    from bench.pretrain.supervised import pretrain_supervised

    prepared = task.prepare(pretrain_root, s["image_size"], strict=False, progress=progress,
                            **task.option_values(None))  # fmt: skip
    shared = data_ids & set(prepared.ids)
    if shared:
        raise ValueError(f"{pretrain_root}: the pretraining set shares {len(shared)} image(s) "
                         f"with the evaluation set, e.g. {sorted(shared)[:3]}")  # fmt: skip
    return pretrain_supervised(prepared, out_file, arch=s["arch"], epochs=s["pretrain_epochs"],
                               progress=progress)  # fmt: skip


def run_demo(out: Path, report: Path, quick: bool = False, progress: bool = True) -> Path:
    from bench.engine.runner import RunFailed, execute
    from bench.reporting import write_report
    from tasks import get_task

    s = demo_settings(quick)
    task = get_task(s["task"])
    t0 = time.perf_counter()
    data_root, pretrain_root = _datasets(out, s, progress)
    announce_synthetic(out / "data")
    data_ids = set(task.prepare(data_root, s["image_size"], strict=False, progress=progress,
                                **task.option_values(None)).ids)  # fmt: skip
    checkpoint = _pretrain(task, pretrain_root, data_ids, out / f"supervised-synth-{s['arch']}.pth", s, progress)
    configs = demo_configs(out, data_root, checkpoint, s)
    failed = 0
    bar = tqdm(configs, desc="demo runs", disable=not progress, unit="run")
    for cfg in bar:
        bar.set_postfix_str(f"{cfg.init_label} {cfg.protocol} {cfg.fraction:g} s{cfg.seed}")
        path = record_path(cfg.out, cfg.run_id)
        if path.exists() and read_record(path).get("status") == "complete":
            continue
        try:
            execute(cfg)
        except RunFailed as e:
            failed += 1
            print(f"demo: {e}", file=sys.stderr)
    written = write_report(out / "records", report)
    print(f"demo: {len(configs) - failed}/{len(configs)} runs complete in "
          f"{time.perf_counter() - t0:.0f}s; report {written}", file=sys.stderr)  # fmt: skip
    return written
