"""The preprocessing cache: a dataset decoded once into fixed-size uint8 arrays.

Owns :class:`Prepared` (images, masks, boxes and bookkeeping of one prepared
dataset), :func:`build_cache` (decode every item once, resize, store ``images.npy``,
``masks.npy``, ``boxes.npz`` and ``manifest.json``; built in a temporary folder and
renamed into place, so an interrupted build never leaves a partial cache),
:func:`load_prepared`, :func:`cache_key` (sha256 of everything the content depends
on), :func:`cache_root` (``$CXRBENCH_CACHE``) and :func:`match_labels_to_dicoms`.

A task module finds its files, parses its labels, and hands a list of items plus a
``load_item`` function to :func:`build_cache`; everything here is task-agnostic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
from tqdm import tqdm

from tasks.errors import DataError, DicomReadError
from tasks.imageio import resize_image, resize_mask
from tasks.synthetic import is_synthetic

CACHE_FORMAT_VERSION = 1

BOXES_FILE = "boxes.npz"  # per-image boxes of detection tasks, inside a cache directory


def cache_root() -> Path:
    """`$CXRBENCH_CACHE` if set, else the per-user cache dir for cxrbench."""
    env = os.environ.get("CXRBENCH_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("cxrbench"))


def match_labels_to_dicoms(
    labels: Mapping,
    dicoms: Mapping,
    *,
    label_csv,
    id_name: str,
    where_missing: str,
    dicom_dir,
    expected_layout: str,
    strict: bool,
    kind: str = "DICOM",
    suffix: str = ".dcm",
) -> tuple[list[str], list[str], list[str]]:
    """(matched, label ids without a DICOM, DICOM ids without labels), all sorted.

    Label ids without a DICOM are a warning (skipped, counted in the manifest) or, with
    ``strict``, an error naming the label file; no match at all is always an error.
    """
    matched = sorted(set(dicoms) & set(labels))
    without_dicom = sorted(set(labels) - set(dicoms))
    without_labels = sorted(set(dicoms) - set(labels))
    if without_dicom:
        msg = (
            f"{label_csv}: {len(without_dicom)} {id_name}(s) have no {kind} {where_missing}, "
            f"e.g. {without_dicom[:10]}"
        )
        if strict:
            raise DataError(msg)
        warnings.warn(msg + " (skipped)", stacklevel=4)
    if not matched:
        raise DataError(
            f"{label_csv}: none of its {len(labels)} {id_name}s matches a {kind} "
            f"file name under {dicom_dir} ({len(dicoms)} {suffix} files); {expected_layout}"
        )
    return matched, without_dicom, without_labels


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


def cache_key(
    task: str, image_size: int, key_material: dict, files: Iterable[Path], root: Path
) -> str:
    """sha256 over everything a cache's content depends on.

    key_material: task-specific settings (label file sha256, rle format, ...).
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
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for rel, size, mtime in sorted(_file_stats(files, root)):
        h.update(f"\n{rel}\t{size}\t{mtime}".encode())
    return h.hexdigest()[:32]


def _file_stats(files: Iterable[Path], root: Path):
    for f in files:
        st = os.stat(f)
        yield (relative_path(f, root), st.st_size, st.st_mtime_ns)


def cache_dir_for(task: str, key: str) -> Path:
    return cache_root() / "prepared" / task / key


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


def _save_boxes(path: Path, boxes: list[np.ndarray]) -> None:
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


