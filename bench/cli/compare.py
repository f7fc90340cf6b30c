"""`bench compare`: the regression check of run records against a committed baseline."""

from __future__ import annotations

HELP = "regression check of run records against a baseline (exit 1 on regression)"


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser("compare", help=HELP,
                       description="Compare each cell (task, init, protocol, fraction, test primary metric; "
                                   "per-seed values) with a baseline file. A cell regresses when a one-sided test "
                                   "(Welch's t-test; exact permutation test below 5 seeds a side) rejects "
                                   "'new >= baseline' at --alpha, or when its mean drops by more than "
                                   "--tolerance; fewer than 3 seeds a side is 'no power' (fails unless "
                                   "--allow-low-power); a baseline cell missing from the runs fails too. Prints a markdown summary (also "
                                   "appended to $GITHUB_STEP_SUMMARY when set); exit 1 on any failure.")  # fmt: skip
    p.add_argument("runs", help="folder of run records (searched recursively)")
    p.add_argument("--baseline", required=True, help="baseline JSON file (e.g. baselines/ci.json)")
    p.add_argument("--tolerance", type=float,
                   help="allowed absolute drop of a cell's mean, on top of the test (default: none; for an "
                        "older baseline without per-seed values, its 95%% CI half-width)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="level of the one-sided test (default 0.05)")
    p.add_argument("--allow-low-power", action="store_true",
                   help="report cells with fewer than 3 seeds a side ('no power') without failing")
    p.add_argument("--update-baseline", action="store_true",
                   help="write the baseline from RUNS instead of comparing (atomic) and exit 0")
    p.add_argument("--summary", metavar="OUT.md", help="also write the markdown summary to this file")
    p.add_argument("--config-name",
                   help="config name stored in a new baseline (default: from the records, else the RUNS folder name)")
    p.set_defaults(func=main)


def main(args) -> int:
    from bench.experiments.compare import run_compare

    return run_compare(args.runs, args.baseline, tolerance=args.tolerance, update=args.update_baseline,
                       summary=args.summary, config=args.config_name, alpha=args.alpha,
                       allow_low_power=args.allow_low_power)  # fmt: skip
