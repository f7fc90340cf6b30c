"""The task registry: what a downstream task is, declared once, found by name.

Owns :class:`TaskSpec` (everything the harness needs to know about a task),
:class:`SubmissionFormat` (its Kaggle-style submission file), :class:`TaskOption` (a
task-specific setting such as SIIM's RLE convention), :class:`MetricDef` (a task's
name and settings for a generic metric), :func:`register`, :func:`get_task`,
:func:`task_names` and :func:`tasks_seen_by` (the tasks whose images come from given
public data sets).

A task module declares one ``SPEC = TaskSpec(...)`` and calls ``register(SPEC)`` at
import time (as timm's ``@register_model`` does). Built-in tasks are the modules in
``BUILTIN``; more come from

- the ``cxrbench.tasks`` entry-point group of any installed package (each entry point
  names a module to import), and
- ``$CXRBENCH_TASKS``: comma-separated module names to import (handy for a task that
  lives in a research repository and is not installed),

or from calling :func:`register` directly. Nothing outside ``tasks/`` names a task:
``bench`` asks this registry.

Output kinds are ``"mask"`` (segmentation: a {0,1} mask per image) and ``"boxes"``
(detection: xyxy boxes with scores per image); ``bench.models.heads`` has one head per
kind.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

OUTPUT_KINDS = ("mask", "boxes")
BUILTIN = ("tasks.siim", "tasks.rsna")
ENTRY_POINT_GROUP = "cxrbench.tasks"
ENV_VAR = "CXRBENCH_TASKS"


@dataclass(frozen=True)
class TaskOption:
    """A task-specific setting: a ``RunConfig`` field (or ``extra`` key) and its CLI flag.

    Its value is passed by keyword (``name``) to the task's ``prepare``,
    ``load_ground_truth`` and submission functions.
    """

    name: str
    flag: str
    help: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MetricDef:
    """A reported metric that is a generic metric of a head, under the task's own name.

    ``metric`` is the generic metric the head computes (e.g. the boxes head's
    ``"iou_sweep_score"``, :mod:`bench.metrics.detection`) and ``params`` its settings
    (for ``iou_sweep_score``: ``min_score``, the confidence a model's box needs to
    count, as in a thresholded submission; a submission file is scored as written).
    """

    metric: str
    params: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmissionFormat:
    """A Kaggle-style submission CSV: ``id_column,value_column``, one or more rows per image.

    - ``check(value, where, **options)``: syntax check of one row's value (every row of
      a submission is checked, scored or not); raises ``DataError`` naming ``where``.
    - ``parse(rows, entry, where, **options)``: the prediction of one image from all its
      rows (``[(line, value)]``) in original pixels: a bool (H, W) mask, or
      ``{"boxes": (K, 4) xyxy, "scores": (K,)}``. ``entry`` is its ground-truth entry.
    - ``format(prediction, **options)``: the value of one row for a prediction in
      original pixels (the inverse of ``parse``).
    """

    id_column: str
    value_column: str
    check: Callable[..., None]
    parse: Callable[..., object]
    format: Callable[..., str]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the harness knows about one downstream task.

    - ``outputs``: protocol -> output kind (``"mask"`` or ``"boxes"``), for each of
      ``linear``, ``frozen``, ``finetune``.
    - ``metrics``: output kind -> reported test metrics, the primary one first.
    - ``prepare(root, image_size, *, strict, progress, **options) -> Prepared``: the
      dataset in its official layout -> the uint8 cache (``tasks.cache``), with
      ``masks`` for a mask output and ``boxes`` for a boxes output. The built-in tasks
      also take ``workers`` (the build's processes; default ``$CXRBENCH_CACHE_WORKERS``).
    - ``synth(out, *, n, seed, size, progress) -> dict``: synthetic data in the same
      layout (``bench synth``, and the built-in default when no data is given).
    - ``load_ground_truth(root, *, progress, **options) -> {id: entry}``: labels at
      original resolution for ``bench evaluate``; each entry has ``patient_id``,
      ``height``, ``width``.
    - ``target(entry)``: the ground truth of one entry as the metric wants it: a bool
      (H, W) mask or ``{"boxes": (M, 4) xyxy}``, original pixels.
    - ``submission``: the task's submission file (:class:`SubmissionFormat`), whose
      output kind is ``submission_kind``.
    - ``metric_defs``: metric -> :class:`MetricDef`, for a reported metric that is a
      head's generic metric under another name or with settings of its own.
    - ``metric_notes``: metric -> one line for reports, for metrics the heads' own
      notes do not cover (or that this task's reports explain otherwise).
    - ``image_sources``: the public data sets the task's images are drawn from (e.g. a
      Kaggle set made of NIH ChestX-ray14 images), so that an encoder pretrained on one
      of them counts as having seen the task (:func:`tasks_seen_by`).
    """

    name: str
    title: str
    outputs: Mapping[str, str]
    metrics: Mapping[str, tuple[str, ...]]
    prepare: Callable[..., object]
    synth: Callable[..., dict]
    load_ground_truth: Callable[..., dict]
    target: Callable[[dict], object]
    submission: SubmissionFormat
    submission_kind: str
    options: tuple[TaskOption, ...] = ()
    metric_defs: Mapping[str, MetricDef] = field(default_factory=dict)
    metric_notes: Mapping[str, str] = field(default_factory=dict)
    layout: str = ""
    image_sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        missing = {"linear", "frozen", "finetune"} - set(self.outputs)
        if missing:
            raise ValueError(f"task {self.name!r}: no output kind for protocol(s) {sorted(missing)}")
        for protocol, kind in [*self.outputs.items(), ("submission", self.submission_kind)]:
            if kind not in OUTPUT_KINDS:
                raise ValueError(f"task {self.name!r}: {protocol} output {kind!r} is not one of {OUTPUT_KINDS}")
            if not self.metrics.get(kind):
                raise ValueError(f"task {self.name!r}: no metrics declared for output {kind!r}")
        declared = {m for ms in self.metrics.values() for m in ms}
        undeclared = sorted(set(self.metric_defs) - declared)
        if undeclared:
            raise ValueError(f"task {self.name!r}: metric_defs for metric(s) {undeclared} it does not report")
        if isinstance(self.image_sources, str):
            raise ValueError(f"task {self.name!r}: image_sources must be a tuple of data set names")

    def output(self, protocol: str) -> str:
        """The output kind the protocol trains (``"mask"`` or ``"boxes"``)."""
        try:
            return self.outputs[protocol]
        except KeyError:
            raise ValueError(f"task {self.name!r} has no protocol {protocol!r}") from None

    def primary_metric(self, protocol: str) -> str:
        return self.metrics[self.output(protocol)][0]

    def option_values(self, source) -> dict:
        """``{option name: value}`` read from a RunConfig-like object (attribute, else ``extra``)."""
        extra = getattr(source, "extra", None) or {}
        return {o.name: getattr(source, o.name, extra.get(o.name)) for o in self.options}


