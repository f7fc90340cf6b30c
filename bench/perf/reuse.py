"""Encoder-feature reuse for the frozen protocols: its limit now, its real speed-up later.

With a frozen encoder and no augmentation the encoder's outputs are the same every
epoch, so they can be computed once and only the head trained (issue 12). The engine
does not do that yet, so ``reuse_speedup`` is ``None`` and this module measures the
*limit* of it, per protocol (``linear``, ``frozen``), on one batch already on the device:

- ``full_step_ips``: the real training step of that protocol's model (the compute limit);
- ``head_step_ips``: the same step with the encoder replaced by :class:`Replay`, which
  hands back the features the encoder computed once for that batch, so everything else
  (normalization, decoder / head, loss, backward, optimizer) is the real step;
- ``encoder_ips``: the encoder's forward pass alone, without gradients: what computing
  the features once costs per image;
- ``pipeline_ips``: the real step through the real loader, for the epoch time without
  reuse: ``epoch_s = n_train / pipeline_ips`` (projected from the timed steps);
- ``limit = head_step_ips / full_step_ips``, ``epoch_s_reuse_limit = n_train / head_step_ips``;
- ``head_loss_diff``: |loss of the full step - loss of the head-only step| on that batch
  (0: the replayed features stand in exactly for the encoder).

Where the real path plugs in: :func:`reuse_epoch_seconds` returns the seconds of one real
training epoch with reuse (features computed once, kept in memory or on disk, the head
trained on them through the engine's own loop) once the engine has it; then
``speedup = epoch_s / reuse_epoch_s`` and ``reuse_speedup[protocol]`` are filled in by
:func:`measure_reuse` with no other change.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
from torch import nn

from bench.models.device import autocast
from bench.perf.meter import Path, side_by_side
from bench.perf.training import compute_path, first_batch, train_path

REUSE_NOTE = ("feature reuse not implemented yet: reuse_speedup is null; reuse_limit is the head-only "
              "training step on precomputed encoder features vs the full step, both on device tensors")  # fmt: skip


class Replay(nn.Module):
    """Stands in for a frozen encoder: returns the features it was given, whatever the input."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, *args, **kwargs):
        f = self.features
        if isinstance(f, dict):
            return OrderedDict(f)  # a fresh container each call: callers may rebuild it
        if isinstance(f, list | tuple):
            return type(f)(f)
        return f


def _parents(model: nn.Module, module: nn.Module) -> list[tuple[nn.Module, str]]:
    found = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if child is module]  # fmt: skip
    if not found:
        raise RuntimeError("perf: the encoder is not a submodule of its model")
    return found


@contextlib.contextmanager
def replaced_encoder(model: nn.Module, replacement: nn.Module):
    """``model.encoder`` swapped for ``replacement`` inside the block (restored after it)."""
    encoder = model.encoder
    parents = _parents(model, encoder)
    for parent, name in parents:
        setattr(parent, name, replacement)
    try:
        yield
    finally:
        for parent, name in parents:
            setattr(parent, name, encoder)


def capture_encoder(trainer, batch) -> tuple[tuple, object]:
    """(the encoder's inputs, its outputs) for ``batch`` in the real loss step, without gradients."""
    store: dict = {}

    def hook(module, args, output):
        store["args"], store["output"] = args, output

    model = trainer.model
    model.train()  # the training step's mode (a frozen encoder stays in eval)
    handle = model.encoder.register_forward_hook(hook)
    try:
        with torch.no_grad(), autocast(trainer.device):
            trainer.head.loss_step(model, batch, trainer.device)
    finally:
        handle.remove()
    return store["args"], store["output"]


def head_path(name: str, trainer, batch, features) -> Path:
    replay = Replay(features)

    def run(n: int) -> int:
        with replaced_encoder(trainer.model, replay):
            return trainer.train([batch] * n)

    return Path(name, run)


def encoder_path(name: str, trainer, args, batch_images: int) -> Path:
    encoder = trainer.model.encoder

    def run(n: int) -> int:
        with torch.no_grad(), autocast(trainer.device):
            for _ in range(n):
                encoder(*args)
        return n * batch_images

    return Path(name, run)


def head_loss_difference(trainer, batch, features) -> float:
    """|full-step loss - head-only loss| on ``batch``: 0 when the replayed features stand in
    exactly for the encoder (the check that the limit times the same computation)."""
    model = trainer.model
    model.train()
    with torch.no_grad(), autocast(trainer.device):
        full = trainer.head.loss_step(model, batch, trainer.device)
        with replaced_encoder(model, Replay(features)):
            head = trainer.head.loss_step(model, batch, trainer.device)
    return float((full.float() - head.float()).abs())


def reuse_epoch_seconds(setup, trainer) -> float | None:
    """Seconds of one real training epoch with encoder-feature reuse; None until the engine has it.

    The plug-in point for issue 12's reuse: run one epoch of the engine's reuse path on
    ``setup.train_idx`` with ``trainer``'s model (the features computed once, outside
    the epoch, or counted in it as the engine does) and return its wall time.
    """
    return None


def measure_reuse(setup, protocol: str) -> dict:
    """The reuse figures of one frozen protocol (see the module docstring)."""
    s = setup.settings
    trainer = setup.trainer(protocol)
    loader = trainer.loader(setup.prepared, setup.train_idx, train=True)
    batch = first_batch(trainer.loader(setup.prepared, setup.train_idx, train=True), setup.device)
    args, features = capture_encoder(trainer, batch)
    diff = head_loss_difference(trainer, batch, features)
    meters = side_by_side(
        [compute_path("full_step", trainer, batch), head_path("head_step", trainer, batch, features),
         encoder_path("encoder", trainer, args, len(batch[0])), train_path("pipeline", trainer, loader)],
        device=setup.device, steps=s.steps, warmup=s.warmup, rounds=s.resolved_rounds, progress=s.progress,
        label=f"reuse {protocol}",
    )  # fmt: skip
    full, head, enc, pipe = (
        meters[k].ips for k in ("full_step", "head_step", "encoder", "pipeline")
    )
    n = len(setup.train_idx)
    epoch_s = n / pipe
    reuse_s = reuse_epoch_seconds(setup, trainer)
    return {
        "output": trainer.output,
        "full_step_ips": full,
        "head_step_ips": head,
        "encoder_ips": enc,
        "pipeline_ips": pipe,
        "limit": head / full,
        "head_loss_diff": diff,
        "n_train": n,
        "epoch_s": epoch_s,
        "epoch_s_reuse_limit": n / head,
        "features_once_s": n / enc,
        "reuse_epoch_s": reuse_s,
        "speedup": None if reuse_s is None else epoch_s / reuse_s,
        "memory": {f"reuse_{protocol}_{k}": m.memory() for k, m in meters.items()},
    }
