"""The cache build's worker processes: how many, and a function mapped over items in them.

Owns :data:`WORKERS_ENV` (``$CXRBENCH_CACHE_WORKERS``), :func:`requested_workers` (the
count asked for: the ``workers`` keyword, else the environment variable, else automatic;
checked, with a one-line error), :func:`plan` (the workers and chunk size a build of n
items uses) and :func:`map_items` (a function over items, in item order, in-process
for one worker or in a :class:`concurrent.futures.ProcessPoolExecutor`).

In the pool, each task is a chunk of consecutive items; the worker returns one outcome
per item (the function's value, or an expected error such as a corrupt DICOM) with the
warnings the item raised, and the parent re-issues those warnings at their original
location, item by item, before it hands the item on: what the caller sees is what the
in-process loop shows, in the same order. Any other error stops the build at that item
in the parent, with the worker's traceback as its cause. Workers ignore SIGINT (the
parent handles Ctrl-C), and the parent terminates them on any error or interrupt; on
Linux they are forked, so the function needs no pickling, and they die with the parent
(``PR_SET_PDEATHSIG``). At most two chunks per worker are in flight, so results never
pile up in memory.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import sys
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

WORKERS_ENV = "CXRBENCH_CACHE_WORKERS"
AUTO_MIN_ITEMS_PER_WORKER = 8  # automatic count: a build of fewer than 16 items runs in-process
MAX_CHUNK = 8  # items per task: load balance at the end and progress vs per-task overhead
CHUNKS_PER_WORKER = 8  # a build is cut into at least this many chunks per worker
IN_FLIGHT_PER_WORKER = 2


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def requested_workers(workers: int | None = None) -> int | None:
    """The worker count asked for: ``workers`` if given, else ``$CXRBENCH_CACHE_WORKERS``,
    else None (automatic: see :func:`plan`). A ``ValueError`` of one line for anything
    but a whole number >= 1."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(
                f"workers must be a whole number >= 1 (1: no worker processes), got {workers!r}"
            )
        return workers
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"{WORKERS_ENV}={raw!r}: the cache build's worker count must be a whole number >= 1 "
            "(1: decode in-process, no worker processes); unset it for one per usable core"
        )
    return value


