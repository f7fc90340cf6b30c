"""Encoder-feature reuse for the frozen protocols: its real speed-up and its limit.

With a frozen encoder and no augmentation the encoder's outputs are the same every
epoch; the engine computes them once (:mod:`bench.models.reuse`) and trains only the
head. Measured per protocol (``linear``, ``frozen``), in one process:

- ``epoch_s``: one real training epoch without reuse, through the real loader, and
  ``reuse_epoch_s``: one with reuse: the engine's
  :class:`~bench.models.reuse.FeatureStore` built once on the train split (its time is
  ``features_once_s``, not part of the epoch), then the real loop over
  :class:`~bench.models.reuse.ReplayLoader` batches. The two are timed in interleaved
  rounds (:func:`reuse_epochs`); ``speedup``, the median of the rounds' ratios, is
  ``reuse_speedup[protocol]``;
- the limit, on one batch already on the device: ``full_step_ips`` (the real training
  step) and ``head_step_ips`` (the same step with the encoder replaced by :class:`Replay`,
  which hands back that batch's features), ``limit = head_step_ips / full_step_ips``;
  ``ratio_to_limit = speedup / limit``;
- ``encoder_ips``: the encoder's forward pass alone, without gradients;
- ``head_loss_diff``: |loss of the full step - loss of the head-only step| on that batch
  (0: the replayed features stand in exactly for the encoder).
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict

import torch
from torch import nn

from bench.models.device import autocast
from bench.models.reuse import FeatureStore, ReplayEncoder, ReplayLoader, replaced_encoder
from bench.perf.meter import Path, side_by_side
from bench.perf.training import compute_path, first_batch, train_path

REUSE_NOTE = ("reuse_speedup: a real training epoch with the encoder's features computed once (not counted) "
              "vs one without; reuse_limit: the head-only step on precomputed features vs the full step, "
              "both on device tensors")  # fmt: skip


MIN_ROUNDS, MAX_ROUNDS, MIN_TIMED_SECONDS, MAX_REPLAYED_PER_ROUND = 3, 20, 1.0, 100


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


def reuse_epochs(setup, trainer) -> dict:
    """Real training epochs on ``setup.train_idx`` without and with encoder-feature reuse,
    interleaved, with ``trainer``'s model: ``epoch_s``, ``reuse_epoch_s``, ``speedup``,
    ``round_speedups``, ``features_once_s``, ``store`` (its summary, with ``timed_epochs`` and ``rounds``).

    Each round is one epoch through the real loader with the encoder, then replayed
    epochs until they have taken as long (at least one), so both sides of the ratio see the
    same machine load; a burst of load on a shared machine moves one round, not the
    figure. ``speedup`` is the median over the rounds of (epoch without reuse / mean
    replayed epoch of that round); ``epoch_s`` and ``reuse_epoch_s`` are the medians of
    the same. At least ``MIN_ROUNDS`` rounds, more until the replayed epochs add up to
    ``MIN_TIMED_SECONDS`` (a replayed linear epoch of the synthetic set takes ~30 ms);
    with ``--rounds`` below ``MIN_ROUNDS``, that many rounds."""
    loader = trainer.loader(setup.prepared, setup.train_idx, train=True)
    once = trainer.loader(setup.prepared, sorted(setup.train_idx), train=False)
    store = FeatureStore.build(trainer.model, trainer.head.loss_step, once, setup.device,
                               batch_size=trainer.cfg.batch_size)  # fmt: skip
    replay = ReplayEncoder(store)

    def timed(batches) -> float:
        _sync(setup.device)
        t0 = time.perf_counter()
        trainer.train(batches)
        _sync(setup.device)
        return time.perf_counter() - t0

    def replayed() -> float:
        with replaced_encoder(trainer.model, replay):
            return timed(ReplayLoader(loader, replay))

    # --rounds below MIN_ROUNDS (a quick check, the test suite's): that many, no time minimum
    min_rounds = min(MIN_ROUNDS, setup.settings.resolved_rounds)
    min_seconds = MIN_TIMED_SECONDS if min_rounds == MIN_ROUNDS else 0.0
    try:
        timed(loader), replayed()  # warm-up, untimed
        rounds: list[tuple[float, list[float]]] = []
        while len(rounds) < MAX_ROUNDS and (
            len(rounds) < min_rounds or sum(sum(r) for _, r in rounds) < min_seconds
        ):
            plain, reused = timed(loader), []
            while not reused or (sum(reused) < plain and len(reused) < MAX_REPLAYED_PER_ROUND):
                reused.append(replayed())
            rounds.append((plain, reused))
    finally:
        store.close()
    means = [statistics.fmean(r) for _, r in rounds]
    ratios = [p / m for (p, _), m in zip(rounds, means)]
    return {
        "epoch_s": statistics.median(p for p, _ in rounds),
        "reuse_epoch_s": statistics.median(means),
        "speedup": statistics.median(ratios),
        "round_speedups": ratios,
        "features_once_s": store.seconds,
        "store": store.summary() | {"timed_epochs": sum(len(r) for _, r in rounds), "rounds": len(rounds)},
    }


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    # a fresh model (the paths above trained this one on one batch, over and over), stepped
    # at lr 0: the same work per step, and timing epochs that cannot diverge
    fresh = setup.trainer(protocol)
    for group in fresh.optimizer.param_groups:
        group["lr"] = 0.0
    epochs = reuse_epochs(setup, fresh)
    speedup = epochs["speedup"]
    return {
        "output": trainer.output,
        "full_step_ips": full,
        "head_step_ips": head,
        "encoder_ips": enc,
        "pipeline_ips": pipe,
        "limit": head / full,
        "head_loss_diff": diff,
        "n_train": n,
        "epoch_s": epochs["epoch_s"],
        "epoch_s_reuse_limit": n / head,
        "features_once_s": epochs["features_once_s"],
        "reuse_epoch_s": epochs["reuse_epoch_s"],
        "speedup": speedup,
        "round_speedups": epochs["round_speedups"],
        "ratio_to_limit": speedup / (head / full),
        "store": epochs["store"],
        "memory": {f"reuse_{protocol}_{k}": m.memory() for k, m in meters.items()},
    }
