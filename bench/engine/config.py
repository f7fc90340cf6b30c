"""Run configuration: every setting of one run, its defaults, and the run id derived from it.

A run is fully described by a :class:`RunConfig`. The run id is a readable prefix
(task, init, protocol, fraction, seed) plus a short hash of every setting that can
change the result, so two runs with the same id are the same experiment and a sweep
can tell finished work from new work by the id alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path

PROTOCOLS = ("frozen", "linear", "finetune")
ARCHS = ("resnet18", "resnet34", "resnet50")
DETECTORS = ("retinanet", "fasterrcnn")
DEVICE_CACHE_CHOICES = ("auto", "off")  # bench.models.datasets.device_cache_plan

# Learning rates when --lr is not given: a trained head on frozen features takes a
# larger step than a fine-tuned encoder (LoVT/MGCA use the same order of magnitude).
DEFAULT_LR = {"linear": 1e-3, "frozen": 1e-3, "finetune": 1e-4}


@dataclass
class RunConfig:
    """All settings of one `bench run`; see `bench run --help` for their meaning."""

    task: str  # a registered task name (tasks.task_names()); no default: bench names no task
    init: str = "imagenet"
    protocol: str = "finetune"
    fraction: float = 1.0
    seed: int = 0
    data_root: str | None = None
    out: str = "runs"
    arch: str = "resnet50"
    image_size: int = 224
    epochs: int = 20
    batch_size: int = 16
    lr: float | None = None
    weight_decay: float = 0.0
    patience: int = 5
    device: str = "auto"
    num_workers: int | None = None  # DataLoader workers; None: 0 on CPU, min(4, cores) on CUDA (not in the run id)
    feature_reuse: bool = True  # frozen protocols: encoder outputs computed once (same result; not in the run id)
    # GPU path (same batches, not in the run id): the cache on the GPU when it fits (auto|off);
    # torch.compile of the model's forward
    device_cache: str = "auto"
    compile: bool = False
    detector: str = "retinanet"
    # initialization
    checkpoint: str | None = None
    prefix: str | None = None
    init_name: str | None = None
    allow_partial: bool = False
    allow_leakage: bool = False
    trust_checkpoint: bool = False
    mean: list[float] | None = None  # input normalization override (else the init's own)
    std: list[float] | None = None
    # data
    split_file: str | None = None
    rle_format: str | None = None
    strict: bool = False
    # outputs
    save_predictions: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def spec(self):
        """The task's registered :class:`tasks.registry.TaskSpec`."""
        from tasks import get_task

        return get_task(self.task)

    @property
    def output(self) -> str:
        """The output kind this run trains: ``"mask"`` or ``"boxes"``."""
        return self.spec.output(self.protocol)

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.protocol]

    @property
    def init_label(self) -> str:
        """Name of the initialization in records and reports."""
        if self.init_name:
            return self.init_name
        p = Path(self.init)
        if p.suffix or "/" in self.init or "\\" in self.init:
            name = p.name
            for suffix in (".safetensors", ".pth.tar", ".ckpt", ".pth", ".pt", ".tar"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            return name
        return self.init

    def hparams(self) -> dict:
        """The resolved hyper-parameters stored in the record."""
        return {
            "lr": self.resolved_lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "optimizer": "adam",
            "image_size": self.image_size,
            "arch": self.arch,
            "detector": self.detector if self.output == "boxes" else None,
        }

    def identity(self) -> dict:
        """Settings that can change the result; the run id hashes exactly these."""
        keys = (
            "task init protocol fraction seed data_root arch image_size epochs batch_size "
            "weight_decay patience checkpoint prefix allow_partial split_file rle_format"
        ).split()
        ident = {k: getattr(self, k) for k in keys}
        ident["lr"] = self.resolved_lr
        if self.mean is not None:  # only when given, so older run ids stay valid
            ident["mean"], ident["std"] = list(self.mean), list(self.std)
        if self.output == "boxes":
            ident["detector"] = self.detector
        ident.update({f"extra.{k}": v for k, v in sorted(self.extra.items())})
        return ident

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(
            json.dumps(self.identity(), sort_keys=True, default=str).encode()
        ).hexdigest()[:8]
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.init_label)
        return f"{self.task}-{label}-{self.protocol}-f{self.fraction:g}-s{self.seed}-{digest}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _finite_number(v) -> bool:
    """A real number (Python or numpy), not a bool, not NaN or infinite."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def check_settings(cfg: RunConfig) -> None:
    """Refuse settings no run can use, with a ``ValueError`` naming the setting (one line).

    Called by ``RunConfig.__post_init__`` (so every sweep run and lr-search candidate,
    made by ``RunConfig(...)`` or ``dataclasses.replace``, is checked when the sweep file
    is read) and again by ``bench.engine.runner.execute`` before any work, for a config
    changed after it was made. Checks only: nothing here changes a setting or a run id.
    """
    _ = cfg.spec  # an unknown task fails here, listing the registered ones
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {cfg.protocol!r}; known: {', '.join(PROTOCOLS)}")
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown arch {cfg.arch!r}; known: {', '.join(ARCHS)}")
    if not 0 < cfg.fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {cfg.fraction}")
    if cfg.image_size % 32 or cfg.image_size < 32:
        raise ValueError(f"--image-size must be a multiple of 32 (U-Net/FPN strides), got {cfg.image_size}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be >= 1")
    if cfg.lr is not None and not (_finite_number(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"--lr must be a positive, finite number, got {cfg.lr!r}")
    if not (_finite_number(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"--weight-decay must be a finite number >= 0, got {cfg.weight_decay!r}")
    if cfg.num_workers is not None and (isinstance(cfg.num_workers, bool) or not isinstance(cfg.num_workers, int)
                                        or cfg.num_workers < 0):  # fmt: skip
        raise ValueError(f"--num-workers must be an integer >= 0, got {cfg.num_workers!r}")
    if cfg.device_cache not in DEVICE_CACHE_CHOICES:
        raise ValueError(f"--device-cache must be one of {', '.join(DEVICE_CACHE_CHOICES)}, got {cfg.device_cache!r}")
    if (cfg.mean is None) != (cfg.std is None):
        raise ValueError("--mean and --std go together (one value, or one per input channel)")
    if cfg.std is not None and not all(float(v) > 0 for v in cfg.std):
        raise ValueError(f"--std values must be > 0, got {list(cfg.std)}")
