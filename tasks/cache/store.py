"""The preprocessing cache on disk: where it lives, its key, its format, and reading it.

Owns: :data:`CACHE_FORMAT_VERSION`, :func:`cache_root` (``$CXRBENCH_CACHE``),
:func:`cache_dir_for`, :func:`cache_key` (sha256 of everything a cache's content
depends on), :class:`Prepared` (images, masks, boxes and bookkeeping of one prepared
dataset), :func:`load_prepared` (a finished cache, memory-mapped), the box file
(``boxes.npz``: :func:`save_boxes`, :func:`scale_boxes` into the cache's pixel frame),
:func:`relative_path` and :func:`check_strict`.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from tasks.errors import DataError
from tasks.imageio import decoders

CACHE_FORMAT_VERSION = 1

BOXES_FILE = "boxes.npz"  # per-image boxes of detection tasks, inside a cache directory


def cache_root() -> Path:
    """`$CXRBENCH_CACHE` if set, else the per-user cache dir for cxrbench.

    (How many processes build a cache: `$CXRBENCH_CACHE_WORKERS`, see `tasks.cache.workers`.)"""
    env = os.environ.get("CXRBENCH_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("cxrbench"))


def cache_dir_for(task: str, key: str) -> Path:
    return cache_root() / "prepared" / task / key


def cache_key(
    task: str, image_size: int, key_material: dict, files: Iterable[Path], root: Path
) -> str:
    """sha256 over everything a cache's content depends on.

    key_material: task-specific settings (label file sha256, rle format, ...); the DICOM
    decoders used (`tasks.imageio.decoders`) are part of the key too.
    files: source files whose (relative path, size, mtime_ns) are hashed, sorted.
    """
    root = Path(root).resolve()
    h = hashlib.sha256()
    head = {
        "format_version": CACHE_FORMAT_VERSION,
        "task": task,
        "image_size": int(image_size),
        "root": str(root),
        "material": key_material,
        "decoders": decoders(),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for rel, size, mtime in sorted(_file_stats(files, root)):
        h.update(f"\n{rel}\t{size}\t{mtime}".encode())
    return h.hexdigest()[:32]


def _file_stats(files: Iterable[Path], root: Path):
    """(path under root, size, mtime) of each file: the path as given, made absolute (no
    symlinks resolved: a realpath per file was most of a key's time), relative to root
    when it lies under it."""
    prefix = os.path.join(str(root), "")
    for f in files:
        st = os.stat(f)
        p = os.path.abspath(f)
        rel = p[len(prefix):] if p.startswith(prefix) else p
        yield (rel.replace(os.sep, "/"), st.st_size, st.st_mtime_ns)


def relative_path(path, root: Path) -> str:
    """path relative to root (POSIX style), or the absolute path when outside root."""
    p = Path(path).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


@dataclass
class Prepared:
    """A prepared (cached) dataset: fixed-size arrays plus bookkeeping, in cache order."""

    root: Path
    cache_dir: Path
    task: str
    image_size: int
    ids: list[str]
    groups: list[str]  # patient id per image (image id when the header has none)
    images: np.ndarray  # uint8 (N, S, S), memory-mapped
    masks: np.ndarray | None  # uint8 {0,1} (N, S, S), memory-mapped, or None
    orig_sizes: list[tuple[int, int]]  # (height, width) of the label frame (the source DICOM)
    manifest: dict
    synthetic: bool
    # detection tasks: per image a float32 (M, 4) xyxy array in the image_size pixel
    # frame ((0, 4) for an image without boxes); None for tasks without boxes (SIIM)
    boxes: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def check_strict(prepared: Prepared, strict: bool) -> None:
    """Under ``--strict``, DICOMs skipped as corrupt (now or when the cache was built) are fatal."""
    skipped = prepared.manifest["skipped_corrupt"]
    if strict and skipped:
        raise DataError(
            f"{skipped[0]['path']}: {len(skipped)} corrupt DICOM(s) (strict mode): {skipped[0]['error']}"
        )


def load_prepared(cache_dir: Path) -> Prepared | None:
    """Open a finished cache (None if absent or from another format version)."""
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format_version") != CACHE_FORMAT_VERSION:
        return None
    items = manifest["items"]
    try:
        images = np.load(cache_dir / "images.npy", mmap_mode="r")
        masks = np.load(cache_dir / "masks.npy", mmap_mode="r") if manifest["has_masks"] else None
        boxes = (
            _load_boxes(cache_dir / BOXES_FILE, len(items)) if manifest.get("has_boxes") else None
        )
    except (OSError, ValueError, KeyError):
        return None  # damaged by hand: treated as absent and rebuilt
    return Prepared(
        root=Path(manifest["source_root"]),
        cache_dir=cache_dir,
        task=manifest["task"],
        image_size=int(manifest["image_size"]),
        ids=[it["id"] for it in items],
        groups=[it["patient_id"] or it["id"] for it in items],
        images=images,
        masks=masks,
        orig_sizes=[tuple(it["orig_size"]) for it in items],
        manifest=manifest,
        synthetic=bool(manifest.get("synthetic")),
        boxes=boxes,
    )


def save_boxes(path: Path, boxes: list[np.ndarray]) -> None:
    """All images' boxes in one .npz: "boxes" (K, 4) float32 concatenated in cache order
    and "offsets" (N + 1,) int64, image i owning rows offsets[i]:offsets[i + 1]."""
    offsets = np.zeros(len(boxes) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in boxes])
    flat = np.concatenate(boxes, axis=0) if boxes else np.zeros((0, 4), np.float32)
    with open(path, "wb") as f:
        np.savez(f, boxes=flat.astype(np.float32).reshape(-1, 4), offsets=offsets)


def _load_boxes(path: Path, n: int) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, offsets = z["boxes"], z["offsets"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable box file ({e})") from e
    if (
        flat.ndim != 2
        or flat.shape[1] != 4
        or offsets.shape != (n + 1,)
        or offsets[-1] != len(flat)
    ):
        raise ValueError(f"{path}: inconsistent box arrays")
    return [flat[offsets[i] : offsets[i + 1]] for i in range(n)]


def scale_boxes(boxes, orig_size: tuple[int, int], image_size: int) -> np.ndarray:
    """xyxy boxes in a (height, width) image's pixels -> the image_size x image_size frame
    that `resize_image` produces (x scaled by image_size / width, y by image_size / height).
    Returns float32 (M, 4)."""
    h, w = orig_size
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = np.array([image_size / w, image_size / h, image_size / w, image_size / h])
    return (b * scale).astype(np.float32)
