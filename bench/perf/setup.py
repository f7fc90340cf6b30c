"""The run that ``bench perf`` measures, built exactly as :func:`bench.engine.runner.execute` builds it.

Owns :class:`Setup` (the task, device, data root, initialization, prepared cache and
split of one :class:`~bench.engine.config.RunConfig`) and :class:`Trainer` (the head,
model, optimizer and scaler of one protocol, and :meth:`Trainer.train`, which runs
:func:`bench.engine.train.train_one_epoch` itself over the batches it is given, so the
timed step is the real one: autocast, the head's ``loss_step``, the NaN check,
backward, the optimizer step).
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from bench.engine.config import RunConfig
from bench.engine.dataroot import resolve_data_root
from bench.engine.train import seed_everything, train_one_epoch
from bench.engine.weights import load_weights
from bench.models.datasets import make_loader
from bench.models.device import channels_last, grad_scaler, resolve_device
from bench.models.heads import make_head
from bench.perf.meter import Counted
from bench.perf.settings import PerfSettings
from tasks.splits import fraction_indices, split_indices


def run_config(s: PerfSettings, protocol: str | None = None) -> RunConfig:
    """The RunConfig of the measured run (checked like any run's settings)."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    known = {k: v for k, v in s.options.items() if k in fields and v is not None}
    extra = {k: v for k, v in s.options.items() if k not in fields and v is not None}
    return RunConfig(task=s.task, init=s.init, protocol=protocol or s.protocol, arch=s.arch,
                     image_size=s.image_size, batch_size=s.batch_size, device=s.device,
                     data_root=s.data_root, num_workers=s.num_workers, detector=s.detector, seed=s.seed,
                     progress=s.progress, extra=extra, **known)  # fmt: skip


class Trainer:
    """One protocol's model as a run builds it, with the optimizer and scaler of ``fit``."""

    def __init__(self, setup: Setup, protocol: str):
        cfg = dataclasses.replace(setup.cfg, protocol=protocol)
        device = setup.device
        self.cfg, self.device, self.protocol = cfg, device, protocol
        self.head = make_head(cfg.output, cfg, setup.winfo, device)
        seed_everything(cfg.seed)
        # a copy: a detector reuses the encoder's modules, and each protocol needs its own
        model = self.head.build(copy.deepcopy(setup.encoder)).to(device)
        if channels_last(device):  # as bench run
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.resolved_lr, weight_decay=cfg.weight_decay)
        self.scaler = grad_scaler(device)

    @property
    def output(self) -> str:
        return self.cfg.output

    def train(self, batches) -> int:
        """Train on ``batches`` with the real loop; returns the number of images."""
        counted = Counted(batches)
        train_one_epoch(self.model, counted, self.head.loss_step, self.optimizer, self.scaler, self.device,
                        epoch=0, progress=False)  # fmt: skip
        return counted.images

    def loader(self, prepared, indices, *, train: bool):
        """The run's loader over ``indices`` of ``prepared`` (any Prepared-like object)."""
        return make_loader(self.head.dataset(prepared, indices), self.cfg.batch_size, train=train,
                           seed=self.cfg.seed, num_workers=self.cfg.num_workers,
                           collate_fn=self.head.collate)  # fmt: skip


class Setup:
    """Data and initialization of the measured run: what ``execute`` does before training."""

    def __init__(self, s: PerfSettings):
        self.settings = s
        self.cfg = run_config(s)
        self.device = resolve_device(s.device)
        if self.device.type == "cpu":
            torch.backends.cudnn.benchmark = False
        task = self.cfg.spec
        self.root, self.synthetic = resolve_data_root(s.task, s.data_root, progress=s.progress)
        seed_everything(s.seed)
        self.encoder, self.winfo = load_weights(self.cfg, synthetic=self.synthetic)
        self.prepared = task.prepare(self.root, s.image_size, strict=False, progress=s.progress,
                                     **task.option_values(self.cfg))  # fmt: skip
        self.splits = split_indices(self.prepared)
        self.train_idx = fraction_indices(self.prepared, self.splits["train"], 1.0)
        for name in ("train", "val"):
            if not self.splits[name]:
                raise ValueError(
                    f"the {name} split of {self.root} is empty; the dataset is too small"
                )

    def trainer(self, protocol: str | None = None) -> Trainer:
        return Trainer(self, protocol or self.cfg.protocol)
