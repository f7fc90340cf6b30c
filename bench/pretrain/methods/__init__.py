"""The pretraining methods: one module per method, each a :class:`Method` registered here.

Owns :class:`Method` (what ``bench pretrain`` needs of a method: its recipe defaults
and citation, what data it needs, how to build its trainable model around the
encoder and how to draw its training items), :class:`Context` and the registry
(``METHODS``, :func:`get_method`). A method's model is an ``nn.Module`` with an
``encoder`` attribute (the torchvision ResNet that gets exported) whose
``forward(batch)`` returns the loss. Modules: :mod:`.simclr`, :mod:`.moco` (MedAug
positives), :mod:`.convirt`, :mod:`.clip`, :mod:`.supervised`; :mod:`.items` holds the
datasets they share, :mod:`.text` the text-encoder set-up of the image-text methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Context:
    """What a method sees besides its settings: the corpus, where it writes, the process group."""

    corpus: Any  # corpora.Corpus
    out_dir: Path
    records: list = field(default_factory=list)  # the decoded images' records, in image order
    rank: int = 0
    world: int = 1
    stats: dict[str, Any] = field(default_factory=dict)  # recorded in pretrain.json
    label_arrays: Any = None  # supervised: (labels, mask), computed once
    device: Any = "cpu"


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    citation: str
    recipe: str  # one line for `bench pretrain --help`
    defaults: dict[str, Any]
    build: Callable  # (encoder, settings, context) -> nn.Module with .encoder and forward(batch) -> loss
    dataset: Callable  # (images uint8 (N, S, S), records, settings, context) -> torch Dataset
    needs_reports: bool = False
    needs_labels: bool = False
    contrastive: bool = True  # needs at least 2 samples per process batch


def _registry() -> dict[str, Method]:
    from . import clip, convirt, moco, simclr, supervised

    return {m.METHOD.name: m.METHOD for m in (simclr, moco, convirt, clip, supervised)}


METHOD_NAMES = ("simclr", "moco", "convirt", "clip", "supervised")


def get_method(name: str) -> Method:
    methods = _registry()
    if name not in methods:
        raise ValueError(f"unknown pretraining method {name!r}; choose one of {', '.join(methods)}")
    return methods[name]


def all_methods() -> list[Method]:
    return list(_registry().values())