def build_cache(
    cache_dir: Path,
    *,
    task: str,
    root: Path,
    items: list[dict],
    image_size: int,
    load_item: Callable[[dict], dict],
    manifest_extra: dict | None = None,
    has_masks: bool = False,
    has_boxes: bool = False,
    finalize: Callable[[dict], None] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> Prepared:
    """Decode every item once, resize to image_size, store arrays + manifest.json.

    items: dicts with at least "id" and "path" (the source DICOM, under root).
    load_item(item) -> {"image": uint8 (H, W), "mask": uint8 (any size) or None,
    "patient_id": str | None, "meta": dict merged into the manifest's item record,
    optionally "orig_size": (h, w) of the label frame when it is not the image's}, plus,
    with has_boxes=True, "boxes": float (M, 4) xyxy already in the image_size frame
    (see `scale_boxes`), stored in boxes.npz and loaded as `Prepared.boxes`.
    finalize(manifest), when given, runs on the complete manifest (items included) just
    before it is written, so a task can add summaries computed from the item records.
    A DicomReadError from load_item skips the item (recorded under "skipped_corrupt",
    with a warning) or, with strict=True, is raised; any other error aborts the build.
    The build happens in a temporary sibling directory that is renamed into place only
    when complete, so an interrupted build never leaves a partial cache behind.
    """
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    s = int(image_size)
    root = Path(root).resolve()
    if not items:
        raise DataError(f"{root}: no {task} images to prepare")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{cache_dir.name}-", dir=cache_dir.parent))
    try:
        n = len(items)
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, s, s))
        masks = (
            np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (n, s, s))
            if has_masks
            else None
        )
        records, skipped, all_boxes = [], [], []
        bar = tqdm(items, desc=f"prepare {task} @{s}px", unit="img", disable=not progress)
        for item in bar:
            try:
                out = load_item(item)
            except DicomReadError as e:
                if strict:
                    raise
                warnings.warn(f"skipping corrupt DICOM: {e}", stacklevel=2)
                skipped.append(
                    {"id": item["id"], "path": relative_path(item["path"], root), "error": str(e)}
                )
                continue
            k = len(records)
            image = out["image"]
            images[k] = resize_image(image, s)
            if masks is not None:
                masks[k] = resize_mask(out["mask"], s)
            if has_boxes:
                all_boxes.append(_box_array(out.get("boxes"), item))
            records.append(
                {
                    "id": item["id"],
                    "patient_id": out.get("patient_id") or "",
                    "path": relative_path(item["path"], root),
                    # the frame labels and submissions use: the image's own size,
                    # unless load_item says otherwise (a downsized PNG re-export)
                    "orig_size": [int(v) for v in out.get("orig_size", image.shape[:2])],
                    **out.get("meta", {}),
                }
            )
        del images, masks  # flush and close the memmaps
        if not records:
            raise DataError(
                f"{root}: none of the {n} {task} DICOM files could be read; first error: "
                f"{skipped[0]['error']}"
            )
        if len(records) < n:
            _truncate_npy(tmp / "images.npy", len(records))
            if has_masks:
                _truncate_npy(tmp / "masks.npy", len(records))
        if has_boxes:
            _save_boxes(tmp / BOXES_FILE, all_boxes)
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "task": task,
            "key": cache_dir.name,
            "image_size": s,
            "source_root": str(root),
            "synthetic": is_synthetic(root),
            "has_masks": has_masks,
            **({"has_boxes": True, "boxes_file": BOXES_FILE} if has_boxes else {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(manifest_extra or {}),
            "items": records,
            "skipped_corrupt": skipped,
        }
        counts = dict(manifest.get("counts", {}))
        counts.update(n_images=len(records), n_skipped_corrupt=len(skipped))
        if "positive" in (records[0] if records else {}):
            counts["n_positive"] = sum(bool(r["positive"]) for r in records)
        manifest["counts"] = counts
        if finalize is not None:
            finalize(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _move_into_place(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prepared = load_prepared(cache_dir)
    assert prepared is not None
    return prepared


def _box_array(boxes, item: dict) -> np.ndarray:
    b = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    if b.size == 0:
        return np.zeros((0, 4), np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{item['id']}: boxes must have shape (M, 4), got {b.shape}")
    return b


def relative_path(path, root: Path) -> str:
    """path relative to root (POSIX style), or the absolute path when outside root."""
    p = Path(path).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _truncate_npy(path: Path, n: int) -> None:
    """Rewrite an .npy keeping its first n rows (used when corrupt files were skipped)."""
    src = np.load(path, mmap_mode="r")
    short = path.with_name(path.stem + f".short-{uuid.uuid4().hex}.npy")
    dst = np.lib.format.open_memmap(short, "w+", src.dtype, (n, *src.shape[1:]))
    dst[:] = src[:n]
    del dst, src
    os.replace(short, path)


def _move_into_place(tmp: Path, cache_dir: Path) -> None:
    """Atomically publish tmp as cache_dir (replacing a stale, unreadable one)."""
    if cache_dir.exists() and load_prepared(cache_dir) is None:
        shutil.rmtree(cache_dir, ignore_errors=True)
    try:
        os.replace(tmp, cache_dir)
    except OSError:
        # Another process published the same key first: keep theirs.
        if load_prepared(cache_dir) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
