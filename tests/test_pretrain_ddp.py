"""Two CPU processes (gloo) under DDP give the loss and gradients of one process on the global batch.

The world-size bugs of open_clip#616 and lightly#1977 made the DDP gradient of a
gathered contrastive loss differ from the single-process one; here each rank computes
the loss on its half of a global batch, DDP averages the gradients, and the result must
equal one process on the whole batch (float64, default tolerances). Checked twice: on
the bare losses with a tiny linear model, and on each method's own model as ``bench
pretrain`` builds it (SimCLR, ConVIRT and CLIP with the builtin text encoder, MoCo with
its queue and key encoder). MoCo's queue must receive both ranks' keys in rank order.
One spawn of two processes serves both checks (a spawn costs seconds). Last, ``bench
pretrain`` under ``torchrun`` with two processes, end to end.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from bench.pretrain.losses import LogitScale, MoCoQueue, clip_loss, convirt_loss, nt_xent

pytestmark = pytest.mark.skipif(
    not dist.is_available(), reason="torch.distributed is not available in this build"
)

WORLD, LOCAL = 2, 4  # ranks, rows per rank


LOSSES = ("nt_xent", "convirt", "clip")


class Net(nn.Module):
    """A tiny float64 model whose forward returns one loss: SimCLR on two views, or an image-text loss."""

    def __init__(self, loss: str):
        super().__init__()
        torch.manual_seed(0)
        self.loss, self.img = loss, nn.Linear(6, 3)
        if loss != "nt_xent":
            self.txt = nn.Linear(5, 3)
        if loss == "clip":
            self.scale = LogitScale()
        self.double()

    def forward(self, x, gather):
        if self.loss == "nt_xent":
            z = self.img(torch.cat([x["v1"], x["v2"]]))  # one forward for both views
            return nt_xent(*z.chunk(2), 0.1, gather=gather)
        img, txt = self.img(x["img"]), self.txt(x["txt"])
        if self.loss == "convirt":
            return convirt_loss(img, txt, 0.1, 0.75, gather=gather)
        return clip_loss(img, txt, self.scale(), gather=gather)


def _data():
    g = torch.Generator().manual_seed(1)
    n = WORLD * LOCAL
    return {k: torch.randn(n, d, generator=g, dtype=torch.float64)
            for k, d in (("v1", 6), ("v2", 6), ("img", 6), ("txt", 5))}  # fmt: skip


def _step(loss: str, x, gather: bool, ddp: bool = False):
    """(loss, gradients by name) of one step of ``Net(loss)`` on the rows ``x``."""
    model = Net(loss)
    net = nn.parallel.DistributedDataParallel(model) if ddp else model
    value = net(x, gather)
    value.backward()
    return value.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def _loss_results(rank):
    """This rank's part of the loss-level check: each loss under DDP, and a MoCoQueue filled twice."""
    x = {k: v[rank * LOCAL : (rank + 1) * LOCAL] for k, v in _data().items()}
    results = {name: _step(name, x, gather=True, ddp=True) for name in LOSSES}
    queue = MoCoQueue(3, size=10, seed=0)
    start = queue.queue.clone()
    g = torch.Generator().manual_seed(10 + rank)
    states = []
    for _ in range(2):  # 6 keys, then 6 more: wraps around
        queue.enqueue(torch.randn(3, 3, generator=g))
        states.append((queue.queue.clone(), int(queue.pointer)))
    return {"results": results, "start": start, "states": states}


