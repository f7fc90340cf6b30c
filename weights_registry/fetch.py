"""Download, cache and verify weights files.

Owns the cache location (``weights_dir``: ``$CXRBENCH_WEIGHTS`` or the user cache
directory), SHA-256 verification (a full hash, or torchvision's file-name prefix
as in ``torch.hub``'s ``check_hash``), and the download itself: to a temporary
file in the cache folder, verified, then atomically renamed into place. Offline
(``CXRBENCH_OFFLINE=1`` or ``offline=True``) nothing is downloaded, and the error
says which URL to fetch and exactly where to put the file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import platformdirs

from bench.util import atomic_write, sha256_file

from .catalogue import InitEntry, get_entry
from .errors import (
    HashMismatchError,
    UserCheckpointRequiredError,
    WeightsError,
    WeightsUnavailableError,
)

DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_TRUE = {"1", "true", "yes", "on"}


def weights_dir() -> Path:
    """``$CXRBENCH_WEIGHTS`` if set, else ``<user cache dir>/cxrbench/weights``."""
    env = os.environ.get("CXRBENCH_WEIGHTS")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("cxrbench")) / "weights"


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` when given, else the ``CXRBENCH_OFFLINE`` environment variable."""
    if offline is not None:
        return offline
    return os.environ.get("CXRBENCH_OFFLINE", "").strip().lower() in _TRUE


def _resolve(entry: InitEntry | str) -> InitEntry:
    return get_entry(entry) if isinstance(entry, str) else entry


def cache_path(entry: InitEntry | str, arch: str = "resnet50") -> Path:
    """Absolute path where ``entry``'s file for ``arch`` is (or would be) cached."""
    entry = _resolve(entry)
    src = entry.source(arch)
    if src is None:
        if not entry.downloadable:
            raise UserCheckpointRequiredError(_no_download_message(entry))
        raise WeightsError(f"{entry.name!r} provides {', '.join(entry.archs)}, not {arch}")
    return weights_dir() / entry.name / src.file


def is_cached(entry: InitEntry | str, arch: str = "resnet50") -> bool:
    entry = _resolve(entry)
    return entry.source(arch) is not None and cache_path(entry, arch).is_file()


def _expected_text(sha256: str | None, hash_prefix: str | None) -> str:
    if sha256:
        return sha256
    if hash_prefix:
        return f"{hash_prefix}... (prefix carried by the file name)"
    return "unknown"


def verify_file(
    path: str | Path,
    sha256: str | None = None,
    hash_prefix: str | None = None,
    *,
    actual: str | None = None,
) -> tuple[str, bool | None]:
    """Hash ``path`` and check it against a full ``sha256`` and/or a ``hash_prefix``.

    Returns ``(actual_sha256, verified)`` where verified is True when a hash was
    known and matched, None when none was known; raises ``HashMismatchError``
    naming the file, the expected and the actual hash otherwise.
    """
    actual = actual or sha256_file(path)
    if sha256 is None and not hash_prefix:
        return actual, None
    ok = (sha256 is None or actual == sha256.lower()) and (
        not hash_prefix or actual.startswith(hash_prefix.lower())
    )
    if not ok:
        raise HashMismatchError(
            f"SHA-256 mismatch for {Path(path).resolve()}:\n"
            f"  expected: {_expected_text(sha256, hash_prefix)}\n"
            f"  actual:   {actual}\n"
            "The file is corrupt, truncated or a different file. Delete it and fetch it again."
        )
    return actual, True


def _no_download_message(entry: InitEntry) -> str:
    hint = f" (usually named {entry.file_hint})" if entry.file_hint else ""
    own = ""
    if entry.name in ("simclr", "moco", "convirt", "clip", "supervised"):  # the methods of `bench pretrain`
        own = (f"Or make one: `bench pretrain --method {entry.name} --data DIR --name {entry.name}-mydata` "
               f"and run with --init {entry.name}-mydata. ")  # fmt: skip
    return (
        f"{entry.name!r} has no public weights to download: pass your own checkpoint file{hint} "
        f"with --checkpoint FILE (Python: load_encoder({entry.name!r}, checkpoint=FILE)). {own}"
        f"{entry.note}"
    )


def _unavailable_message(entry: InitEntry, arch: str, target: Path, reason: str) -> str:
    src = entry.source(arch)
    assert src is not None
    return (
        f"the {entry.name!r} weights for {arch} are not cached and could not be downloaded ({reason}).\n"
        f"  URL:         {src.url}\n"
        f"  put it at:   {target}\n"
        f"  sha256:      {_expected_text(src.sha256, src.hash_prefix)}\n"
        f"Download the URL on a machine with network access (e.g. curl -L -o FILE URL), copy it "
        f"to exactly that path (or set CXRBENCH_WEIGHTS to another cache folder), and run again; "
        f"or pass the file with --checkpoint FILE."
    )


def _download(url: str, out, timeout: float) -> str:
    """Stream ``url`` into the open binary file ``out``; return its SHA-256."""
    h = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "cxrbench"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        while chunk := resp.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def fetch_verified(
    entry: InitEntry | str, arch: str = "resnet50", *, offline: bool | None = None
) -> tuple[Path, str, bool | None]:
    """``fetch`` that also returns the file's SHA-256 and whether it was verified."""
    entry = _resolve(entry)
    target = cache_path(entry, arch)
    src = entry.source(arch)
    assert src is not None and src.url
    if target.is_file():
        actual, verified = verify_file(target, src.sha256, src.hash_prefix)
        return target, actual, verified
    if is_offline(offline):
        raise WeightsUnavailableError(
            _unavailable_message(
                entry, arch, target, "offline: CXRBENCH_OFFLINE is set or offline=True"
            )
        )

    result: dict = {}

    def write(f) -> None:
        print(f"cxrbench: downloading {src.url} -> {target}", file=sys.stderr)
        try:
            result["sha"] = _download(src.url, f, DOWNLOAD_TIMEOUT_S)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise WeightsUnavailableError(
                _unavailable_message(entry, arch, target, f"download failed: {e}")
            ) from e
        # checked before the rename: a file that does not verify never lands in the cache
        result["verified"] = verify_file(target, src.sha256, src.hash_prefix, actual=result["sha"])[1]

    try:
        atomic_write(target, write, binary=True)
    except PermissionError as e:
        raise WeightsUnavailableError(
            _unavailable_message(entry, arch, target, f"cannot write: {e}")
        ) from e
    actual, verified = result["sha"], result["verified"]
    return target, actual, verified


def fetch(entry: InitEntry | str, arch: str = "resnet50", *, offline: bool | None = None) -> Path:
    """Path of ``entry``'s verified weights file for ``arch``, downloading it if needed.

    Raises ``WeightsUnavailableError`` (with URL, target path and expected hash)
    when it is not cached and cannot be downloaded, ``HashMismatchError`` when the
    cached or downloaded file has the wrong hash.
    """
    return fetch_verified(entry, arch, offline=offline)[0]


__all__ = [
    "cache_path",
    "fetch",
    "fetch_verified",
    "is_cached",
    "is_offline",
    "sha256_file",
    "verify_file",
    "weights_dir",
]