def plan(workers: int | None, n: int) -> tuple[int, int]:
    """(worker processes, items per chunk) for n items; 1 worker means in-process.

    workers=None: one per usable core, but no more than one per
    ``AUTO_MIN_ITEMS_PER_WORKER`` items (starting processes costs more than it saves on a
    handful of images). An explicit count is used as given, up to one worker per chunk.
    A daemonic process (a ``multiprocessing.Pool`` worker) cannot start processes: it
    builds in-process.
    """
    import multiprocessing

    w = requested_workers(workers)
    if w is None:
        w = min(usable_cores(), max(1, n // AUTO_MIN_ITEMS_PER_WORKER))
    if multiprocessing.current_process().daemon:
        w = 1
    w = max(1, min(w, n))
    if w == 1:
        return 1, max(1, n)
    chunk = max(1, min(MAX_CHUNK, math.ceil(n / (w * CHUNKS_PER_WORKER))))
    return min(w, math.ceil(n / chunk)), chunk


def map_items(
    fn: Callable[[dict], object],
    items: list[dict],
    *,
    workers: int,
    chunk: int,
    expected: tuple[type[BaseException], ...],
) -> Iterator[tuple[object | None, BaseException | None]]:
    """(fn(item), None) or (None, error) for each item in order; error is one of ``expected``.

    Any other error from fn is raised at its item. With workers > 1, fn runs in worker
    processes (see the module docstring); use the iterator in a ``with
    contextlib.closing(...)`` block so that an error in the caller stops the workers at once.
    """
    if workers <= 1:
        for item in items:
            try:
                value = fn(item)
            except expected as e:
                yield None, e
                continue
            yield value, None
        return
    yield from _pooled(fn, items, workers, chunk, expected)


# --------------------------------------------------------------------------- parent side


def _pooled(fn, items, workers, chunk, expected):
    bounds = [(i, min(i + chunk, len(items))) for i in range(0, len(items), chunk)]
    executor = ProcessPoolExecutor(
        workers, mp_context=_context(), initializer=_init_worker,
        initargs=(fn, items, expected, os.getpid()),
    )  # fmt: skip
    pending: deque = deque()
    todo = iter(bounds)
    done = False
    try:
        for b in todo:
            pending.append(executor.submit(_run_chunk, *b))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                break
        while pending:
            try:
                outcomes = pending.popleft().result()
            except BrokenProcessPool as e:
                raise RuntimeError(
                    f"a worker process of the preprocessing cache build died ({e}): out of "
                    "memory, or (without fork) a load_item that cannot be pickled; set "
                    f"{WORKERS_ENV} to fewer workers, or to 1 to decode in-process"
                ) from e
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(executor.submit(_run_chunk, *nxt))
            for kind, payload, caught in outcomes:
                _reissue(caught)
                if kind == "value":
                    yield payload, None
                    continue
                exc, remote = payload
                exc.__cause__ = _RemoteTraceback(remote)
                if kind == "error":
                    raise exc
                yield None, exc
        done = True
    finally:
        _stop(executor, pending, graceful=done)


def _context():
    """fork on Linux (workers inherit fn and the items: nothing pickled, monkeypatches
    included); the platform's default elsewhere (fn and items must pickle)."""
    import multiprocessing

    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _stop(executor: ProcessPoolExecutor, pending: deque, *, graceful: bool) -> None:
    """Shut the pool down; unless every chunk finished, terminate the workers first."""
    if not graceful:
        for f in pending:
            f.cancel()
        terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
        if terminate is not None:
            terminate()
        else:
            for p in list((getattr(executor, "_processes", None) or {}).values()):
                if p.is_alive():
                    p.terminate()
    executor.shutdown(wait=True, cancel_futures=True)


class _RemoteTraceback(Exception):
    """The worker's traceback of an error re-raised in the parent (as concurrent.futures does)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


_MODULE_OF_FILE: dict[str, object] = {}


def _reissue(caught: list[tuple]) -> None:
    """Issue the warnings a worker recorded, at their own file and line, under the parent's
    filters and with the module's registry, as if raised here (``default`` shows each once)."""
    for message, category, filename, lineno in caught:
        module = _module_of(filename)
        warnings.warn_explicit(
            message, category, filename, lineno,
            module=getattr(module, "__name__", None),
            registry=module.__dict__.setdefault("__warningregistry__", {}) if module else None,
        )  # fmt: skip


def _module_of(filename: str):
    if filename not in _MODULE_OF_FILE:
        found = None
        for module in list(sys.modules.values()):
            f = getattr(module, "__file__", None)
            if f and os.path.abspath(f) == os.path.abspath(filename):
                found = module
                break
        _MODULE_OF_FILE[filename] = found
    return _MODULE_OF_FILE[filename]


# --------------------------------------------------------------------------- worker side

_JOB: tuple | None = None  # (fn, items, expected) of this worker process


def _init_worker(fn, items, expected, parent_pid: int) -> None:
    global _JOB
    _JOB = (fn, items, expected)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this worker when the parent dies, however it dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)


def _run_chunk(start: int, stop: int) -> list[tuple]:
    """[(kind, payload, warnings)] for items[start:stop], stopping after an unexpected error.

    kind "value": payload is fn(item); "expected": (error, traceback text) of one of the
    expected errors; "error": the same of any other exception, the chunk's last outcome.
    """
    assert _JOB is not None, "worker not initialised"
    fn, items, expected = _JOB
    out = []
    for item in items[start:stop]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the parent's filters decide
            try:
                outcome = ("value", fn(item))
            except expected as e:
                outcome = ("expected", (_portable(e), _traceback_text(e)))
            except BaseException as e:  # KeyboardInterrupt from fn too: re-raised in the parent
                outcome = ("error", (_portable(e), _traceback_text(e)))
        out.append((*outcome, [_warning_record(w) for w in caught]))
        if outcome[0] == "error":
            break
    return out


def _traceback_text(e: BaseException) -> str:
    return '\n"""\n' + "".join(traceback.format_exception(type(e), e, e.__traceback__)) + '"""'


def _portable(e: BaseException) -> BaseException:
    """e if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _warning_record(w: warnings.WarningMessage) -> tuple:
    message, category = w.message, w.category
    try:
        pickle.loads(pickle.dumps(message))
    except Exception:
        message = str(message)
        try:
            pickle.loads(pickle.dumps(category))
        except Exception:
            category = UserWarning
    return (message, category, w.filename, w.lineno)
