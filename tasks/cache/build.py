"""Building the preprocessing cache: a task's matched items decoded once into fixed-size arrays.

Owns: :func:`match_labels_to_dicoms` (which labelled ids have an image, with the
mismatches warned about or refused; images without a label row are warned about, with
their count and first paths) and :func:`build_cache` (decode every item once,
resize, store ``images.npy``, ``masks.npy``, ``boxes.npz`` and ``manifest.json``; built
in a temporary folder and renamed into place, so an interrupted build never leaves a
partial cache).

The decoding runs in worker processes (:mod:`tasks.cache.workers`): one per usable core
by default, ``$CXRBENCH_CACHE_WORKERS`` or the ``workers`` keyword to choose, ``1`` for
none (in-process). Each worker decodes and resizes a chunk of consecutive items and
returns the uint8 arrays; the parent alone writes them, in item order, so the arrays and
the manifest are the same whatever the worker count (the manifest's ``build`` records
the workers, seconds and images/s).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.util import writable_dir_problem
from tasks import imageio
from tasks.cache import workers as pool
from tasks.cache.store import (
    BOXES_FILE,
    CACHE_FORMAT_VERSION,
    Prepared,
    load_prepared,
    relative_path,
    save_boxes,
)
from tasks.errors import DataError, DicomReadError
from tasks.synthetic import is_synthetic


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
    DICOMs without a label row are not used: a warning with their count and first paths
    (the manifest lists them all).
    """
    matched = sorted(set(dicoms) & set(labels))
    without_dicom = sorted(set(labels) - set(dicoms))
    without_labels = sorted(set(dicoms) - set(labels))
    if without_labels and matched:
        base = Path(dicom_dir).resolve().parent
        shown = [relative_path(dicoms[i], base) for i in without_labels[:5]]
        more = f" (+{len(without_labels) - 5} more)" if len(without_labels) > 5 else ""
        warnings.warn(
            f"{dicom_dir}: {len(without_labels)} {kind} file(s) have no row in {label_csv} and are "
            f"not used, e.g. {shown}{more}",
            stacklevel=4,
        )
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
    workers: int | None = None,
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
    workers: decoding processes (None: ``$CXRBENCH_CACHE_WORKERS``, else one per usable
    core, see `tasks.cache.workers.plan`; 1: in-process). With more than one, load_item
    runs in the workers (forked on Linux; elsewhere it and the items must pickle), its
    warnings are re-issued here in item order, and the result is the same as with 1.
    """
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    s = int(image_size)
    root = Path(root).resolve()
    if not items:
        raise DataError(f"{root}: no {task} images to prepare")
    n_workers, chunk = pool.plan(workers, len(items))
    problem = writable_dir_problem(cache_dir.parent)
    if problem:
        raise DataError(f"cannot write the preprocessing cache of {root}: {problem}; "
                        "set CXRBENCH_CACHE to a writable folder")  # fmt: skip
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{cache_dir.name}-", dir=cache_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the cache follows the umask
        t0 = time.perf_counter()
        records, skipped = _decode_into(
            tmp, task=task, root=root, items=items, size=s, load_item=load_item,
            has_masks=has_masks, has_boxes=has_boxes, strict=strict, progress=progress,
            workers=n_workers, chunk=chunk,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        build = {"workers": n_workers, "chunk_size": chunk, "seconds": round(seconds, 3),
                 "images_per_s": round(len(records) / seconds, 2) if seconds > 0 else None}  # fmt: skip
        manifest = _manifest(
            cache_dir, task=task, root=root, size=s, has_masks=has_masks, has_boxes=has_boxes,
            extra=manifest_extra, records=records, skipped=skipped, build=build,
        )  # fmt: skip
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _decode_into(
    tmp: Path,
    *,
    task: str,
    root: Path,
    items: list[dict],
    size: int,
    load_item: Callable[[dict], dict],
    has_masks: bool,
    has_boxes: bool,
    strict: bool,
    progress: bool,
    workers: int = 1,
    chunk: int = 1,
) -> tuple[list[dict], list[dict]]:
    """Decode every item into tmp/images.npy (+ masks.npy, boxes.npz): (records, skipped).

    Arrays are written in item order (by this process alone, whatever the worker count)
    and cut to the readable items at the end; the skip warning points at the caller of
    `build_cache`.
    """
    n = len(items)
    images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, size, size))
    masks = (
        np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (n, size, size))
        if has_masks
        else None
    )
    records, skipped, all_boxes = [], [], []
    decode = functools.partial(_decode_item, load_item=load_item, root=root, size=size,
                               has_masks=has_masks, has_boxes=has_boxes)  # fmt: skip
    outcomes = pool.map_items(
        decode, items, workers=workers, chunk=chunk, expected=(DicomReadError,)
    )
    desc = f"prepare {task} @{size}px" + (f" ({workers} workers)" if workers > 1 else "")
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress)
    # closing: an error here (strict, Ctrl-C) stops the workers at once
    with contextlib.closing(outcomes), bar:
        for (out, error), item in zip(outcomes, items):  # outcomes first: run to its end
            bar.update(1)
            if error is not None:
                if strict:
                    raise error
                warnings.warn(f"skipping corrupt DICOM: {error}", stacklevel=3)
                path = relative_path(item["path"], root)
                skipped.append({"id": item["id"], "path": path, "error": str(error)})
                continue
            image, mask, boxes, record = out
            k = len(records)
            images[k] = image
            if masks is not None:
                masks[k] = mask
            if has_boxes:
                all_boxes.append(boxes)
            records.append(record)
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
        save_boxes(tmp / BOXES_FILE, all_boxes)
    return records, skipped


def _decode_item(
    item: dict,
    *,
    load_item: Callable[[dict], dict],
    root: Path,
    size: int,
    has_masks: bool,
    has_boxes: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict]:
    """(image, mask, boxes, manifest record) of one item at size: what a worker returns."""
    out = load_item(item)
    image = imageio.resize_image(out["image"], size)
    mask = imageio.resize_mask(out["mask"], size) if has_masks else None
    boxes = _box_array(out.get("boxes"), item) if has_boxes else None
    return image, mask, boxes, _item_record(item, out, root)


def _item_record(item: dict, out: dict, root: Path) -> dict:
    """The manifest record of one decoded item."""
    return {
        "id": item["id"],
        "patient_id": out.get("patient_id") or "",
        "path": relative_path(item["path"], root),
        # the frame labels and submissions use: the image's own size,
        # unless load_item says otherwise (a downsized PNG re-export)
        "orig_size": [int(v) for v in out.get("orig_size", out["image"].shape[:2])],
        **out.get("meta", {}),
    }


def _manifest(
    cache_dir: Path,
    *,
    task: str,
    root: Path,
    size: int,
    has_masks: bool,
    has_boxes: bool,
    extra: dict | None,
    records: list[dict],
    skipped: list[dict],
    build: dict | None = None,
) -> dict:
    """manifest.json of a finished build (before the task's `finalize`).

    ``created`` and ``build`` (workers, chunk size, decode seconds, images/s) are the
    only fields that differ between two builds of the same inputs."""
    manifest = {
        "format_version": CACHE_FORMAT_VERSION,
        "task": task,
        "key": cache_dir.name,
        "image_size": size,
        "source_root": str(root),
        "synthetic": is_synthetic(root),
        "has_masks": has_masks,
        **({"has_boxes": True, "boxes_file": BOXES_FILE} if has_boxes else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"build": build} if build is not None else {}),
        **(extra or {}),
        "items": records,
        "skipped_corrupt": skipped,
    }
    counts = dict(manifest.get("counts", {}))
    counts.update(n_images=len(records), n_skipped_corrupt=len(skipped))
    if "positive" in (records[0] if records else {}):
        counts["n_positive"] = sum(bool(r["positive"]) for r in records)
    manifest["counts"] = counts
    return manifest


def _box_array(boxes, item: dict) -> np.ndarray:
    b = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    if b.size == 0:
        return np.zeros((0, 4), np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{item['id']}: boxes must have shape (M, 4), got {b.shape}")
    return b


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
