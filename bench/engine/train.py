"""The training loop: Adam, early stopping on the validation metric, best weights kept.

Readable top to bottom (torchvision's references/detection/engine.py is the model):
``fit`` runs epochs of ``train_one_epoch`` followed by an evaluation on the
validation split, keeps a copy of the best weights, stops after ``patience`` epochs
without improvement, and raises :class:`NanLossError` as soon as a loss is not
finite. On CUDA it uses automatic mixed precision; on CPU it runs in float32 and is
repeatable for a given seed (models and batches are channels_last on both where
:func:`bench.models.device.channels_last` says so).

Divergence (:mod:`bench.engine.divergence`): ``fit`` keeps the loss of the first
training step (``start_loss``, in the first history entry) and flags each epoch whose
mean training loss is more than 10x that value (``diverged`` in every history entry,
and in ``fit``'s result). It only records: training goes on as before, so the numbers
of a run do not depend on the rule; the lr search leaves diverged candidates out.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto, whose bar calls iter() on a loader once more (test_reuse)

from bench.engine.divergence import DIVERGENCE_FACTOR, loss_diverged
from bench.env import seed_everything  # noqa: F401  (re-exported: bench.engine.train.seed_everything)
from bench.models.device import autocast, grad_scaler


class NanLossError(RuntimeError):
    """A training loss was NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(
            f"loss became {value} at epoch {epoch}, step {step}; the run stops here "
            "(try a lower --lr; the record keeps the history up to this point)"
        )
        self.epoch, self.step, self.value = epoch, step, value


def train_one_epoch(
    model: nn.Module,
    loader,
    loss_step: Callable[[nn.Module, object, torch.device], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    epoch: int,
    progress: bool,
) -> float:
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for step, batch in enumerate(bar):
        with autocast(device):
            loss = loss_step(model, batch, device)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NanLossError(epoch, step, value)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += value
        n += 1
        bar.set_postfix(loss=f"{value:.4f}")
    return total / max(n, 1)


def _score(value) -> float:
    """A validation score to maximize; missing or non-finite counts as the worst."""
    return -math.inf if value is None or not math.isfinite(value) else value


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    *,
    loss_step: Callable,
    evaluate: Callable[[nn.Module, object], dict],
    metric: str,
    lr: float,
    weight_decay: float,
    epochs: int,
    patience: int,
    device: torch.device,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train with early stopping on ``metric`` (higher is better).

    Returns ``{"history", "best_epoch", "best_val", "stopped_early", "start_loss",
    "diverged"}`` and leaves the best weights loaded in ``model``. Each history entry
    is ``{"epoch", "train_loss", "val", "best", "seconds", "diverged"}``, the first one
    also ``"start_loss"`` (the loss of the first step, before any update);
    ``diverged`` (result) is True when any epoch's mean train loss exceeded
    ``DIVERGENCE_FACTOR`` x ``start_loss`` (:mod:`bench.engine.divergence`).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scaler = grad_scaler(device)
    history: list[dict] = []
    best_val, best_epoch, best_state = -math.inf, -1, None
    stale = 0
    first: list[float] = []  # the loss of the first step, before any update

    def step(m, batch, dev):
        loss = loss_step(m, batch, dev)
        if not first:
            first.append(float(loss.detach()))
        return loss

    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(model, train_loader, step, optimizer, scaler, device, epoch, progress)
        val = evaluate(model, val_loader)
        score = _score(val.get(metric))
        improved = score > best_val
        if improved:
            best_val, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            stale += 1
        entry = {"epoch": epoch, "train_loss": train_loss, "val": val, "best": improved,
                 "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
        start = first[0] if first else None
        if epoch == 1:
            entry["start_loss"] = start
        entry["diverged"] = loss_diverged(train_loss, start, DIVERGENCE_FACTOR)
        history.append(entry)
        if on_epoch:
            on_epoch(entry)
        if stale >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_val": best_val if math.isfinite(best_val) else None,
        "stopped_early": len(history) < epochs,
        "start_loss": first[0] if first else None,
        "diverged": any(h["diverged"] for h in history),
    }
