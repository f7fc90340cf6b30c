"""The per-sample DICOM path (GLoRIA, MGCA) and the cache build, on 1024x1024 DICOMs.

Owns :func:`dicom_root` (a few 1024x1024 synthetic DICOMs in the task's own layout,
written once by the task's ``synth`` under ``$CXRBENCH_CACHE/perf/``, with its mix of
plain, RLE, JPEG, MONOCHROME1 and rescaled files), :func:`timed_cache_build` (the
task's ``prepare`` of that folder into a fresh cache with a given number of worker
processes, ``$CXRBENCH_CACHE_WORKERS``: cache-build images/s),
:func:`timed_cache_builds` and :func:`cache_build_summary` (the builds with 1 and 2
workers side by side, in rounds) and
:func:`dicom_prepared` (that cache with its images replaced by
:class:`DicomImages`: every access reads the DICOM with
:func:`tasks.imageio.read_dicom` and resizes it with :func:`tasks.imageio.resize_image`,
so the task's own dataset, collate and loss step run unchanged on the per-sample path;
masks and boxes still come from the cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench.engine.dataroot import synth_once
from tasks import get_task
from tasks.imageio import read_dicom, resize_image

SOURCE_SIZE = 1024  # the real SIIM and RSNA DICOMs
CACHE_BUILD_WORKERS = (1, 2)  # the cache build is timed in-process and with 2 workers (issue 12)
CACHE_BUILD_ROUNDS = 3  # ... side by side, this many times (fewer with a smaller --rounds)


def dicom_root(task: str, n: int, *, progress: bool = True) -> Path:
    """``n`` synthetic 1024x1024 DICOMs of ``task`` in its official layout (made once)."""
    from tasks.cache import cache_root

    root = cache_root() / "perf" / f"{task}-dicom{SOURCE_SIZE}-n{n}-seed0"
    return synth_once(task, root, n=n, seed=0, size=SOURCE_SIZE, progress=progress)


@contextlib.contextmanager
def _environ(name: str, value: str):
    """``$name`` set to ``value`` for the duration, restored afterwards."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@dataclasses.dataclass
class CacheBuild:
    prepared: object  # tasks.cache.Prepared
    seconds: float
    workers: int = 1

    @property
    def ips(self) -> float:
        return len(self.prepared) / self.seconds

    def summary(self, image_size: int) -> dict:
        return {"ips": self.ips, "workers": self.workers, "n_images": len(self.prepared),
                "seconds": self.seconds, "source_size": SOURCE_SIZE, "image_size": image_size}  # fmt: skip


def timed_cache_build(
    task: str, root: Path, image_size: int, cache: Path, options: dict, *, workers: int = 1
) -> CacheBuild:
    """The task's ``prepare`` of ``root`` into the empty cache folder ``cache``, timed.

    ``workers`` goes through ``$CXRBENCH_CACHE_WORKERS`` (so any task that builds with
    :func:`tasks.cache.build_cache` follows it); the count reported is the one the
    manifest records as used.
    """
    from tasks.cache import WORKERS_ENV

    spec = get_task(task)
    with _environ("CXRBENCH_CACHE", str(cache)), _environ(WORKERS_ENV, str(int(workers))):
        t0 = time.perf_counter()
        prepared = spec.prepare(root, image_size, strict=False, progress=False, **options)
        seconds = time.perf_counter() - t0
    used = (prepared.manifest.get("build") or {}).get("workers", workers)
    return CacheBuild(prepared, seconds, workers=int(used))


def timed_cache_builds(task: str, root: Path, image_size: int, folder: Path, options: dict,
                       *, rounds: int) -> list[tuple[CacheBuild, ...]]:  # fmt: skip
    """``rounds`` rounds of one timed build per :data:`CACHE_BUILD_WORKERS` count, each
    into a fresh cache under ``folder``: the builds of one ratio side by side, round
    after round, so a burst of load on the machine moves one round, not the ratio."""
    return [tuple(timed_cache_build(task, root, image_size, folder / f"cache-r{r}-{w}w", options, workers=w)
                  for w in CACHE_BUILD_WORKERS) for r in range(max(1, rounds))]  # fmt: skip


def cache_build_summary(rounds: list[tuple[CacheBuild, CacheBuild]], image_size: int) -> dict:
    """The ``cache_build`` figures over the rounds of :func:`timed_cache_builds`: the
    1-worker build's (its median images/s and seconds), ``parallel`` (the 2-worker
    build's), ``ratio_2_vs_1`` (the median of the rounds' ips(2) / ips(1)) and
    ``round_ratios``."""
    from tasks.cache import usable_cores

    one, two = rounds[0]
    ratios = [b.ips / a.ips for a, b in rounds]
    summary = one.summary(image_size)
    summary.update(ips=statistics.median(a.ips for a, _ in rounds), seconds=statistics.median(a.seconds for a, _ in rounds))
    summary["parallel"] = {"ips": statistics.median(b.ips for _, b in rounds), "workers": two.workers,
                           "seconds": statistics.median(b.seconds for _, b in rounds)}  # fmt: skip
    summary["ratio_2_vs_1"] = statistics.median(ratios)
    summary["round_ratios"] = ratios
    summary["usable_cores"] = usable_cores()
    return summary


class DicomImages:
    """Array-like ``images``: item ``j`` is image ``j`` of a cache, read from its DICOM and resized."""

    def __init__(self, prepared):
        self.paths = [prepared.root / item["path"] for item in prepared.manifest["items"]]
        self.size = prepared.image_size
        self.shape = (len(self.paths), self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, j: int) -> np.ndarray:
        return resize_image(read_dicom(self.paths[int(j)]), self.size)


def dicom_prepared(prepared):
    """``prepared`` whose images are read from the DICOMs on every access (:class:`DicomImages`)."""
    return dataclasses.replace(prepared, images=DicomImages(prepared))


def cycled_indices(n: int, batch_size: int) -> list[int]:
    """The ``n`` images repeated so that one epoch holds at least one full batch."""
    return list(range(n)) * max(1, math.ceil(batch_size / n))
