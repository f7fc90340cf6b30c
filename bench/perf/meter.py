"""Timing and memory of measured paths: :class:`Meter`, :class:`Path`, :func:`side_by_side`.

A *path* is something that processes images in steps (a training step on device
tensors, the loader, ...): ``run(n)`` does ``n`` steps and returns how many images went
through. :func:`side_by_side` warms every path up (untimed), then times them
interleaved in rounds, so the paths of one ratio see the same machine load. On CUDA
the device is synchronized around every timed chunk.

Memory per path: the peak resident set size of the process while the path ran (Linux:
``VmHWM`` after resetting it through ``/proc/self/clear_refs`` before each chunk; it
includes everything the process already holds, so compare paths of one run), else the
process's lifetime peak (``resource.getrusage``); on CUDA ``max_memory_allocated`` after
``reset_peak_memory_stats``. tracemalloc is used only in untimed passes
(:func:`python_alloc_peak_mb`), as it slows every allocation down.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

_CLEAR_REFS, _STATUS = "/proc/self/clear_refs", "/proc/self/status"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _reset_host_peak() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def host_peak_mb() -> tuple[float, str]:
    """(peak resident set size in MiB, how it was measured)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / 2**20 if sys.platform == "darwin" else peak / 1024), "ru_maxrss"


def python_alloc_peak_mb(fn: Callable[[], object]) -> float:
    """Peak of the memory Python and NumPy allocate while ``fn()`` runs (tracemalloc; untimed)."""
    import tracemalloc

    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was:
            tracemalloc.stop()
    return max(peak - base, 0) / 2**20


class Meter:
    """Images, seconds and peak memory of one path, summed over its timed chunks."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.images, self.steps, self.seconds = 0, 0, 0.0
        self.host_peak_mb: float | None = None
        self.host_method: str | None = None
        self.device_peak_mb: float | None = None

    @contextlib.contextmanager
    def chunk(self) -> Iterator[None]:
        resettable = _reset_host_peak()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.seconds += time.perf_counter() - t0
        peak, method = host_peak_mb()
        self.host_method = method if resettable else "ru_maxrss (process lifetime)"
        self.host_peak_mb = max(self.host_peak_mb or 0.0, peak)
        if self.device.type == "cuda":
            dev = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.device_peak_mb = max(self.device_peak_mb or 0.0, dev)

    @property
    def ips(self) -> float:
        """Images per second over all timed chunks."""
        if self.seconds <= 0 or self.images <= 0:
            raise RuntimeError(f"perf path {self.name!r} measured no images")
        return self.images / self.seconds

    def memory(self) -> dict:
        return {"host_peak_mb": self.host_peak_mb, "host_peak_method": self.host_method,
                "device_peak_mb": self.device_peak_mb}  # fmt: skip

    def summary(self) -> dict:
        return {
            "ips": self.ips,
            "images": self.images,
            "steps": self.steps,
            "seconds": self.seconds,
        }


@dataclass
class Path:
    """A measured path: ``run(n)`` does n steps and returns the number of images processed."""

    name: str
    run: Callable[[int], int]


def split_steps(steps: int, rounds: int) -> list[int]:
    """``steps`` as ``rounds`` near-equal positive chunks (12, 3 -> [4, 4, 4])."""
    base, extra = divmod(steps, rounds)
    return [base + (i < extra) for i in range(rounds)]


def side_by_side(paths: list[Path], *, device: torch.device, steps: int, warmup: int, rounds: int,
                 progress: bool = True, label: str = "") -> dict[str, Meter]:  # fmt: skip
    """Warm each path up for ``warmup`` steps, then time all of them interleaved in ``rounds``."""
    meters = {p.name: Meter(p.name, device) for p in paths}
    for p in paths:
        if warmup:
            p.run(warmup)
    for r, k in enumerate(split_steps(steps, rounds)):
        for p in paths:
            m = meters[p.name]
            with m.chunk():
                m.images += p.run(k)
            m.steps += k
        if progress and ((r + 1) % max(1, rounds // 3) == 0 or r + 1 == rounds):
            done = ", ".join(
                f"{n} {m.images / max(m.seconds, 1e-9):.1f} img/s" for n, m in meters.items()
            )
            print(f"  perf {label} round {r + 1}/{rounds}: {done}", file=sys.stderr, flush=True)
    return meters


class Counted:
    """An iterable of batches that counts the images it hands out (``len(batch[0])``)."""

    def __init__(self, batches: Iterable):
        self.batches, self.images = batches, 0

    def __iter__(self):
        for batch in self.batches:
            self.images += len(batch[0])
            yield batch


def forever(loader: Iterable) -> Iterator:
    """The loader's batches epoch after epoch (each epoch reshuffled as in training)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("perf: the loader yields no batch")


def take(it: Iterator, n: int) -> Iterator:
    """The next ``n`` items of ``it``."""
    for _ in range(n):
        yield next(it)


def to_device(batch, device: torch.device):
    """A batch (tensors, lists, tuples, dicts of them) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(b, device) for b in batch)
    return batch
