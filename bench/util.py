"""File plumbing every layer shares: the one atomic write and the one sha256.

Owns: :func:`atomic_write` (write through a temporary file in the same folder, fsync,
``os.replace``; a reader sees the old file or the new one, never half of one) and its
text / JSON / copy forms, :func:`json_safe` (NaN/inf -> null, numpy scalars -> Python),
:func:`sha256_file`, :func:`generate_once` (a folder made in a temporary sibling and
renamed into place, for generated data sets) and :func:`held_lock` (one process at a
time makes a shared thing: a generated data set, a built-in encoder).

This module imports nothing of the project, so ``tasks/`` and ``weights_registry/``
use it too without depending on the rest of ``bench``. Files are created with the
user's umask (``tempfile.mkstemp`` alone would leave them 0600), folders from :func:`generate_once`
likewise (``tempfile.mkdtemp`` alone makes them 0700). :func:`writable_dir_problem` says,
without creating anything, why a folder cannot be written (the check every ``--out``
gets before any work).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def writable_dir_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used (or created) as a folder to write files into; None if it can.

    Nothing is left behind: an existing folder is checked for write permission
    (``os.access``, then a probe file removed at once, which also catches read-only
    mounts), a missing one through its nearest existing ancestor, which must be a
    writable folder. The answer is one line naming the path.
    """
    p = Path(path).expanduser()
    probe = p
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    below = "" if probe == p else f" (needed to create {p})"
    if probe.is_symlink() and not probe.exists():
        return f"{probe} is a broken symbolic link{below}"
    if not probe.is_dir():
        if probe == p:
            return f"{p} is a file, not a folder"
        return f"{p} cannot be created: {probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable{below}: permission denied"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cxrbench-write-check-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"{probe} is not writable{below}: {e.strerror or e}"
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False) -> Path:
    """Create or replace ``path`` with what ``write(f)`` writes to an open temporary file.

    The temporary file lives beside ``path`` (same file system, so the final
    ``os.replace`` is atomic) and is removed if ``write`` raises or the process is
    interrupted before the replace.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def json_safe(obj):
    """JSON-safe copy: NaN/inf become None (JSON has no NaN), numpy scalars become Python."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """``obj`` as indented JSON (through :func:`json_safe`), written atomically."""

    def write(f):
        json.dump(json_safe(obj), f, indent=2, sort_keys=False)
        f.write("\n")

    return atomic_write(path, write)


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (the copy appears whole or not at all)."""

    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    return atomic_write(dst, write, binary=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def held_lock(path: str | os.PathLike) -> Iterator[None]:
    """Wait for, then hold, an exclusive ``flock`` on the file ``path`` (created if missing):
    one process at a time on this machine makes what the lock guards. Without ``fcntl``
    (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def generate_once(root: str | os.PathLike, make: Callable[[Path], object], *, what: str = "data") -> Path:
    """``root``, made by ``make(tmp)`` in a temporary sibling folder and renamed into place.

    Nothing happens when ``root`` exists; an interrupted ``make`` leaves nothing behind.
    Processes that need the same ``root`` at once (the workers of a sweep on a fresh
    cache) wait on a lock beside it (``.<name>.lock``): one makes it, the others use it.
    """
    import sys

    root = Path(root)
    if root.exists():
        return root
    problem = writable_dir_problem(root.parent)
    if problem:
        raise PermissionError(f"cannot generate {what} into {root}: {problem}")
    root.parent.mkdir(parents=True, exist_ok=True)
    with held_lock(root.parent / f".{root.name}.lock"):
        if root.exists():  # made by another process while this one waited
            return root
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
            print(f"Generating {what} into {root} ...", file=sys.stderr)
            make(tmp)
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root
