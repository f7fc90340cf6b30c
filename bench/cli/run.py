"""`bench run`: train and test one (task, init, protocol, fraction, seed), write its record."""

from __future__ import annotations

import argparse
import json
import sys

from bench.engine.config import (
    ARCHS,
    DEFAULT_LR,
    DETECTORS,
    DEVICE_CACHE_CHOICES,
    PROTOCOLS,
    RunConfig,
)

HELP = "train and test one (task, init, protocol, fraction, seed)"


def task_help() -> str:
    from tasks import all_tasks

    return ", ".join(f"{t.name} ({t.title})" for t in all_tasks())


def add_task_option_flags(g: argparse._ArgumentGroup) -> None:
    """Each registered task's own settings (e.g. --rle-format), once per flag."""
    from tasks import all_tasks

    seen = set()
    for task in all_tasks():
        for opt in task.options:
            if opt.flag not in seen:
                seen.add(opt.flag)
                g.add_argument(opt.flag, dest=opt.name, choices=opt.choices, help=f"[{task.name}] {opt.help}")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from tasks import task_names

    g = p.add_argument_group("what to run")
    g.add_argument("--task", choices=task_names(), required=True, help=task_help())
    g.add_argument("--init", required=True,
                   help="initialization: a catalogue name (`bench weights list`) or a path to a checkpoint file")
    g.add_argument("--protocol", choices=PROTOCOLS, default="finetune",
                   help="linear: frozen encoder + 1x1 conv on C5; frozen: frozen encoder + trained "
                        "decoder/heads; finetune: everything trains (default: %(default)s)")
    g.add_argument("--fraction", type=float, default=1.0,
                   help="label fraction of the training split, nested (0.01 is inside 0.1) (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed for init, decoder and data order (default: %(default)s)")
    g.add_argument("--data-root", help="dataset root in the task's official layout")
    g.add_argument("--out", default="runs", help="folder for run records (default: %(default)s)")

    g = p.add_argument_group("model and training")
    g.add_argument("--arch", choices=ARCHS, default="resnet50", help="encoder architecture (default: %(default)s)")
    g.add_argument("--detector", choices=DETECTORS, default="retinanet",
                   help="detector for the protocols a task trains with boxes (default: %(default)s)")
    g.add_argument("--image-size", type=int, default=224, help="square input size, multiple of 32 (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=20, help="maximum epochs (default: %(default)s)")
    g.add_argument("--patience", type=int, default=5,
                   help="stop after this many epochs without a better validation score (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    g.add_argument("--lr", type=float,
                   help="Adam learning rate (default by protocol: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    g.add_argument("--weight-decay", type=float, default=0.0, help="(default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    g.add_argument("--num-workers", type=int,
                   help="DataLoader workers (default: 0 on CPU; on CUDA min(4, cores), none with the device cache)")
    g.add_argument("--no-feature-reuse", dest="feature_reuse", action="store_false",
                   help="linear/frozen: run the frozen encoder on every batch of every epoch instead of "
                        "computing its outputs once (same metrics, slower; the record says which)")

    g = p.add_argument_group("GPU path (same batches and run id; the record says which path ran)")
    g.add_argument("--device-cache", choices=DEVICE_CACHE_CHOICES, default="auto",
                   help="auto: on CUDA, copy the uint8 image cache (and masks) to the GPU once when it fits in "
                        "half the free GPU memory and batch there, without a DataLoader; off: always the "
                        "DataLoader (pinned memory on CUDA) (default: %(default)s)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model's forward (a detector's backbone) before training")

    g = p.add_argument_group("initialization")
    g.add_argument("--checkpoint", help="checkpoint file for an init that takes a user checkpoint "
                                        "(simclr, convirt, clip, gloria, ...) or to replace a download")
    g.add_argument("--prefix", help="key prefix to strip from the checkpoint (overrides auto-detection)")
    g.add_argument("--init-name", help="name of the init in records and reports (default: the name or file stem)")
    g.add_argument("--allow-partial", action="store_true",
                   help="load a checkpoint that covers only part of the encoder (recorded in the run record)")
    g.add_argument("--allow-leakage", action="store_true",
                   help="evaluate an init on a task whose images it was pretrained on (flagged everywhere)")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle a checkpoint that torch.load(weights_only=True) refuses; only for files you trust")
    g.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="input normalization mean in [0, 1] units (one value, or one per channel); "
                        "overrides the init's own (a checkpoint path defaults to ImageNet's)")
    g.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="input normalization std, with --mean (e.g. GLoRIA-style: --mean 0.5 --std 0.5)")

    g = p.add_argument_group("data")
    g.add_argument("--split-file", help="external split: CSV with id and split columns, or a folder "
                                        "with train.csv/val.csv/test.csv (LoVT layout)")
    add_task_option_flags(g)
    g.add_argument("--strict", action="store_true", help="fail on a corrupt DICOM or a label without an image")
    g.add_argument("--save-predictions", action="store_true",
                   help="also write the test predictions as a submission CSV (the task's format) next to the record")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A RunConfig from the parsed flags: every flag that names a RunConfig field sets it."""
    import dataclasses

    from tasks import get_task

    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"progress", "extra"}
    values = {k: v for k, v in vars(args).items() if k in fields}
    # a task option that is not a RunConfig field (a plugin task's own) goes to `extra`
    extra = {o.name: getattr(args, o.name, None) for o in get_task(args.task).options
             if o.name not in fields and getattr(args, o.name, None) is not None}  # fmt: skip
    return RunConfig(**values, extra=extra, progress=not args.quiet)


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser("run", help=HELP, epilog=epilog,
                       description="Train and test one configuration and write its run record "
                                   "(<out>/<run_id>.json).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_run_arguments(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from bench.engine.records import record_path
    from bench.engine.runner import execute

    cfg = config_from_args(args)
    print(f"run {cfg.run_id}", file=sys.stderr)
    record = execute(cfg)
    test = record["metrics"]["test"]
    metric = record["primary_metric"]
    print(json.dumps({"run_id": record["run_id"], "status": record["status"], metric: test.get(metric),
                      "record": str(record_path(cfg.out, cfg.run_id))}))  # fmt: skip
    return 0