def _worker(rank, port, out_dir, text_root):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result = _loss_results(rank)
        result["methods"] = _method_results(rank, out_dir, text_root)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_losses_and_queue_equal_one_process_on_the_global_batch(ddp_run):
    ranks = ddp_run["ranks"]
    for name in LOSSES:
        loss, grads = _step(name, _data(), gather=False)
        mean_loss = sum(r["results"][name][0] for r in ranks) / WORLD
        torch.testing.assert_close(mean_loss, loss, msg=f"{name}: loss")
        for r in ranks:
            for k, g in grads.items():
                torch.testing.assert_close(r["results"][name][1][k], g, msg=f"{name}: grad of {k}")
    assert grads["scale.log_scale"].abs() > 0  # CLIP's temperature is learned under DDP too

    # MoCo: every rank holds the same queue, both ranks' keys in rank order at the pointer
    keys = []
    for r in range(WORLD):
        g = torch.Generator().manual_seed(10 + r)
        keys.append(
            [nn.functional.normalize(torch.randn(3, 3, generator=g), dim=1) for _ in range(2)]
        )
    expected = ranks[0]["start"].clone()
    expected[0:6] = torch.cat([keys[0][0], keys[1][0]])
    first = expected.clone()
    rows = torch.cat([keys[0][1], keys[1][1]])
    expected[6:10], expected[0:2] = rows[:4], rows[4:]
    for r in ranks:
        torch.testing.assert_close(r["start"], ranks[0]["start"])
        torch.testing.assert_close(r["states"][0][0], first)
        assert r["states"][0][1] == 6
        torch.testing.assert_close(r["states"][1][0], expected)
        assert r["states"][1][1] == 2


# ----------------------------------------------------------------- the methods' own models
#
# The same check one level up: each method's model exactly as `bench pretrain` builds it
# (``get_method(name).build``: resnet18, the recipe's heads, the builtin text encoder),
# in float64 and eval mode (no dropout; BatchNorm uses its running statistics, so a
# sample's embedding does not depend on the rest of its batch), on fixed inputs. The
# single-process reference is computed here, before the spawn (no process group: every
# gather is the identity); each rank compares its own loss and gradients with it and
# sends back only what differs.

METHODS = ("simclr", "convirt", "clip", "moco")
SIZE, N = 32, WORLD * LOCAL  # image size, global batch
SENTENCES = [  # of 5-17 tokens: rank 1 pads its half to 13, rank 0 and the whole batch to 17
    "There is a small right apical pneumothorax without mediastinal shift.",
    "No focal consolidation.",
    "Moderate left pleural effusion with adjacent atelectasis, unchanged from the prior study.",
    "Patchy opacity in the right lower lobe may represent pneumonia in the appropriate setting.",
    "Mild cardiomegaly.",
    "Heart size is normal.",
    "Lungs are clear.",
    "No acute cardiopulmonary process is seen on this frontal radiograph.",
]
TEXT_LENGTH = 24


def _method_settings(name: str):
    from bench.pretrain.settings import PretrainSettings, resolve

    extra = {"moco": {"queue_size": 32}, "simclr": {}}.get(name, {"text_max_length": TEXT_LENGTH})
    return resolve(PretrainSettings(method=name, data=".", out=".", name="ddp", arch="resnet18",
                                    image_size=SIZE, batch_size=N, device="cpu", **extra))  # fmt: skip


def _method_model(name: str, text_root: str, rank: int = 0, world: int = 1):
    """The method's model as train.pretrain builds it (same seed), in float64 and eval mode."""
    from bench.pretrain.encoder import new_encoder
    from bench.pretrain.methods import Context, get_method

    ctx = Context(corpus=None, out_dir=Path(text_root), records=[], rank=rank, world=world,
                  device=torch.device("cpu"))  # fmt: skip
    torch.manual_seed(0)
    model = get_method(name).build(new_encoder("resnet18"), _method_settings(name), ctx)
    return model.double().eval()


