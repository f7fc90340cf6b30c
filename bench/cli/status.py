"""`bench status`: what is done, running, failed and missing in a runs folder."""

from __future__ import annotations

HELP = "what is done, running, failed and missing in a runs folder"


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser("status", help=HELP,
                       description="Counts and a table per status of the run records under RUNS; with "
                                   "--config, also the runs of that sweep without a record.")  # fmt: skip
    p.add_argument("runs", nargs="?", help="folder of run records (default: the sweep's out)")
    p.add_argument("--config", help="sweep file: list its runs that have no record yet")
    p.set_defaults(func=main)


def main(args) -> int:
    from bench.experiments.status import status_text

    print(status_text(args.runs, args.config))
    return 0
