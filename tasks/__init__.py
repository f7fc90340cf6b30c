"""Downstream tasks: each one a registered module that reads its official dataset layout.

Owns the task registry (:mod:`tasks.registry`: ``TaskSpec``, ``register``,
``get_task``, ``task_names``, ``tasks_seen_by``), the built-in tasks (:mod:`tasks.siim`,
:mod:`tasks.rsna`) and the task-independent data layer they share: errors, DICOM/PNG
I/O, the checked CSV reader, splits and label fractions, the preprocessing cache and
the synthetic chest renderer.
"""

from tasks.registry import (
    MetricDef,
    SubmissionFormat,
    TaskOption,
    TaskSpec,
    all_tasks,
    get_task,
    register,
    task_names,
    tasks_seen_by,
    unregister,
)

__all__ = [
    "MetricDef",
    "SubmissionFormat",
    "TaskOption",
    "TaskSpec",
    "all_tasks",
    "get_task",
    "register",
    "task_names",
    "tasks_seen_by",
    "unregister",
]
