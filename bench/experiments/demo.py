"""`bench demo`: the whole benchmark in miniature, on synthetic data, in minutes on a laptop.

1. writes a synthetic SIIM dataset in the Kaggle layout (``bench synth``);
2. pretrains a small ``supervised`` ResNet18 on a *separate* synthetic set with
   image-level labels (pneumothorax yes/no), saved as a plain torchvision
   checkpoint, so the demo compares two real initializations through the real
   checkpoint loader;
3. runs it and ``random`` under linear / frozen / finetune at two label fractions and
   two seeds (24 runs; finished runs are skipped when the demo is run again);
4. writes ``reports/demo.md`` with its figure.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bench.engine.config import PROTOCOLS, RunConfig
from bench.engine.dataroot import announce_synthetic
from bench.engine.records import read_record, record_path

DEMO = {
    "n": 200,
    "pretrain_n": 300,
    "synth_size": 128,
    "image_size": 64,
    "arch": "resnet18",
    "epochs": 8,
    "patience": 3,
    "batch_size": 16,
    "fractions": (0.1, 1.0),
    "seeds": (0, 1),
    "pretrain_epochs": 6,
    "lr": 1e-3,
}
QUICK = {**DEMO, "n": 60, "pretrain_n": 60, "synth_size": 64, "epochs": 2, "seeds": (0,),
         "fractions": (0.5, 1.0), "pretrain_epochs": 1}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pretrain_supervised(data_root: Path, out_file: Path, settings: dict, progress: bool) -> Path:
    """Train a ResNet classifier on image-level labels; save a plain torchvision state dict."""
    import torchvision

    from bench.engine.train import seed_everything
    from tasks.siim import prepare

    if out_file.exists():
        return out_file
    prepared = prepare(data_root, settings["image_size"], progress=progress)
    images = torch.from_numpy(np.array(prepared.images))  # a writable copy of the memmap
    labels = torch.from_numpy(np.asarray(prepared.masks).reshape(len(images), -1).max(1) > 0).float()
    seed_everything(1234)
    model = getattr(torchvision.models, settings["arch"])(weights=None, num_classes=1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(1234)
    epochs = settings["pretrain_epochs"]
    bar = tqdm(range(epochs), desc="pretrain supervised", disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(len(images), generator=gen)
        correct = 0
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            x = (images[idx].float().div(255).unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std
            logits = model(x)[:, 0]
            loss = loss_fn(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int(((logits > 0).float() == labels[idx]).sum())
        bar.set_postfix(train_acc=f"{correct / len(images):.2f}")
    from bench.util import atomic_write

    return atomic_write(out_file, lambda f: torch.save(model.state_dict(), f), binary=True)


def demo_configs(out: Path, data_root: Path, checkpoint: Path, s: dict) -> list[RunConfig]:
    inits = [("random", None), (str(checkpoint), "supervised-synth")]
    configs = []
    for (init, name), protocol, fraction, seed in itertools.product(
        inits, PROTOCOLS, s["fractions"], s["seeds"]
    ):
        configs.append(
            RunConfig(
                task="siim", init=init, init_name=name, protocol=protocol, fraction=fraction,
                seed=seed, data_root=str(data_root), out=str(out / "records"), arch=s["arch"],
                image_size=s["image_size"], epochs=s["epochs"], patience=s["patience"],
                batch_size=s["batch_size"], lr=s["lr"], device="cpu", progress=False,
            )
        )
    return configs


def run_demo(out: Path, report: Path, quick: bool = False, progress: bool = True) -> Path:
    from bench.engine.runner import RunFailed, execute
    from bench.reporting.report import write_report
    from tasks.siim import synth, synth_pretrain

    s = QUICK if quick else DEMO
    t0 = time.perf_counter()
    data_root = out / "data" / "siim"
    pretrain_root = out / "data" / "siim-pretrain"
    for make, root, n in ((synth, data_root, s["n"]), (synth_pretrain, pretrain_root, s["pretrain_n"])):
        if not (root / "train-rle.csv").exists():
            make(root, n=n, seed=0, size=s["synth_size"], progress=progress)
    announce_synthetic(out / "data")
    checkpoint = pretrain_supervised(
        pretrain_root, out / f"supervised-synth-{s['arch']}.pth", s, progress
    )
    configs = demo_configs(out, data_root, checkpoint, s)
    failed = 0
    bar = tqdm(configs, desc="demo runs", disable=not progress, unit="run")
    for cfg in bar:
        bar.set_postfix_str(f"{cfg.init_label} {cfg.protocol} {cfg.fraction:g} s{cfg.seed}")
        path = record_path(cfg.out, cfg.run_id)
        if path.exists() and read_record(path).get("status") == "complete":
            continue
        try:
            execute(cfg)
        except RunFailed as e:
            failed += 1
            print(f"demo: {e}", file=sys.stderr)
    written = write_report(out / "records", report)
    print(
        f"demo: {len(configs) - failed}/{len(configs)} runs complete in "
        f"{time.perf_counter() - t0:.0f}s; report {written}",
        file=sys.stderr,
    )
    return written
