"""The `bench` command line: one module per verb, errors mapped to exit codes here.

Verbs (each module has ``HELP``, ``add_parser(sub, epilog)`` and ``main(args)``, a thin
layer over a library function): ``run``, ``synth``, ``evaluate``, ``report``,
``sweep``, ``status``, ``compare``, ``weights``, ``pretrain``, ``demo``, ``perf``. Known errors become one
clear line: exit code 2 for bad input (before any work), 1 for a run that started
and failed (its record says why), 130 for Ctrl-C. ``CXRBENCH_DEBUG=1`` shows the
traceback too.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.cli import (
    compare,
    demo,
    evaluate,
    perf,
    pretrain,
    report,
    run,
    status,
    sweep,
    synth,
    weights,
)

VERBS = (run, synth, evaluate, report, compare, weights, pretrain, demo, sweep, status, perf)

EPILOG = """\
Data: --data-root, else $CXRBENCH_DATA/<task>, else a built-in synthetic dataset
(loudly flagged). Caches: $CXRBENCH_CACHE (preprocessed data), $CXRBENCH_WEIGHTS
(downloaded checkpoints). More tasks: $CXRBENCH_TASKS (modules to import). See
README.md for the real dataset layouts.
"""


def build_parser() -> argparse.ArgumentParser:
    from tasks import all_tasks

    titles = " and ".join(t.title for t in all_tasks())
    parser = argparse.ArgumentParser(
        prog="bench",
        description=f"cxrbench: evaluate chest X-ray encoder initializations on {titles} under fixed protocols.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(sub, EPILOG)
    return parser


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: one clear line and exit code 2."""
    from bench.engine.weights import LeakageError
    from bench.models.protocols import LoadMismatch
    from tasks.errors import DataError
    from weights_registry import WeightsError

    # PermissionError: a folder the command must write into cannot be written
    return (ValueError, FileNotFoundError, PermissionError, DataError, WeightsError, LeakageError,
            LoadMismatch)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from bench.engine.runner import RunFailed
    from bench.pretrain.train import PretrainFailed

    try:
        parser = build_parser()
    except ValueError as e:  # a task plugin that cannot be imported ($CXRBENCH_TASKS)
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (RunFailed, PretrainFailed) as e:
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
