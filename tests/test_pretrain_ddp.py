"""Two CPU processes (gloo) under DDP give the loss and gradients of one process on the global batch.

The world-size bugs of open_clip#616 and lightly#1977 made the DDP gradient of a
gathered contrastive loss differ from the single-process one; here each rank computes
the loss on its half of a global batch, DDP averages the gradients, and the result must
equal one process on the whole batch (float64, default tolerances). MoCo's queue must
receive both ranks' keys in rank order.
"""

import os
import socket

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


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x = {k: v[rank * LOCAL : (rank + 1) * LOCAL] for k, v in _data().items()}
        results = {name: _step(name, x, gather=True, ddp=True) for name in LOSSES}
        queue = MoCoQueue(3, size=10, seed=0)
        start = queue.queue.clone()
        g = torch.Generator().manual_seed(10 + rank)
        states = []
        for _ in range(2):  # 6 keys, then 6 more: wraps around
            queue.enqueue(torch.randn(3, 3, generator=g))
            states.append((queue.queue.clone(), int(queue.pointer)))
        torch.save(
            {"results": results, "start": start, "states": states},
            os.path.join(out_dir, f"{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_losses_and_queue_equal_one_process_on_the_global_batch(tmp_path):
    torch.multiprocessing.spawn(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True
    )
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
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