def _method_batch(name: str, rows: slice = slice(None)):
    """The global batch (or its ``rows``) as the method's DataLoader gives it, fixed tensors for the views."""
    g = torch.Generator().manual_seed(2)
    first = torch.rand(N, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    second = torch.rand(N, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    if name in ("convirt", "clip"):
        return [first[rows], SENTENCES[rows]]
    return [first[rows], second[rows]]


def _method_step(name: str, model, batch, ddp: bool = False) -> dict:
    """One training step's loss and trainable gradients; for MoCo also the queue and a second step."""
    net = nn.parallel.DistributedDataParallel(model) if ddp else model
    out = {"start": model.queue.keys.clone() if name == "moco" else None}
    loss = net(batch)
    loss.backward()
    out["loss"] = loss.detach()
    out["grads"] = {k: None if p.grad is None else p.grad.detach().clone()
                    for k, p in model.named_parameters() if p.requires_grad}  # fmt: skip
    if name == "moco":
        from bench.pretrain.train import _optimizer

        out["queue"] = (model.queue.keys.clone(), int(model.queue.pointer))
        _optimizer(_method_settings(name), model).step()  # SGD, as the recipe trains it
        with torch.no_grad():  # the key encoder moves by momentum, the queue holds the first keys
            out["second_loss"] = net(batch).detach()
        out["second_queue"] = (model.queue.keys.clone(), int(model.queue.pointer))
    return out


def _differences(name: str, got: dict, ref: dict) -> list[str]:
    """What in one rank's step differs from the single-process reference (float64 default tolerances)."""
    bad = []

    def close(a, b, what):
        try:
            torch.testing.assert_close(a, b)
        except AssertionError as e:
            bad.append(f"{name}: {what}: {str(e).splitlines()[0:4]}")

    if set(got["grads"]) != set(ref["grads"]):
        bad.append(f"{name}: other trainable parameters")
    for k, g in got["grads"].items():
        if g is None or ref["grads"].get(k) is None:
            bad.append(f"{name}: no gradient for {k} (DDP needs every trainable parameter used)")
        else:
            close(g, ref["grads"][k], f"grad of {k}")
    if name == "moco":
        close(got["start"], ref["start"], "queue at start")
        for key in ("queue", "second_queue"):
            close(got[key][0], ref[key][0], key)
            if got[key][1] != ref[key][1]:
                bad.append(f"{name}: {key} pointer {got[key][1]} != {ref[key][1]}")
    return bad


def _method_results(rank, out_dir, text_root) -> dict:
    """This rank's part of the method-level check: its half of the batch under DDP, against the reference."""
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    results = {}
    for name in METHODS:
        got = _method_step(name, _method_model(name, text_root, rank, WORLD), _method_batch(name, rows), ddp=True)
        ref = torch.load(os.path.join(out_dir, f"ref-{name}.pt"))
        results[name] = {"loss": got["loss"], "second_loss": got.get("second_loss"),
                         "n_grads": len(got["grads"]), "bad": _differences(name, got, ref)}  # fmt: skip
        del got, ref
    return results


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The single-process references of the methods, then one spawn of the two ranks for both checks."""
    from bench.pretrain.text import build_builtin_text_encoder

    tmp = tmp_path_factory.mktemp("ddp")
    text_root = tmp / "text"  # ctx.out_dir: the methods load text_root/text_encoder
    build_builtin_text_encoder(SENTENCES, text_root / "text_encoder", seed=0, max_length=TEXT_LENGTH)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    refs = {}
    try:
        for name in METHODS:
            ref = _method_step(name, _method_model(name, str(text_root)), _method_batch(name))
            assert all(g is not None for g in ref["grads"].values()), f"{name}: a parameter without gradient"
            torch.save(ref, tmp / f"ref-{name}.pt")  # read by each rank, which sends back what differs
            refs[name] = {"loss": ref["loss"], "second_loss": ref.get("second_loss"),
                          "grad_max": {k: float(g.abs().max()) for k, g in ref["grads"].items()}}  # fmt: skip
            del ref
    finally:
        torch.set_num_threads(threads)
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp), str(text_root)), nprocs=WORLD, join=True)
    return {"ranks": [torch.load(tmp / f"{r}.pt") for r in range(WORLD)], "refs": refs}


def test_ddp_method_models_equal_one_process_on_the_global_batch(ddp_run):
    refs = ddp_run["refs"]
    ranks = [r["methods"] for r in ddp_run["ranks"]]
    for name in METHODS:
        for r in ranks:
            assert not r[name]["bad"], "\n".join(r[name]["bad"])
            assert r[name]["n_grads"] == len(refs[name]["grad_max"])
        mean = sum(r[name]["loss"] for r in ranks) / WORLD
        torch.testing.assert_close(mean, refs[name]["loss"], msg=f"{name}: loss")
        if name == "moco":  # the second step: after SGD, momentum update and the first keys queued
            mean = sum(r[name]["second_loss"] for r in ranks) / WORLD
            torch.testing.assert_close(mean, refs[name]["second_loss"], msg="moco: second loss")
    # the gradients compared are not trivially zero: the encoder's first and last layers, the heads
    for name, head in (("simclr", "projector.0.weight"), ("convirt", "text_proj.0.weight"),
                       ("clip", "logit_scale.log_scale"), ("moco", "online.1.0.weight")):  # fmt: skip
        grads = refs[name]["grad_max"]
        assert grads[head] > 0, (name, head)
        encoder = "online.0." if name == "moco" else "encoder."
        assert grads[encoder + "conv1.weight"] > 0 and grads[encoder + "layer4.1.conv2.weight"] > 0, name
    text = "text.model.encoder.layer.0.attention.self.query.weight"
    assert refs["convirt"]["grad_max"][text] > 0 and refs["clip"]["grad_max"][text] > 0


# ----------------------------------------------------------------- bench pretrain under torchrun


@pytest.mark.slow
def test_bench_pretrain_under_torchrun_with_two_processes(tmp_path):
    """Two ranks, one output: rank 0 writes the files and the catalogue entry, a step is a global batch."""
    import yaml

    import weights_registry as wr
    from bench.cli import main
    from corpora import read_corpus

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    assert main(["synth", "--task", "pretrain", "--out", str(corpus), "--n", "10", "--size", "64", "--quiet"]) == 0
    catalogue = tmp_path / "catalogue.yaml"
    env = {**os.environ, "CXRBENCH_CACHE": str(tmp_path / "cache"), "CXRBENCH_CATALOGUE": str(catalogue),
           "CXRBENCH_WEIGHTS": str(tmp_path / "weights"), "CXRBENCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "bench", "pretrain", "--method", "simclr", "--data", str(corpus), "--out", str(out),
               "--name", "ddp", "--arch", "resnet18", "--image-size", "32", "--epochs", "1",
               "--batch-size", "8", "--device", "cpu", "--quiet"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    (record_file,) = out.rglob("pretrain.json")
    assert record_file == out / "ddp" / "pretrain.json"
    record = json.loads(record_file.read_text())
    assert record["status"] == "done" and record["settings"]["batch_size"] == 8
    encoder, info = wr.load_encoder(out / "ddp" / "encoder.safetensors", "resnet18")
    assert info["tensors_loaded"] == info["tensors_expected"] and not info["partial"]
    assert info["sha256"] == record["sha256"]
    # each rank takes 4 of every global batch of 8 (DistributedSampler, drop_last): one epoch is
    # usable // 8 steps (not usable // 4 as with every rank on all the data, nor // 16)
    usable = len(read_corpus(str(corpus), None, views="frontal").records)
    assert usable >= 16 and usable % 8  # two steps, and a remainder that is dropped
    (epoch,) = record["history"]
    assert epoch["epoch"] == 1 and epoch["steps"] == usable // 8
    assert len((out / "ddp" / "log.jsonl").read_text().splitlines()) == 1  # written by rank 0 only
    entry = yaml.safe_load(catalogue.read_text())["ddp"]  # the user-catalogue entry, by rank 0
    assert entry["source"]["sha256"] == record["sha256"] and entry["pretraining"]["batch_size"] == 8
