"""Encoder-feature reuse (bench.models.reuse): the same record metrics as running the encoder
every epoch, the record says which path ran, the disk-backed store, and the loader is
iterated once per epoch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.engine.config import RunConfig
from bench.engine.runner import execute
from bench.engine.train import train_one_epoch
from bench.models.device import grad_scaler
from bench.models.reuse import ReplayLoader, reuse_decision
from tasks import get_task

BATCH = 8


def _split_file(tmp_path, task: str) -> str:
    """A split of the built-in data into 96/48/56 images: every batch of 8 is full (CPU
    convolution kernels round differently for another batch size, see bench.models.reuse)."""
    from bench.engine.dataroot import resolve_data_root

    root, _ = resolve_data_root(task, None, progress=False)
    ids = get_task(task).prepare(root, 64, strict=False, progress=False).ids
    assert len(ids) == 200
    path = tmp_path / f"{task}-split.csv"
    path.write_text("id,split\n" + "".join(f"{i},{'train' if k < 96 else 'val' if k < 144 else 'test'}\n"
                                           for k, i in enumerate(ids)))  # fmt: skip
    return str(path)


def _run(tmp_path, task, protocol, reuse, epochs=2, batch_size=BATCH):
    cfg = RunConfig(task=task, init="random", protocol=protocol, arch="resnet18", image_size=64, epochs=epochs,
                    batch_size=batch_size, device="cpu", out=str(tmp_path / f"{protocol}-{reuse}"), progress=False,
                    feature_reuse=reuse, split_file=_split_file(tmp_path, task))  # fmt: skip
    return execute(cfg)


@pytest.mark.parametrize("task,protocol", [("siim", "linear"), ("siim", "frozen"), ("rsna", "frozen")])
def test_reuse_gives_the_same_metrics(tmp_path, task, protocol):
    with_reuse = _run(tmp_path, task, protocol, True)
    without = _run(tmp_path, task, protocol, False)
    assert with_reuse["run_id"] == without["run_id"]  # an implementation detail, not a setting
    assert with_reuse["feature_reuse"]["used"] is True
    assert with_reuse["feature_reuse"]["storage"] == "memory"
    assert with_reuse["feature_reuse"]["images"] == with_reuse["data"]["n_images"]
    assert with_reuse["feature_reuse"]["bytes"] > 0
    assert without["feature_reuse"] == {"used": False, "reason": "turned off (--no-feature-reuse)"}
    assert with_reuse["metrics"] == without["metrics"]
    assert [h["train_loss"] for h in with_reuse["history"]] == [h["train_loss"] for h in without["history"]]
    assert with_reuse["parameters"] == without["parameters"]  # the encoder is back in the model


def test_disk_backed_features_give_the_same_metrics(tmp_path, monkeypatch, cache):
    memory = _run(tmp_path, "siim", "linear", True, epochs=1)
    monkeypatch.setenv("CXRBENCH_FEATURE_MEMORY_GB", "0")
    (tmp_path / "b").mkdir()
    disk = _run(tmp_path / "b", "siim", "linear", True, epochs=1)
    assert disk["feature_reuse"]["storage"] == "disk"
    assert disk["metrics"] == memory["metrics"]
    assert not any((cache / "features").iterdir())  # the memmap folder is gone after the run


def test_finetune_never_reuses():
    assert reuse_decision("finetune", True) == (False, "finetune trains the encoder")
    assert reuse_decision("linear", True)[0] and reuse_decision("frozen", True)[0]
    assert not reuse_decision("frozen", False)[0]


def test_cli_flag_turns_reuse_off(tmp_path):
    out = tmp_path / "runs"
    base = [sys.executable, "-m", "bench", "run", "--task", "siim", "--init", "random", "--protocol", "linear",
            "--arch", "resnet18", "--image-size", "64", "--epochs", "1", "--device", "cpu", "--quiet",
            "--out", str(out)]  # fmt: skip
    for extra, used in (([], True), (["--no-feature-reuse"], False)):
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        record = json.loads(Path(json.loads(proc.stdout.strip().splitlines()[-1])["record"]).read_text())
        assert record["feature_reuse"]["used"] is used
    assert len(list(out.glob("*.json"))) == 1  # one run id: reuse is not a setting
    assert "--no-feature-reuse" in subprocess.run([sys.executable, "-m", "bench", "run", "--help"],
                                                  capture_output=True, text=True).stdout  # fmt: skip


class _CountingLoader:
    def __init__(self, batches):
        self.batches, self.iters = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.iters += 1
        return iter(self.batches)


def test_training_epoch_iterates_its_loader_once():
    """tqdm.auto's bar calls iter() on the loader in its constructor: one more DataLoader
    iterator per epoch (a shuffle drawn and thrown away, workers started twice)."""
    model = torch.nn.Linear(2, 1)
    batches = [(torch.ones(3, 2), torch.zeros(3, 1), torch.arange(3))] * 2
    loader = _CountingLoader(batches)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(m, b, d):
        return torch.nn.functional.mse_loss(m(b[0]), b[1])

    dev = torch.device("cpu")
    for progress in (False, True):
        loader.iters = 0
        train_one_epoch(model, loader, step, opt, grad_scaler(dev), dev, 1, progress)
        assert loader.iters == 1
    assert len(ReplayLoader(loader, replay=None)) == 2
