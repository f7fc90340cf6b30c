"""Owns: the process group as the pretraining losses see it (rank, world size, gathers).

The contrastive losses compare each local anchor with the *global* batch, so their
candidates are gathered over the ranks. :func:`gather_with_grad` uses the functional
collective ``all_gather_single`` (what torch 2.14's deprecation of
``torch.distributed.nn.functional.all_gather`` points to), whose backward sums the
gradients that every rank's loss sends to this rank's rows; with a loss that is the mean over
its *local* anchors and DDP averaging the parameter gradients over ranks, the result
is exactly the gradient of one process on the global batch (the world-size factor
that open_clip#616 and lightly#1977 were about; ``tests/test_pretrain_ddp.py``
checks it). :func:`gather_no_grad` is for what must not carry gradients (MoCo keys).

Every rank must pass tensors of the same shape (``drop_last=True`` in the loader):
the losses offset their labels by ``rank * local_batch``. Without an initialized
process group everything here is the identity, so one code path serves both.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when ``torch.distributed`` is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """``x`` of every rank concatenated along dim 0, in rank order; gradients flow back."""
    if world()[1] == 1:
        return x
    # torch.distributed.nn.functional.all_gather does the same but is deprecated (torch 2.14)
    # in favour of this functional collective, which has autograd since then
    from torch.distributed._functional_collectives import all_gather_single

    return all_gather_single(x.contiguous(), 0, dist.group.WORLD)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """``x`` of every rank concatenated along dim 0, in rank order, detached."""
    _, size = world()
    x = x.detach()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
