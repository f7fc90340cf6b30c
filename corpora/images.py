"""A corpus's images decoded once: the uint8 cache ``bench pretrain`` trains from.

Owns: :func:`decode_images` (every image of a :class:`~corpora.records.Corpus` read,
resized to ``size`` x ``size`` and stored as one ``images.npy`` with a
``manifest.json`` under ``tasks.cache.cache_root()/pretrain/<key>``; later calls with
the same corpus files and settings memory-map it instead of decoding again),
:func:`cache_key` and :func:`read_image` (JPEG, PNG or DICOM -> uint8 grayscale).

The key is the sha256 of :data:`FORMAT_VERSION`, the layout, the views setting, the
size, the resolved root and every image's (path, size in bytes, mtime in ns) in corpus
order, so touching, replacing, adding or removing an image rebuilds the cache. The
cache is written in a temporary sibling folder and renamed into place only when
complete: an interrupted build leaves nothing that a later call would read. An image
that cannot be decoded (truncated, corrupt, not an image) is skipped, counted under
"unreadable image" and named in a warning on stderr; any other error aborts the build.

JPEGs are decoded with libjpeg's DCT scaling (Pillow's ``draft``) to the smallest
power-of-two reduction still at least ``size`` on each side, then area-averaged to
``size`` (:func:`tasks.imageio.resize_image`, aspect ratio not kept); this makes the
decode of a 2500 x 3000 MIMIC image several times faster and changes no pixel's value
beyond the resampling itself. Decoding runs on a few threads (Pillow releases the GIL);
the result does not depend on their number. Concurrent callers (the ranks of a
``torchrun`` job) wait on a lock file in ``pretrain/.locks/`` so the corpus is decoded
once, then all read the same cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from corpora.records import Corpus, ImageRecord
from tasks import imageio
from tasks.cache import cache_root
from tasks.errors import DataError, DicomReadError

FORMAT_VERSION = 1
UNREADABLE = "unreadable image"
_SHOWN = 20  # unreadable files named one by one in the warning; the rest are counted
_CHUNK = 256
LOCKS = ".locks"  # pretrain/.locks/<key>: lock files, so concurrent callers decode a corpus once


def cache_key(corpus: Corpus, size: int) -> str:
    """sha256 over the format version, layout, views, size, root, the DICOM decoders
    (`tasks.imageio.decoders`) and each file's path, size, mtime."""
    h = hashlib.sha256()
    head = {
        "format_version": FORMAT_VERSION,
        "layout": corpus.layout,
        "views": corpus.views,
        "size": int(size),
        "root": str(Path(corpus.root).resolve()),
        "decoders": imageio.decoders(),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for r in corpus.records:
        st = os.stat(r.path)
        h.update(f"\n{r.path}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def cache_dir(corpus: Corpus, size: int) -> Path:
    return cache_root() / "pretrain" / cache_key(corpus, size)


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """One image as uint8 (H, W) grayscale: .dcm through :func:`tasks.imageio.read_dicom`,
    .png through :func:`tasks.imageio.read_png`, anything else (JPEG) through Pillow; with
    ``size``, a JPEG is decoded at the smallest DCT reduction still >= size per side.
    A file that cannot be decoded raises :class:`~tasks.errors.DicomReadError` naming it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dcm":
        return imageio.read_dicom(path)
    if suffix == ".png":
        return imageio.read_png(path)
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG":
                im.draft("L", (int(size), int(size)))
            im.load()
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DicomReadError(f"{path}: not a readable image file ({e})") from e


def _decode(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return imageio.resize_image(read_image(path, size), size), None
    except DicomReadError as e:
        return None, str(e)


def decode_images(
    corpus: Corpus, size: int, *, progress: bool = True
) -> tuple[np.ndarray, list[ImageRecord], dict[str, int]]:
    """(uint8 (N, size, size) images, the N records kept in corpus order, skipped counts).

    Decoded once and cached (see the module docstring); unreadable images are skipped,
    counted as {"unreadable image": k} and named on stderr. DataError when the corpus
    has no image or none can be read.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    if not corpus.records:
        raise DataError(f"{corpus.root}: the {corpus.layout} corpus has no images to decode")
    target = cache_dir(corpus, size)
    cached = _load(target, corpus, size)
    built = False
    if cached is None:
        from bench.util import held_lock, writable_dir_problem

        problem = writable_dir_problem(target.parent)
        if problem:
            raise DataError(f"the image cache of this corpus ({target}) must be built, but its folder "
                            f"cannot be written: {problem}; set CXRBENCH_CACHE to a writable folder")  # fmt: skip
        with held_lock(target.parent / LOCKS / target.name):  # one builder per key (e.g. DDP ranks)
            cached = _load(target, corpus, size)
            if cached is None:
                _build(target, corpus, size, progress)
                built = True
                cached = _load(target, corpus, size)
        if cached is None:
            raise DataError(f"{target}: the image cache just written cannot be read back")
    images, kept, manifest = cached
    unreadable = manifest["unreadable"]
    if unreadable:
        _warn(unreadable, cached=not built)
    skipped = {UNREADABLE: len(unreadable)} if unreadable else {}
    return images, [corpus.records[i] for i in kept], skipped


def _load(target: Path, corpus: Corpus, size: int):
    """(images memmap, kept indices, manifest) of a finished cache, or None."""
    try:
        manifest = json.loads((target / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("n_records") != len(corpus.records):
        return None
    kept = manifest.get("kept", [])
    try:
        images = np.load(target / "images.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if images.shape != (len(kept), size, size) or images.dtype != np.uint8:
        return None
    return images, kept, manifest


def _build(target: Path, corpus: Corpus, size: int, progress: bool) -> None:
    records = corpus.records
    n = len(records)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        out = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, size, size))
        kept, unreadable = [], []
        workers = max(1, min(8, os.cpu_count() or 1))
        bar = tqdm(total=n, desc=f"decode {corpus.layout} @{size}px", unit="img", disable=not progress)
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, n, _CHUNK):
                chunk = records[start : start + _CHUNK]
                for i, (image, error) in enumerate(pool.map(lambda r: _decode(r.path, size), chunk)):
                    if image is None:
                        unreadable.append({"path": str(chunk[i].path), "error": error})
                    else:
                        out[len(kept)] = image
                        kept.append(start + i)
                bar.update(len(chunk))
        bar.close()
        out.flush()
        del out
        if not kept:
            raise DataError(
                f"{corpus.root}: none of the {n} images could be read; first error: {unreadable[0]['error']}"
            )
        if len(kept) < n:
            _truncate(tmp / "images.npy", len(kept))
        manifest = {
            "format_version": FORMAT_VERSION,
            "key": target.name,
            "layout": corpus.layout,
            "dataset": corpus.dataset,
            "root": str(Path(corpus.root).resolve()),
            "synthetic": corpus.synthetic,
            "size": size,
            "n_records": n,
            "n_images": len(kept),
            "kept": kept,
            "unreadable": unreadable,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _publish(tmp, target, corpus, size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _truncate(path: Path, n: int) -> None:
    """Keep the first n rows of an .npy (the readable images), rewritten through a sibling file."""
    src = np.load(path, mmap_mode="r")
    short = path.with_name(f"{path.stem}.short.npy")
    dst = np.lib.format.open_memmap(short, "w+", src.dtype, (n, *src.shape[1:]))
    dst[:] = src[:n]
    dst.flush()
    del dst, src
    os.replace(short, path)


def _publish(tmp: Path, target: Path, corpus: Corpus, size: int) -> None:
    """Rename tmp to target; a stale unreadable target is replaced, a valid one (another
    process was faster) is kept."""
    if target.exists() and _load(target, corpus, size) is None:
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if _load(target, corpus, size) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _warn(unreadable: list[dict], *, cached: bool) -> None:
    when = " (as when the cache was built)" if cached else ""
    lines = [f"warning: skipped {len(unreadable)} unreadable image(s){when}:"]
    lines += [f"  {u['error']}" for u in unreadable[:_SHOWN]]
    if len(unreadable) > _SHOWN:
        lines.append(f"  ... and {len(unreadable) - _SHOWN} more")
    print("\n".join(lines), file=sys.stderr, flush=True)
