"""`bench sweep`: run a YAML grid of runs, resumably, on a local, Ray or Slurm executor."""

from __future__ import annotations

import json
import sys

HELP = "run a YAML grid of runs (resumable; local, ray or slurm)"


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser("sweep", help=HELP,
                       description="Expand a sweep file (grid over tasks, inits, protocols, fractions, "
                                   "seeds; optional LoVT lr search) and run what is not done yet. "
                                   "Schema: configs/example.yaml and `bench.experiments.sweep`. Complete "
                                   "records are skipped; interrupted runs (record left running, or failed by "
                                   "Ctrl-C) run again. Exit 1 if a run failed.")  # fmt: skip
    p.add_argument("config", help="sweep file (YAML)")
    p.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                   help="where runs execute (default: %(default)s); parameters from the file's executor: section")
    p.add_argument("--workers", type=int, help="local: worker processes (one per GPU when there are GPUs)")
    p.add_argument("--runs-per-gpu", type=int, metavar="N",
                   help="local: N runs share each GPU at once (N x visible GPUs workers; GPUs only)")
    p.add_argument("--address", help="ray: 'auto' (running cluster) or host:port (default: start a local Ray)")
    p.add_argument("--slurm-local", action="store_true",
                   help="slurm: run the jobs with submitit's local executor (no cluster needed)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default: see bench.experiments.executors)")
    p.add_argument("--retry-failed", action="store_true", help="run failed and nan_loss runs again")
    p.add_argument("--skip-running", action="store_true",
                   help="leave runs whose record says running alone (live on another machine); "
                        "by default they are taken as interrupted and run again")
    p.add_argument("--dry-run", action="store_true", help="print the plan (JSON lines) and run nothing")
    p.set_defaults(func=main)


def _check_out_folders(sweep) -> None:
    """The sweep's out folder (and its lr-search folder) writable before the lock or any run."""
    from bench.util import writable_dir_problem

    folders = [("out", sweep.out)]
    if sweep.lr_search is not None:
        folders.append(("lr_search.out", sweep.lr_search.out))
    for key, folder in folders:
        problem = writable_dir_problem(folder)
        if problem:
            raise ValueError(f"{sweep.source}: {key} {folder}: {problem}")


def main(args) -> int:
    from bench.experiments.plan import plan
    from bench.experiments.run import run_sweep
    from bench.experiments.sweep import load_sweep

    sweep = load_sweep(args.config)
    flags = {"workers": ("local", args.workers), "runs_per_gpu": ("local", args.runs_per_gpu),
             "address": ("ray", args.address), "cluster": ("slurm", "local" if args.slurm_local else None)}  # fmt: skip
    for key, (kind, value) in flags.items():
        if value is not None and kind != args.executor:
            flag = "--slurm-local" if key == "cluster" else f"--{key.replace('_', '-')}"
            raise ValueError(f"{flag} is for --executor {kind}, not {args.executor}")
    if args.workers is not None and args.runs_per_gpu is not None:
        raise ValueError("--workers and --runs-per-gpu: give one of them (--runs-per-gpu N runs N x GPUs workers)")
    local = sweep.executor.get("local") or {}
    for flag, other in (("workers", "runs_per_gpu"), ("runs_per_gpu", "workers")):
        if getattr(args, flag) is not None and args.executor == "local":
            local.pop(other, None)  # a flag replaces the file's other way of counting workers
    if args.dry_run:
        rows = plan(sweep, retry_failed=args.retry_failed, skip_running=args.skip_running)
        for row in rows:
            print(json.dumps(row))
        todo = sum(r["action"] != "skip" for r in rows)
        print(f"{sweep.name}: {len(rows)} runs, {todo} to run or waiting", file=sys.stderr)
        return 0
    _check_out_folders(sweep)
    options = {k: v for k, (kind, v) in flags.items() if kind == args.executor}
    options["threads"] = args.threads
    result = run_sweep(sweep, args.executor, retry_failed=args.retry_failed,
                       skip_running=args.skip_running, options=options)  # fmt: skip
    print(json.dumps(result.summary(sweep)))
    for o in result.failed:
        print(f"bench sweep: {o.stage} {o.line()}", file=sys.stderr)
    return 1 if result.failed else 0
