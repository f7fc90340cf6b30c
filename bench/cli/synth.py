"""`bench synth`: a synthetic dataset in a task's official layout, or a pretraining corpus."""

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
                                   "the real data. Marked with SYNTHETIC_DATA.txt. --task pretrain writes a "
                                   "pretraining corpus instead: synthetic patients with several studies, "
                                   "frontal and lateral views and reports that describe the images, in the "
                                   "MIMIC-CXR-JPG layout (for `bench pretrain`).")  # fmt: skip
    p.add_argument("--task", choices=(*task_names(), "pretrain"), required=True,
                   help=task_help() + ", or pretrain (a corpus for bench pretrain)")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--n", type=int,
                   help="number of images; for pretrain, of patients (default: 200, pretrain 40)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--size", type=int, help="image side in pixels (default: 1024 as Kaggle; pretrain 256)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=main)


def main(args) -> int:
    from bench.util import writable_dir_problem
    from tasks import get_task

    problem = writable_dir_problem(args.out)
    if problem:
        raise ValueError(f"--out {args.out}: {problem}")

    if args.task == "pretrain":
        from corpora import synth

        summary = synth(Path(args.out), n_patients=args.n or 40, seed=args.seed, size=args.size or 256,
                        progress=not args.quiet)  # fmt: skip
    else:
        summary = get_task(args.task).synth(Path(args.out), n=args.n or 200, seed=args.seed, size=args.size or 1024,
                                            progress=not args.quiet)  # fmt: skip
    print(json.dumps(summary, default=str, indent=2))
    return 0

