"""`bench evaluate`: score a submission file (the task's own format) at original resolution."""

from __future__ import annotations

import json

HELP = "score a Kaggle-format submission file"


def add_parser(sub, epilog: str) -> None:
    from bench.cli.run import add_task_option_flags
    from bench.engine.evaluate import SPLIT_CHOICES
    from tasks import all_tasks

    formats = "; ".join(f"{t.name}: {t.submission.id_column},{t.submission.value_column}" for t in all_tasks())
    p = sub.add_parser("evaluate", help=HELP,
                       description=f"Score a submission ({formats}) against the labels at the original "
                                   "image resolution, with the metrics of the benchmark. Prints JSON.")  # fmt: skip
    p.add_argument("--task", choices=[t.name for t in all_tasks()], required=True)
    p.add_argument("--data-root", required=True, help="dataset root in the task's official layout")
    p.add_argument("--predictions", required=True, help="submission CSV")
    p.add_argument("--split", choices=SPLIT_CHOICES, default="test",
                   help="which images to score (default: %(default)s, the benchmark's test split)")
    p.add_argument("--split-file", help="external split file (as for `bench run`)")
    add_task_option_flags(p)
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=main)


def main(args) -> int:
    from bench.engine.evaluate import evaluate_submission
    from bench.util import write_json_atomic
    from tasks import get_task

    if args.json:
        from pathlib import Path

        from bench.util import writable_dir_problem

        problem = writable_dir_problem(Path(args.json).parent)
        if problem:
            raise ValueError(f"--json {args.json}: {problem}")
    options = {o.name: getattr(args, o.name, None) for o in get_task(args.task).options}
    result = evaluate_submission(args.task, args.data_root, args.predictions, split=args.split,
                                 split_file=args.split_file, **options)  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    return 0