_REGISTRY: dict[str, TaskSpec] = {}
_LOADED = False


def register(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task; a second task under the same name is an error unless ``replace``."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old is not spec and not replace:
        raise ValueError(f"task {spec.name!r} is already registered ({old.title})")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_plugins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in BUILTIN:
        importlib.import_module(module)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.split(":")[0])
    for module in filter(None, (m.strip() for m in os.environ.get(ENV_VAR, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"${ENV_VAR}: cannot import task module {module!r}: {e}") from e


def _ordered() -> list[TaskSpec]:
    """Built-in tasks in ``BUILTIN`` order (whatever imported them first), then the others
    in registration order."""
    _load_plugins()
    builtin = [m.rsplit(".", 1)[-1] for m in BUILTIN]
    first = [_REGISTRY[n] for n in builtin if n in _REGISTRY]
    return first + [t for n, t in _REGISTRY.items() if n not in builtin]


def task_names() -> tuple[str, ...]:
    """Registered task names: the built-in ones first (in ``BUILTIN`` order), then plugins."""
    return tuple(t.name for t in _ordered())


def all_tasks() -> tuple[TaskSpec, ...]:
    return tuple(_ordered())


def tasks_seen_by(datasets: Iterable[str]) -> tuple[str, ...]:
    """Names of the registered tasks (in :func:`task_names` order) whose ``image_sources``
    include one of ``datasets`` (data set names, compared case-insensitively)."""
    wanted = {str(d).strip().casefold() for d in datasets}
    return tuple(t.name for t in _ordered()
                 if any(s.strip().casefold() in wanted for s in t.image_sources))  # fmt: skip


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task; an unknown name lists the known ones."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(_REGISTRY)}") from None
