"""Owns: the sweep lock: one ``bench sweep`` per ``out`` folder on one machine.

:func:`sweep_lock` holds an exclusive ``flock`` on ``<out>/.sweep.lock`` (holding the
pid of its process) while a sweep runs, and refuses a second sweep with a
:class:`~bench.experiments.sweep.SweepError`; :func:`lock_holder` tells ``bench status``
who holds it. Without ``fcntl`` (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bench.experiments.sweep import SweepError

LOCK_NAME = ".sweep.lock"


def _fcntl():
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    return fcntl


@contextlib.contextmanager
def sweep_lock(out: str | Path) -> Iterator[None]:
    """Refuse a second ``bench sweep`` on the same folder on this machine."""
    fcntl = _fcntl()
    if fcntl is None:
        yield
        return
    path = Path(out) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise SweepError(
                f"another `bench sweep` is writing to {out} (pid {f.read().strip() or '?'}); "
                "wait for it or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_holder(out: str | Path) -> int | None:
    """The pid of the `bench sweep` holding ``out``'s lock on this machine, else None."""
    fcntl = _fcntl()
    path = Path(out) / LOCK_NAME
    if fcntl is None or not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None
