"""`bench demo`: the built-in end-to-end demo on synthetic data."""

from __future__ import annotations

from pathlib import Path

HELP = "the built-in end-to-end demo on synthetic data (< 10 min on 2 CPUs)"


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser("demo", help=HELP,
                       description="Write a synthetic downstream dataset and a separate synthetic "
                                   "image-report corpus, pretrain a small encoder with each method of "
                                   "`bench pretrain` (supervised, simclr, moco, convirt, clip) on the corpus, "
                                   "probe each init's frozen features, evaluate every init (and `random`) "
                                   "under the three protocols at two label fractions and two seeds, write a "
                                   "report with a pretraining section. Settings: bench/experiments/demo.yaml.")  # fmt: skip
    p.add_argument("--out", default="runs/demo", help="folder for data, checkpoint and records (default: %(default)s)")
    p.add_argument("--report", default="reports/demo.md", help="report to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="an even smaller demo (for tests)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=main)


def main(args) -> int:
    from bench.experiments.demo import run_demo

    run_demo(out=Path(args.out), report=Path(args.report), quick=args.quick, progress=not args.quiet)
    return 0
