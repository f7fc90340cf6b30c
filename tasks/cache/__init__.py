"""The preprocessing cache: a dataset decoded once into fixed-size uint8 arrays.

Owns: the cache's public API, re-exported from :mod:`tasks.cache.store` (the cache on
disk: :func:`cache_root` (``$CXRBENCH_CACHE``), :func:`cache_dir_for`,
:func:`cache_key` (sha256 of everything the content depends on), :class:`Prepared`,
:func:`load_prepared`, the box file and :func:`scale_boxes`) and
:mod:`tasks.cache.build` (:func:`match_labels_to_dicoms` and :func:`build_cache`:
decode every item once, resize, store ``images.npy``, ``masks.npy``, ``boxes.npz`` and
``manifest.json``, renamed into place only when complete) and :mod:`tasks.cache.workers`
(the build's worker processes: :func:`requested_workers`, ``$CXRBENCH_CACHE_WORKERS``).

Environment: ``$CXRBENCH_CACHE`` is the cache root (default: the per-user cache folder);
``$CXRBENCH_CACHE_WORKERS`` the number of processes that decode a build (default: one
per usable core, at most one per 8 images; ``1``: in-process, no worker processes). The
worker count never changes the cache's content, only how fast it is built.

A task module finds its files, parses its labels, and hands a list of items plus a
``load_item`` function to :func:`build_cache`; everything here is task-agnostic.
"""

from tasks.cache.build import build_cache, match_labels_to_dicoms
from tasks.cache.store import (
    BOXES_FILE,
    CACHE_FORMAT_VERSION,
    Prepared,
    cache_dir_for,
    cache_key,
    cache_root,
    check_strict,
    load_prepared,
    relative_path,
    scale_boxes,
)
from tasks.cache.workers import WORKERS_ENV, requested_workers, usable_cores

__all__ = [
    "BOXES_FILE",
    "CACHE_FORMAT_VERSION",
    "WORKERS_ENV",
    "Prepared",
    "build_cache",
    "cache_dir_for",
    "cache_key",
    "cache_root",
    "check_strict",
    "load_prepared",
    "match_labels_to_dicoms",
    "relative_path",
    "requested_workers",
    "scale_boxes",
    "usable_cores",
]
