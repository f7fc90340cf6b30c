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
    p.add_argument("--baseline", help="baseline JSON file (e.g. baselines/ci.json); required unless --self-test")
    p.add_argument("--tolerance", type=float,
                   help="allowed absolute drop of a cell's mean, on top of the test (default: none; for an "
                        "older baseline without per-seed values, its 95%% CI half-width)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="level of the one-sided test (default 0.05)")
    p.add_argument("--two-sided", action="store_true",
                   help="also fail on a significant rise ('changed'), each side tested at alpha/2: for a "
                        "harness's own CI, where numbers must not move without a baseline refresh")
    p.add_argument("--allow-low-power", action="store_true",
                   help="report cells with fewer than 3 seeds a side ('no power') without failing")
    p.add_argument("--update-baseline", action="store_true",
                   help="write the baseline from RUNS instead of comparing (atomic) and exit 0")
    p.add_argument("--self-test", action="store_true",
                   help="proof by mutation: re-run the cells of RUNS (a finished sweep) with one component broken "
                        "at a time (random init weights, RLE without transpose, BatchNorm updating under frozen, "
                        "Dice per batch with drop_last, shifted boxes) and compare each with RUNS, two-sided; "
                        "exit 0 when every mutation makes the comparison fail. Writes RUNS-selftest/")
    p.add_argument("--mutations", help="--self-test: comma-separated subset of the mutations (default: all)")
    p.add_argument("--workers", type=int,
                   help="--self-test: runs at a time, each in its own process (default: the cores over the "
                        "clean runs' torch threads, e.g. 2 on 2 cores for one-thread runs)")
    p.add_argument("--all-cells", action="store_true",
                   help="--self-test: re-run every cell a mutation touches (the full table); by default the "
                        "cells run cheapest first and a mutation stops at the first cell that catches it")
    p.add_argument("--summary", metavar="OUT.md", help="also write the markdown summary to this file")
    p.add_argument("--config-name",
                   help="config name stored in a new baseline (default: from the records, else the RUNS folder name)")
    p.set_defaults(func=main)


def main(args) -> int:
    from bench.experiments.compare import run_compare

    if args.self_test:
        from bench.experiments.selftest import run_self_test

        chosen = tuple(m.strip() for m in args.mutations.split(",") if m.strip()) if args.mutations else None
        return run_self_test(args.runs, mutations=chosen, alpha=args.alpha, summary=args.summary,
                             workers=args.workers, all_cells=args.all_cells)  # fmt: skip
    for flag, given in (("--mutations", args.mutations), ("--workers", args.workers is not None),
                        ("--all-cells", args.all_cells)):  # fmt: skip
        if given:
            raise ValueError(f"{flag} goes with --self-test")
    if not args.baseline:
        raise ValueError("--baseline FILE is required (unless --self-test)")
    return run_compare(args.runs, args.baseline, tolerance=args.tolerance, update=args.update_baseline,
                       summary=args.summary, config=args.config_name, alpha=args.alpha,
                       allow_low_power=args.allow_low_power, two_sided=args.two_sided)  # fmt: skip
