"""`bench perf`: throughput of one configuration against its compute limit (issue 12, design §11)."""

from __future__ import annotations

import argparse
import sys

HELP = "measure throughput against the compute limit (table in reports/perf.md)"

_DESCRIPTION = """\
Measure, in one process so the ratios hold on a busy machine, the training
throughput of one configuration against its compute limit:

  compute_ips     the real training step on a batch already on the device (the limit)
  pipeline_ips    the real path (cache, dataset, loader, normalization, loss step);
                  efficiency = pipeline_ips / compute_ips
  loader_ips      the data path alone; dicom_ips: reading and resizing a 1024x1024
                  DICOM per sample (GLoRIA, MGCA); cache_speedup = loader_ips / dicom_ips
  dicom_step_ips  the training step fed by that DICOM path
  reuse_speedup   linear / frozen: a training epoch without / with encoder-feature
                  reuse (features computed once); reuse_limit: the head-only step on
                  precomputed features vs the full step

plus evaluation and cache-build throughput, pretraining images/s per method and the
peak host / device memory of each path. Writes the table to --out (markdown) and,
with --json, every figure and the settings. Progress goes to stderr. Data: the task's
built-in synthetic set unless --data-root.
"""


def add_parser(sub, epilog: str) -> None:
    from bench.cli.run import add_task_option_flags, task_help
    from bench.engine.config import ARCHS, DETECTORS, PROTOCOLS
    from bench.pretrain.methods import METHOD_NAMES
    from tasks import task_names

    p = sub.add_parser("perf", help=HELP, description=_DESCRIPTION, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    g = p.add_argument_group("what to measure")
    g.add_argument("--task", choices=task_names(), required=True, help=task_help())
    g.add_argument("--arch", choices=ARCHS, default="resnet18", help="(default: %(default)s)")
    g.add_argument("--protocol", choices=PROTOCOLS, default="finetune",
                   help="protocol of compute_ips / pipeline_ips (reuse is measured for linear and frozen "
                        "whatever it is) (default: %(default)s)")  # fmt: skip
    g.add_argument("--image-size", type=int, default=64, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    g.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)"
    )
    g.add_argument(
        "--init",
        default="random",
        help="initialization (throughput does not depend on it) (default: %(default)s)",
    )
    g.add_argument(
        "--detector", choices=DETECTORS, default="retinanet", help="(default: %(default)s)"
    )
    g.add_argument(
        "--data-root",
        help="dataset root in the task's official layout (default: built-in synthetic)",
    )
    g.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader workers (default: %(default)s)"
    )
    add_task_option_flags(g)
    g = p.add_argument_group("how long")
    g.add_argument(
        "--steps", type=int, default=12, help="timed steps per path (default: %(default)s)"
    )
    g.add_argument(
        "--warmup", type=int, default=2, help="untimed steps before them (default: %(default)s)"
    )
    g.add_argument("--rounds", type=int,
                   help="the paths of one ratio run interleaved, --steps split over this many rounds "
                        "(default: --steps, one step per path per round)")  # fmt: skip
    g.add_argument(
        "--dicoms",
        type=int,
        default=256,  # PerfSettings.dicoms (bench.perf imports torch: not at parse time)
        help="1024x1024 synthetic DICOMs (about 1 MB each, generated once under "
        "$CXRBENCH_CACHE/perf/) the per-sample DICOM path cycles through and the timed cache "
        "builds decode; fewer make the 2-vs-1-worker build ratio a measure of process start-up "
        "(default: %(default)s)",
    )
    g.add_argument("--methods", default="all",
                   help="pretraining methods to time, comma-separated: all, none, or some of "
                        f"{','.join(METHOD_NAMES)} (default: %(default)s)")  # fmt: skip
    g.add_argument(
        "--pretrain-steps",
        type=int,
        help="timed steps per pretraining method (default: half of --steps)",
    )
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--threads", type=int,
                   help="torch CPU threads while measuring (default: torch's own); 1 avoids OpenMP stalls "
                        "on a machine busy with other jobs")  # fmt: skip
    g = p.add_argument_group("output")
    g.add_argument("--out", default="reports/perf.md", help="markdown table (default: %(default)s)")
    g.add_argument("--json", help="also write every figure and the settings to this JSON file")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=main)


def _methods(text: str) -> tuple[str, ...]:
    from bench.pretrain.methods import METHOD_NAMES

    text = text.strip()
    if text == "all":
        return tuple(METHOD_NAMES)
    if text in ("none", ""):
        return ()
    return tuple(m.strip() for m in text.split(",") if m.strip())


def settings_from_args(args):
    from bench.perf import PerfSettings
    from tasks import get_task

    options = {o.name: getattr(args, o.name, None) for o in get_task(args.task).options}
    return PerfSettings(task=args.task, arch=args.arch, protocol=args.protocol, image_size=args.image_size,
                        batch_size=args.batch_size, device=args.device, steps=args.steps, warmup=args.warmup,
                        rounds=args.rounds, init=args.init, detector=args.detector, data_root=args.data_root,
                        num_workers=args.num_workers, dicoms=args.dicoms, methods=_methods(args.methods),
                        pretrain_steps=args.pretrain_steps, seed=args.seed, threads=args.threads,
                        options={k: v for k, v in options.items() if v is not None},
                        progress=not args.quiet)  # fmt: skip


def _check_output(flag: str, path: str | None) -> None:
    from pathlib import Path

    from bench.util import writable_dir_problem

    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name")
    problem = writable_dir_problem(p.parent if str(p.parent) else ".")
    if problem:
        raise ValueError(f"{flag} {path}: {problem}")


def main(args) -> int:
    from bench.perf import measure
    from bench.perf.report import markdown
    from bench.util import write_json_atomic, write_text_atomic

    s = settings_from_args(args)
    _check_output("--out", args.out)
    _check_output("--json", args.json)
    result = measure(s)
    text = markdown(result)
    write_text_atomic(args.out, text)
    if args.json:
        write_json_atomic(args.json, result)
    print(text)
    print(f"perf: wrote {args.out}" + (f" and {args.json}" if args.json else ""), file=sys.stderr)
    return 0
