"""Pretraining throughput per method (``bench pretrain``), on synthetic tensors and sentences.

For each method the model is built as :func:`bench.pretrain.train.pretrain` builds it
(the settings resolved over the method's recipe, here at the measured image size and
batch size; ``method.build`` around a new encoder, with the builtin text encoder for the
image-text methods, trained on a few report sentences; ``method.dataset`` for one batch
with the method's own augmentations; the recipe's optimizer), and the loop's own
step (:func:`bench.pretrain.train._train_epoch`: autocast, the loss, backward, the
optimizer and scheduler) is timed on that batch already on the device. ``ips`` counts
samples of the batch, as the pretraining log does (SimCLR and MoCo push two views of
each through the encoder). The corpus is in memory: random uint8 images and records
with reports and labels (:func:`synthetic_corpus`), nothing read from disk.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.models.device import channels_last as nhwc
from bench.perf.meter import Path as PerfPath
from bench.perf.meter import side_by_side

SENTENCES = (
    ("The heart size is normal. The lungs are clear.", "No acute cardiopulmonary process."),
    ("There is a small right apical pneumothorax.", "Small right pneumothorax."),
    ("Patchy opacity in the left lower lobe.", "Findings concerning for pneumonia."),
    ("No pleural effusion or pneumothorax. Mild cardiomegaly.", "Stable mild cardiomegaly."),
)
LABELS = ("Pneumothorax", "Pneumonia")


def synthetic_corpus(root: Path, n: int, size: int, seed: int = 0):
    """(Corpus, uint8 images (n, size, size)): in-memory records with reports, studies, views, labels."""
    from corpora.records import Corpus, ImageRecord, Report

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    records = []
    for i in range(n):
        findings, impression = SENTENCES[i % len(SENTENCES)]
        records.append(ImageRecord(
            image_id=f"perf-{i}", path=root / f"perf-{i}.png", patient_id=f"p{i // 2}", study_id=f"s{i}",
            view="PA", frontal=True, report=Report(findings, impression),
            labels={LABELS[0]: float(i % 2), LABELS[1]: float((i // 2) % 2)},
        ))  # fmt: skip
    corpus = Corpus(layout="perf-synthetic", dataset="bench perf synthetic tensors", root=root, records=records,
                    label_names=LABELS, has_reports=True, has_studies=True, has_views=True,
                    synthetic=True)  # fmt: skip
    return corpus, images


class _Method:
    """One method's model, optimizer and batch on the device, as the pretraining loop has them."""

    def __init__(self, name: str, s, device: torch.device, corpus, images, out: Path):
        from bench.env import seed_everything
        from bench.models.device import grad_scaler
        from bench.pretrain.encoder import new_encoder
        from bench.pretrain.methods import Context, get_method
        from bench.pretrain.settings import PretrainSettings, resolve
        from bench.pretrain.train import _optimizer, _to

        t0 = time.perf_counter()
        self.settings = resolve(PretrainSettings(method=name, data=str(corpus.root), out=str(out), name=f"perf-{name}",
                                                 arch=s.arch, image_size=s.image_size, batch_size=s.batch_size,
                                                 device=str(device), seed=s.seed))  # fmt: skip
        method = get_method(name)
        ctx = Context(
            corpus=corpus, out_dir=out / "pretrain", records=corpus.records, device=device
        )
        seed_everything(s.seed)
        model = method.build(new_encoder(s.arch), self.settings, ctx)
        dataset = method.dataset(images, corpus.records, self.settings, ctx)
        self.channels_last = nhwc(device)  # as bench pretrain
        self.model = (
            model.to(device, memory_format=torch.channels_last)
            if self.channels_last
            else model.to(device)
        )
        loader = torch.utils.data.DataLoader(dataset, batch_size=s.batch_size, drop_last=True, shuffle=True,
                                             generator=torch.Generator().manual_seed(s.seed))  # fmt: skip
        self.batch = _to(next(iter(loader)), device, self.channels_last)
        self.optimizer = _optimizer(self.settings, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.scaler = grad_scaler(device)
        self.device = device
        self.build_s = time.perf_counter() - t0
        self.text_encoder = ctx.stats.get("text_encoder")

    def run(self, n: int) -> int:
        from bench.pretrain.train import _train_epoch

        entry = _train_epoch(self.model, self.model, [self.batch] * n, self.optimizer, self.scheduler, self.scaler,
                             self.device, 0, False, self.channels_last)  # fmt: skip
        if "nan" in entry:
            step, value = entry["nan"]
            raise FloatingPointError(f"loss became {value} at step {step}")
        return n * len(self.batch[0])


def measure_pretraining(s, device: torch.device, out: Path) -> dict:
    """``{method: {"ips", "build_s", "batch_size", "image_size", ...}}`` for ``s.methods``."""
    results: dict[str, dict] = {}
    if not s.methods:
        return results
    n = max(2 * s.batch_size, 8)
    corpus, images = synthetic_corpus(out / "corpus", n, s.image_size, s.seed)
    steps = s.resolved_pretrain_steps
    for name in s.methods:
        if s.progress:
            print(f"perf: pretraining {name}", file=sys.stderr, flush=True)
        try:
            m = _Method(name, s, device, corpus, images, out)
            meter = side_by_side([PerfPath(name, m.run)], device=device, steps=steps, warmup=s.warmup,
                                 rounds=min(s.resolved_rounds, steps), progress=s.progress, label=f"pretrain {name}")[name]  # fmt: skip
        except (FloatingPointError, RuntimeError, ValueError) as e:
            results[name] = {"ips": None, "error": f"{type(e).__name__}: {e}"}
            continue
        r = {"ips": meter.ips, "steps": meter.steps, "batch_size": s.batch_size, "image_size": s.image_size,
             "optimizer": m.settings.optimizer, "build_s": m.build_s, "memory": meter.memory()}  # fmt: skip
        if m.text_encoder:
            r["text_encoder"] = "builtin (trained on the synthetic sentences)"
        results[name] = r
        del m
    return results
