"""`bench synth`: a synthetic dataset in a task's official layout."""

from __future__ import annotations

import json
from pathlib import Path

HELP = "write a synthetic dataset in a task's official layout"


def add_parser(sub, epilog: str) -> None:
    from bench.cli.run import task_help
    from tasks import task_names

    p = sub.add_parser("synth", help=HELP,
                       description="Write synthetic chest-X-ray-like images and labels in the exact "
                                   "official layout of a task, so every real-data code path can run without "
                                   "the real data. Marked with SYNTHETIC_DATA.txt.")  # fmt: skip
    p.add_argument("--task", choices=task_names(), required=True, help=task_help())
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--n", type=int, default=200, help="number of images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (Kaggle: 1024)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=main)


def main(args) -> int:
    from tasks import get_task

    summary = get_task(args.task).synth(Path(args.out), n=args.n, seed=args.seed, size=args.size,
                                        progress=not args.quiet)  # fmt: skip
    print(json.dumps(summary, default=str, indent=2))
    return 0
