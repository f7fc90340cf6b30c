"""``measure(settings)``: every figure of ``bench perf``, measured in one process.

Order: the run's setup (data, initialization, cache, split) as ``bench run`` makes
it; the 1024x1024 DICOM folder and the timed cache builds (1 worker, then 2 workers, in rounds,
each into a fresh cache); the data paths side by side
(``loader_ips``, ``dicom_ips``); the training paths of ``--protocol`` side by side
(``compute_ips``, ``pipeline_ips``, ``dicom_step_ips``, ``plain_fp32_ips``); the reuse limit of each frozen
protocol; evaluation; pretraining per method. Progress goes to stderr.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.models.device import plain_fp32
from bench.perf import dicom
from bench.perf.evaluation import measure_eval
from bench.perf.meter import forever, python_alloc_peak_mb, side_by_side, take, to_device
from bench.perf.pretraining import measure_pretraining
from bench.perf.report import assemble
from bench.perf.reuse import measure_reuse
from bench.perf.settings import REUSE_PROTOCOLS, PerfSettings
from bench.perf.setup import Setup
from bench.perf.training import compute_path, data_path, first_batch, plain_path, train_path


def _log(s: PerfSettings, text: str) -> None:
    if s.progress:
        print(f"perf: {text}", file=sys.stderr, flush=True)


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _one_batch_alloc(loader, device) -> float:
    """Python/NumPy allocation peak of one batch of ``loader`` (tracemalloc; untimed)."""
    return python_alloc_peak_mb(lambda: to_device(next(take(forever(loader), 1)), device))


def measure(s: PerfSettings) -> dict:
    """Measure everything for ``s`` and return the result (see :func:`bench.perf.report.assemble`).

    ``s.threads`` sets torch's CPU threads for the measurement; the previous count is
    restored afterwards.
    """
    threads = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    try:
        return _measure(s)
    finally:
        torch.set_num_threads(threads)


def _measure(s: PerfSettings) -> dict:
    t_start, load_start = time.perf_counter(), _loadavg()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    setup = Setup(s)
    device = setup.device
    main = setup.trainer()
    _log(s, f"{s.task} {s.protocol} ({main.output}) {s.arch} {s.image_size}px batch {s.batch_size} on {device}; "
            f"{len(setup.train_idx)} training images")  # fmt: skip

    def train_loader():
        return main.loader(setup.prepared, setup.train_idx, train=True)

    with tempfile.TemporaryDirectory(prefix="cxrbench-perf-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        _log(
            s,
            f"{s.dicoms} synthetic {dicom.SOURCE_SIZE}x{dicom.SOURCE_SIZE} DICOMs; timed cache builds (1 and 2 workers)",
        )
        droot = dicom.dicom_root(s.task, s.dicoms, progress=s.progress)
        options = setup.cfg.spec.option_values(setup.cfg)
        builds = dicom.timed_cache_builds(s.task, droot, s.image_size, tmp, options,
                                          rounds=min(dicom.CACHE_BUILD_ROUNDS, s.resolved_rounds))  # fmt: skip
        cache_build = dicom.cache_build_summary(builds, s.image_size)
        dprep = dicom.dicom_prepared(builds[0][0].prepared)
        didx = dicom.cycled_indices(len(builds[0][0].prepared), s.batch_size)

        def dicom_loader():
            return main.loader(dprep, didx, train=True)

        _log(s, "data paths: cache loader vs per-sample DICOM")
        data = side_by_side([data_path("loader", train_loader(), device), data_path("dicom", dicom_loader(), device)],
                            device=device, steps=s.steps, warmup=s.warmup, rounds=s.resolved_rounds, progress=s.progress,
                            label="data")  # fmt: skip
        alloc = {
            "loader": _one_batch_alloc(train_loader(), device),
            "dicom": _one_batch_alloc(dicom_loader(), device),
        }

        _log(s, f"training paths ({s.protocol}): compute limit, pipeline, DICOM-fed step")
        batch = first_batch(train_loader(), device)
        with plain_fp32():  # the same model and step in float32, NCHW: what the fast path gains
            plain = setup.trainer()
        train = side_by_side([compute_path("compute", main, batch), train_path("pipeline", main, train_loader()),
                              train_path("dicom_step", main, dicom_loader()), plain_path("plain_fp32", plain, batch)],
                             device=device, steps=s.steps, warmup=s.warmup, rounds=s.resolved_rounds, progress=s.progress,
                             label="train")  # fmt: skip

        reuse = {}
        for protocol in REUSE_PROTOCOLS:
            _log(s, f"reuse limit ({protocol})")
            reuse[protocol] = measure_reuse(setup, protocol)

        _log(s, "evaluation")
        evaluation = measure_eval(setup, main)
        pretrain = measure_pretraining(s, device, tmp)

    return assemble(
        s, setup, data=data, train=train, alloc=alloc, reuse=reuse, evaluation=evaluation, pretrain=pretrain,
        cache_build=cache_build, dicom_root=droot, timing={"started": started, "wall_s": time.perf_counter() - t_start,
                                                           "load_avg_start": load_start, "load_avg_end": _loadavg()},
    )  # fmt: skip
