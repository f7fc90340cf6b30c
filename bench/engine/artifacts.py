"""A run's side files beside its record: example predictions and the test submission.

Owns ``<run_id>.examples.npz`` (up to ``N_EXAMPLES`` test images, half with a target
and half without, chosen by image id so every init of a task shows the *same* images,
with targets and predictions as the head collected them; drawn by
:mod:`bench.reporting.examples`) and ``<run_id>.test-predictions.csv`` (the test
predictions in the task's own submission format, at original resolution, which
``bench evaluate`` scores). Both are written atomically (with the user's umask) and are
optional: :func:`write_optional` turns a failure to write one (a full disk, a folder
gone read-only) into a note for the run record, with the path, instead of a failed run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.util import atomic_write

N_EXAMPLES = 4


def write_optional(what: str, path: Path, write: Callable[[], object], errors: list[dict]) -> str | None:
    """``write()`` an optional side file at ``path``; its path, or None when it failed.

    A failure (``OSError`` such as ENOSPC, or any error while computing the content) is
    appended to ``errors`` as ``{"artifact", "path", "error"}`` and warned about on
    stderr; the run it belongs to keeps its status and metrics.
    """
    try:
        write()
    except Exception as e:  # noqa: BLE001 - an optional file never fails a finished run
        error = f"{type(e).__name__}: {e}"
        errors.append({"artifact": what, "path": str(path), "error": error})
        print(f"warning: could not write the {what} file {path} ({error}); the run keeps its "
              "metrics and its record notes the missing file", file=sys.stderr)  # fmt: skip
        return None
    return str(path)


def choose_examples(prepared, test_idx: list[int], n: int = N_EXAMPLES) -> list[int]:
    """Deterministic: the first positives and negatives of the test split in id order."""
    def positive(i):
        if getattr(prepared, "boxes", None) is not None:
            return len(prepared.boxes[i]) > 0
        return bool(np.asarray(prepared.masks[i]).any())

    ordered = sorted(test_idx, key=lambda i: prepared.ids[i])
    pos = [i for i in ordered if positive(i)]
    neg = [i for i in ordered if not positive(i)]
    picked = pos[: (n + 1) // 2] + neg[: n // 2]
    rest = [i for i in ordered if i not in picked]
    return sorted((picked + rest)[:n], key=lambda i: prepared.ids[i])


def save_examples(path: Path, payload: dict) -> Path:
    """Atomically write an examples file (arrays + a JSON string of boxes)."""
    return atomic_write(path, lambda f: np.savez_compressed(f, **payload), binary=True)


def load_examples(path: Path) -> dict | None:
    try:
        with np.load(path) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
    out["kind"] = str(out["kind"])
    if "boxes" in out:
        out["boxes"] = json.loads(str(out["boxes"]))
    return out


def write_submission(path: Path, task, head, model, loader, prepared, options: dict) -> Path:
    """The test predictions as the task's submission CSV, each image at its original size."""
    import pandas as pd

    fmt = task.submission
    rows = []
    for idx, preds, _ in head.predict(model, loader):
        for j, pred in zip(idx, preds):
            original = head.to_original(pred, prepared.orig_sizes[j], prepared.image_size)
            rows.append((prepared.ids[j], fmt.format(original, **options)))
    frame = pd.DataFrame(rows, columns=[fmt.id_column, fmt.value_column])
    return atomic_write(path, lambda f: frame.to_csv(f, index=False))
