"""The `bench` command line: run, synth, evaluate, report, sweep, status, compare, weights, demo.

Each sub-command is a thin layer over a library function; argument parsing and the
translation of known errors into one clear line (exit code 2 for bad input, 1 for a
run that failed) live here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.config import ARCHS, DEFAULT_LR, DETECTORS, PROTOCOLS, TASKS, RunConfig

EPILOG = """\
Data: --data-root, else $CXRBENCH_DATA/<task>, else a built-in synthetic dataset
(loudly flagged). Caches: $CXRBENCH_CACHE (preprocessed data), $CXRBENCH_WEIGHTS
(downloaded checkpoints). See README.md for the real Kaggle layouts.
"""


def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument("--task", choices=TASKS, required=True, help="siim (pneumothorax segmentation) or rsna (pneumonia detection)")
    g.add_argument(
        "--init",
        required=True,
        help="initialization: a catalogue name (`bench weights list`) or a path to a checkpoint file",
    )
    g.add_argument("--protocol", choices=PROTOCOLS, default="finetune",
                   help="linear: frozen encoder + 1x1 conv on C5; frozen: frozen encoder + trained "
                        "decoder/heads; finetune: everything trains (default: %(default)s)")
    g.add_argument("--fraction", type=float, default=1.0,
                   help="label fraction of the training split, nested (0.01 is inside 0.1) (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed for init, decoder and data order (default: %(default)s)")
    g.add_argument("--data-root", help="dataset root in the official Kaggle layout")
    g.add_argument("--out", default="runs", help="folder for run records (default: %(default)s)")

    g = p.add_argument_group("model and training")
    g.add_argument("--arch", choices=ARCHS, default="resnet50", help="encoder architecture (default: %(default)s)")
    g.add_argument("--detector", choices=DETECTORS, default="retinanet",
                   help="RSNA detector for frozen/finetune (default: %(default)s)")
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
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")

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
    g.add_argument("--rle-format", choices=("relative", "absolute"),
                   help="SIIM RLE: relative (stage 1 train-rle.csv, default) or absolute (some stage_2_train.csv copies)")
    g.add_argument("--strict", action="store_true", help="fail on a corrupt DICOM or a label without an image")
    g.add_argument("--save-predictions", action="store_true",
                   help="also write the test predictions as a Kaggle submission CSV next to the record")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        task=args.task,
        init=args.init,
        protocol=args.protocol,
        fraction=args.fraction,
        seed=args.seed,
        data_root=args.data_root,
        out=args.out,
        arch=args.arch,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        device=args.device,
        num_workers=args.num_workers,
        detector=args.detector,
        checkpoint=args.checkpoint,
        prefix=args.prefix,
        init_name=args.init_name,
        allow_partial=args.allow_partial,
        allow_leakage=args.allow_leakage,
        trust_checkpoint=args.trust_checkpoint,
        mean=args.mean,
        std=args.std,
        split_file=args.split_file,
        rle_format=args.rle_format,
        strict=args.strict,
        save_predictions=args.save_predictions,
        progress=not args.quiet,
    )


def cmd_run(args) -> int:
    from bench.records import record_path
    from bench.runner import execute

    cfg = config_from_args(args)
    print(f"run {cfg.run_id}", file=sys.stderr)
    record = execute(cfg)
    test = record["metrics"]["test"]
    metric = record["primary_metric"]
    print(json.dumps({"run_id": record["run_id"], "status": record["status"], metric: test.get(metric),
                      "record": str(record_path(cfg.out, cfg.run_id))}))
    return 0


def cmd_synth(args) -> int:
    from bench.dataroot import task_module

    summary = task_module(args.task).synth(
        Path(args.out), n=args.n, seed=args.seed, size=args.size, progress=not args.quiet
    )
    print(json.dumps(summary, default=str, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from bench.evaluate import evaluate_submission

    result = evaluate_submission(
        args.task,
        args.data_root,
        args.predictions,
        split=args.split,
        split_file=args.split_file,
        rle_format=args.rle_format,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        from bench.records import write_json_atomic

        write_json_atomic(args.json, result)
    return 0


def cmd_report(args) -> int:
    from bench.report import write_report

    extra = [Path(f).read_text() for f in args.extra_section or []]
    path = write_report(Path(args.runs), Path(args.out), extra_sections=extra,
                        figures=not args.no_figures)
    print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from bench.compare import run_compare

    return run_compare(args.runs, args.baseline, tolerance=args.tolerance,
                       update=args.update_baseline, summary=args.summary,
                       config=args.config_name)


def cmd_weights(args) -> int:
    import weights_registry as wr

    if args.weights_cmd == "show":
        print(wr.describe(args.name))
    else:
        print(wr.table())
    return 0


def cmd_demo(args) -> int:
    from bench.demo import run_demo

    run_demo(out=Path(args.out), report=Path(args.report), quick=args.quick, progress=not args.quiet)
    return 0


def cmd_sweep(args) -> int:
    from bench.sweep import load_sweep, plan, run_sweep

    sweep = load_sweep(args.config)
    flags = {"workers": ("local", args.workers), "address": ("ray", args.address),
             "cluster": ("slurm", "local" if args.slurm_local else None)}
    for key, (kind, value) in flags.items():
        if value is not None and kind != args.executor:
            flag = "--slurm-local" if key == "cluster" else f"--{key}"
            raise ValueError(f"{flag} is for --executor {kind}, not {args.executor}")
    if args.dry_run:
        rows = plan(sweep, retry_failed=args.retry_failed, skip_running=args.skip_running)
        for row in rows:
            print(json.dumps(row))
        todo = sum(r["action"] != "skip" for r in rows)
        print(f"{sweep.name}: {len(rows)} runs, {todo} to run or waiting", file=sys.stderr)
        return 0
    options = {k: v for k, (kind, v) in flags.items() if kind == args.executor}
    options["threads"] = args.threads
    result = run_sweep(sweep, args.executor, retry_failed=args.retry_failed,
                       skip_running=args.skip_running, options=options)
    print(json.dumps(result.summary(sweep)))
    for o in result.failed:
        print(f"bench sweep: {o.stage} {o.line()}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_status(args) -> int:
    from bench.status import status_text

    print(status_text(args.runs, args.config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="cxrbench: evaluate chest X-ray encoder initializations on SIIM-ACR "
        "pneumothorax segmentation and RSNA pneumonia detection under fixed protocols.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="train and test one (task, init, protocol, fraction, seed)",
                       description="Train and test one configuration and write its run record "
                                   "(<out>/<run_id>.json).", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("synth", help="write a synthetic dataset in the official Kaggle layout",
                       description="Write synthetic chest-X-ray-like DICOMs and labels in the exact "
                                   "Kaggle layout of a task, so every real-data code path can run without "
                                   "the real data. Marked with SYNTHETIC_DATA.txt.")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--n", type=int, default=200, help="number of images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (Kaggle: 1024)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("evaluate", help="score a Kaggle-format submission file",
                       description="Score a submission (SIIM: ImageId,EncodedPixels; RSNA: "
                                   "patientId,PredictionString) against the labels at the original image "
                                   "resolution, with the metrics of the benchmark. Prints JSON.")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--data-root", required=True, help="dataset root in the Kaggle layout")
    p.add_argument("--predictions", required=True, help="submission CSV")
    p.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                   help="which images to score (default: %(default)s, the benchmark's test split)")
    p.add_argument("--split-file", help="external split file (as for `bench run`)")
    p.add_argument("--rle-format", choices=("relative", "absolute"),
                   help="RLE convention of the labels and of the submission (default: relative)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="markdown report with tables and figures from run records")
    p.add_argument("--runs", required=True, help="folder of run records (searched recursively)")
    p.add_argument("--out", required=True,
                   help="markdown file to write; figures and <stem>_<task>.csv/.tex tables go beside it")
    p.add_argument("--extra-section", action="append", metavar="FILE.md",
                   help="markdown file appended as a section after the results (repeatable)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures (label efficiency, example predictions)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="regression check of run records against a baseline (exit 1 on regression)",
                       description="Compare each cell (task, init, protocol, fraction, test primary metric; "
                                   "mean over seeds) with a baseline file. A cell regresses when its mean drops "
                                   "by more than the baseline's 95% CI half-width (or --tolerance); a baseline "
                                   "cell missing from the runs fails too. Prints a markdown summary (also "
                                   "appended to $GITHUB_STEP_SUMMARY when set); exit 1 on any failure.")
    p.add_argument("runs", help="folder of run records (searched recursively)")
    p.add_argument("--baseline", required=True, help="baseline JSON file (e.g. baselines/ci.json)")
    p.add_argument("--tolerance", type=float,
                   help="allowed absolute drop of a cell's mean (default: the baseline's 95%% CI half-width)")
    p.add_argument("--update-baseline", action="store_true",
                   help="write the baseline from RUNS instead of comparing (atomic) and exit 0")
    p.add_argument("--summary", metavar="OUT.md", help="also write the markdown summary to this file")
    p.add_argument("--config-name",
                   help="config name stored in a new baseline (default: from the records, else the RUNS folder name)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("weights", help="the catalogue of initializations")
    wsub = p.add_subparsers(dest="weights_cmd", required=True, metavar="list|show")
    wsub.add_parser("list", help="table of known initializations")
    ws = wsub.add_parser("show", help="everything known about one initialization")
    ws.add_argument("name")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("demo", help="the built-in end-to-end demo on synthetic data (< 10 min on 2 CPUs)",
                       description="Write synthetic SIIM data, pretrain a small supervised encoder on a "
                                   "separate synthetic set, evaluate it and `random` under the three "
                                   "protocols at two label fractions and two seeds, write a report.")
    p.add_argument("--out", default="runs/demo", help="folder for data, checkpoint and records (default: %(default)s)")
    p.add_argument("--report", default="reports/demo.md", help="report to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="an even smaller demo (for tests)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="run a YAML grid of runs (resumable; local, ray or slurm)",
                       description="Expand a sweep file (grid over tasks, inits, protocols, fractions, "
                                   "seeds; optional LoVT lr search) and run what is not done yet. "
                                   "Schema: configs/example.yaml and `bench.sweep`. Complete records are "
                                   "skipped; interrupted runs (record left running, or failed by Ctrl-C) "
                                   "run again. Exit 1 if a run failed.")
    p.add_argument("config", help="sweep file (YAML)")
    p.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                   help="where runs execute (default: %(default)s); parameters from the file's executor: section")
    p.add_argument("--workers", type=int, help="local: worker processes (one per GPU when there are GPUs)")
    p.add_argument("--address", help="ray: 'auto' (running cluster) or host:port (default: start a local Ray)")
    p.add_argument("--slurm-local", action="store_true",
                   help="slurm: run the jobs with submitit's local executor (no cluster needed)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default: see bench.executors)")
    p.add_argument("--retry-failed", action="store_true", help="run failed and nan_loss runs again")
    p.add_argument("--skip-running", action="store_true",
                   help="leave runs whose record says running alone (live on another machine); "
                        "by default they are taken as interrupted and run again")
    p.add_argument("--dry-run", action="store_true", help="print the plan (JSON lines) and run nothing")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="what is done, running, failed and missing in a runs folder",
                       description="Counts and a table per status of the run records under RUNS; with "
                                   "--config, also the runs of that sweep without a record.")
    p.add_argument("runs", nargs="?", help="folder of run records (default: the sweep's out)")
    p.add_argument("--config", help="sweep file: list its runs that have no record yet")
    p.set_defaults(func=cmd_status)
    return parser


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: one clear line and exit code 2."""
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError]
    try:
        from tasks.common import DataError

        errors.append(DataError)
    except ImportError:
        pass
    try:
        from weights_registry import WeightsError

        errors.append(WeightsError)
    except ImportError:
        pass
    from bench.models import LoadMismatch
    from bench.runner import LeakageError

    errors += [LeakageError, LoadMismatch]
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from bench.runner import RunFailed

    try:
        return args.func(args)
    except RunFailed as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except _input_errors() as e:
        print(f"bench {args.cmd}: error: {e}", file=sys.stderr)
        if os.environ.get("CXRBENCH_DEBUG"):
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
