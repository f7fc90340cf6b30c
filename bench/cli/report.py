"""`bench report`: a markdown report with tables, exports and figures from run records."""

from __future__ import annotations

from pathlib import Path

HELP = "markdown report with tables and figures from run records"


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser("report", help=HELP)
    p.add_argument("--runs", required=True, help="folder of run records (searched recursively)")
    p.add_argument("--out", required=True,
                   help="markdown file to write; figures and <stem>_<task>.csv/.tex tables go beside it")
    p.add_argument("--extra-section", action="append", metavar="FILE.md",
                   help="markdown file appended as a section after the results (repeatable)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures (label efficiency, example predictions)")
    p.set_defaults(func=main)


def check_report_paths(runs: Path, out: Path) -> None:
    """``--runs`` must be an existing folder and ``--out``'s folder writable (exit 2 otherwise)."""
    from bench.util import writable_dir_problem

    if not runs.exists():
        raise FileNotFoundError(f"--runs {runs}: folder not found")
    if not runs.is_dir():
        raise ValueError(f"--runs {runs}: not a folder (give the folder that holds the run records)")
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the markdown file to write (e.g. {out / 'report.md'})")
    problem = writable_dir_problem(out.parent)
    if problem:
        raise ValueError(f"--out {out}: {problem}")


def main(args) -> int:
    from bench.reporting import write_report

    check_report_paths(Path(args.runs), Path(args.out))
    extra = [Path(f).read_text() for f in args.extra_section or []]
    path = write_report(Path(args.runs), Path(args.out), extra_sections=extra, figures=not args.no_figures)
    print(f"wrote {path}")
    return 0
