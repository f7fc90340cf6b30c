"""What one ``bench perf`` measures: :class:`PerfSettings`, checked before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# the protocols whose frozen encoder makes feature reuse possible (issue 12)
REUSE_PROTOCOLS = ("linear", "frozen")
PERF_VERSION = 1


def _all_methods() -> tuple[str, ...]:
    from bench.pretrain.methods import METHOD_NAMES

    return tuple(METHOD_NAMES)


@dataclass
class PerfSettings:
    """The settings of one measurement; every timed loop runs ``steps`` steps after ``warmup``.

    ``rounds``: the paths compared in one ratio are measured interleaved, ``steps`` split
    over ``rounds`` rounds (A, B, A, B, ...), so a change in the machine's load hits both
    sides of the ratio alike (default: one step per round). ``dicoms``: how many 1024x1024 DICOMs the per-sample DICOM
    path cycles through and the timed cache builds decode (enough that starting the build's
    worker processes, a fixed cost, does not decide the 2-vs-1-worker ratio: 16 DICOMs
    measured x1.30, 128 x1.63, 256 x1.86 on 2 cores, before the per-image decode got 2x
    faster, which makes the fixed part weigh more). ``methods``: the pretraining methods to time (empty: none).
    ``threads``: CPU threads of torch during the measurement (restored after it); on a
    machine shared with other jobs one thread avoids the stalls of oversubscribed OpenMP.
    ``options``: the task's own settings (``TaskSpec.options``, e.g. ``rle_format``).
    """

    task: str
    arch: str = "resnet18"
    protocol: str = "finetune"
    image_size: int = 64
    batch_size: int = 16
    device: str = "auto"
    steps: int = 12
    warmup: int = 2
    rounds: int | None = None  # None: steps (every step interleaved)
    init: str = "random"
    detector: str = "retinanet"
    data_root: str | None = None
    num_workers: int = 0
    dicoms: int = 256
    methods: tuple[str, ...] = field(default_factory=_all_methods)
    pretrain_steps: int | None = None  # None: half of steps
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads for the measurement; None: torch's default
    options: dict = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        check(self)

    @property
    def resolved_rounds(self) -> int:
        return self.rounds if self.rounds is not None else self.steps

    @property
    def resolved_pretrain_steps(self) -> int:
        return self.pretrain_steps if self.pretrain_steps is not None else max(1, self.steps // 2)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        d["pretrain_steps"] = self.resolved_pretrain_steps
        d["rounds"] = self.resolved_rounds
        d.pop("progress")
        return d


def check(s: PerfSettings) -> None:
    """A ``ValueError`` naming the flag for settings no measurement can use (the run's own
    settings are checked again by :class:`bench.engine.config.RunConfig`)."""
    for flag, value, low in (("--steps", s.steps, 1), ("--warmup", s.warmup, 0),
                             ("--rounds", s.resolved_rounds, 1), ("--dicoms", s.dicoms, 1), ("--batch-size", s.batch_size, 1),
                             ("--num-workers", s.num_workers, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
    if s.threads is not None and (
        isinstance(s.threads, bool) or not isinstance(s.threads, int) or s.threads < 1
    ):
        raise ValueError(f"--threads must be an integer >= 1, got {s.threads!r}")
    if s.pretrain_steps is not None and (
        not isinstance(s.pretrain_steps, int) or s.pretrain_steps < 1
    ):
        raise ValueError(f"--pretrain-steps must be an integer >= 1, got {s.pretrain_steps!r}")
    if s.resolved_rounds > s.steps:
        raise ValueError(
            f"--rounds {s.rounds} is more than --steps {s.steps}: each round needs a step"
        )
    unknown = sorted(set(s.methods) - set(_all_methods()))
    if unknown:
        raise ValueError(
            f"--methods: unknown pretraining method(s) {unknown}; known: {', '.join(_all_methods())}"
        )
