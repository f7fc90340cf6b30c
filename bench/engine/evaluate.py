"""`bench evaluate`: score a submission file in a task's own format with the benchmark's metrics.

Scoring happens at each image's original resolution (read from the DICOM headers,
1024x1024 for the Kaggle data), on the same deterministic split as training runs
(or an external split file), with exactly the metrics of design §6. The task says how
to read its labels and its submission format (``tasks.registry.TaskSpec``); the head
of the submission's output kind says how to score it. Every row of the submission is
checked, scored or not. Predictions for ids the dataset does not have are an error;
images of the chosen split without a prediction are scored as empty predictions and
counted, so a partial submission cannot look better than it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.models.heads import head_class
from tasks import get_task
from tasks.csvfile import read_csv
from tasks.errors import DataError
from tasks.splits import ground_truth_splits

SPLIT_CHOICES = ("test", "val", "train", "all")


def read_submission(path: Path, task, options: dict) -> dict[str, list[tuple[int, str]]]:
    """{id: [(line, value), ...]} with every value syntax-checked by the task."""
    fmt = task.submission
    table = read_csv(path, (fmt.id_column, fmt.value_column), what="predictions file",
                     expected_header=f"{fmt.id_column},{fmt.value_column}")  # fmt: skip
    rows: dict[str, list[tuple[int, str]]] = {}
    for line, row in table.rows:
        image_id = row[fmt.id_column].strip()
        fmt.check(row[fmt.value_column], f"{path}, line {line}, {fmt.id_column} {image_id}", **options)
        rows.setdefault(image_id, []).append((line, row[fmt.value_column]))
    return rows


def evaluate_submission(task_name, data_root, predictions, split="test", split_file=None,
                        **options) -> dict:  # fmt: skip
    """Metrics of a submission file on one split of the dataset at ``data_root``.

    ``options`` are the task's own settings (``TaskSpec.options``, e.g. an RLE
    convention); a declared option left out is ``None``.
    """
    task = get_task(task_name)
    unknown_opts = set(options) - {o.name for o in task.options}
    if unknown_opts:
        raise ValueError(f"task {task.name!r} has no option(s) {sorted(unknown_opts)}")
    options = {o.name: options.get(o.name) for o in task.options}
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, not {split!r}")
    gt = task.load_ground_truth(data_root, progress=sys.stderr.isatty(), **options)
    splits = ground_truth_splits(gt, split_file)
    selected = set(splits) if split == "all" else {i for i, s in splits.items() if s == split}
    path = Path(predictions)
    rows = read_submission(path, task, options)
    unknown = sorted(set(rows) - set(gt))
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} {task.submission.id_column}(s) are not in the dataset at "
            f"{data_root}: {unknown[:10]}"
        )
    head = head_class(task.submission_kind)
    metrics = head.new_metrics(task)
    missing = 0
    for image_id in sorted(selected):
        entry = gt[image_id]
        if image_id in rows:
            where = f"{path}, {task.submission.id_column} {image_id}"
            pred = task.submission.parse(rows[image_id], entry, where, **options)
        else:
            missing += 1
            pred = head.empty(entry)
        metrics.add([image_id], [pred], [task.target(entry)])
    if missing:
        print(f"warning: {missing} of {len(selected)} {split} image(s) have no prediction; "
              "scored as empty predictions", file=sys.stderr)  # fmt: skip
    result = {
        "task": task.name,
        "split": split,
        "split_source": str(split_file) if split_file else "cxrbench-hash-v1 70/15/15 by patient",
        "resolution": "original",
    }
    resolved = {k: v for k, v in _resolved_options(gt, options).items() if v is not None}
    result.update(resolved)
    result.update(
        metrics=metrics.compute() if len(metrics) else {},
        n_scored=len(selected),
        missing_predictions=missing,
        predictions_outside_split=len(set(rows) - selected),
    )
    return result


def _resolved_options(gt: dict, options: dict) -> dict:
    """Each option as the data resolved it (an entry may carry it, e.g. the RLE format in
    use when the option was left to the layout's default)."""
    first = next(iter(gt.values()), {})
    return {k: first.get(k, v) for k, v in options.items()}
