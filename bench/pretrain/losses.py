"""Owns: the contrastive pretraining losses (SimCLR, MoCo v2, ConVIRT, CLIP) and their state.

Every loss takes the *local* batch's embeddings. With ``gather=True`` under
``torch.distributed`` the candidates (positives and negatives) are the global batch
(:func:`bench.pretrain.distributed.gather_with_grad`), the anchors are the local rows,
their labels are offset by ``rank * local_batch``, and the loss is the mean over the
local anchors; DDP's averaging of the gradients then gives exactly the gradient of one
process on the global batch. Embeddings are L2-normalized inside, so callers pass the
projection heads' raw outputs.

Also here: :class:`MoCoQueue` (the ring buffer of negative keys), :func:`momentum_update`
(MoCo's key encoder) and :class:`LogitScale` (CLIP's learnable temperature).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.pretrain.distributed import gather_no_grad, gather_with_grad, world


def _candidates(x: Tensor, gather: bool) -> tuple[Tensor, int]:
    """The candidates (global batch when ``gather``) and the local rows' offset in them."""
    if not gather:
        return x, 0
    rank, size = world()
    return (gather_with_grad(x), rank * x.shape[0]) if size > 1 else (x, 0)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather: bool = True) -> Tensor:
    """NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR.

    Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning
    of Visual Representations" (ICML), eq. 1. For ``N`` pairs (global batch) each of the
    ``2N`` views is an anchor whose positive is the other view of its image and whose
    ``2N - 2`` negatives are all the other views; the loss is the mean over both
    directions (``z1`` anchors and ``z2`` anchors). τ = 0.1 as in LoVT's SimCLR baseline
    (Müller et al. 2022) on chest X-rays.

    Example::

        z1, z2 = head(encoder(view1)), head(encoder(view2))   # (B, D) each
        loss = nt_xent(z1, z2, temperature=0.1)
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    all1, offset = _candidates(z1, gather)
    all2, _ = _candidates(z2, gather)
    n, big_n = z1.shape[0], all1.shape[0]
    own = torch.arange(n, device=z1.device) + offset  # each anchor's row in the global batch
    is_self = own[:, None] == torch.arange(big_n, device=z1.device)[None, :]

    def direction(a: Tensor, same: Tensor, other: Tensor) -> Tensor:
        same_view = (a @ same.T / temperature).masked_fill(is_self, -math.inf)  # not a negative
        logits = torch.cat([same_view, a @ other.T / temperature], dim=1)  # (n, 2N)
        return F.cross_entropy(logits, own + big_n, reduction="sum")

    return (direction(z1, all1, all2) + direction(z2, all2, all1)) / (2 * n)


def moco_infonce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE with a queue of negatives, the MoCo v2 loss.

    He, Fan, Wu, Xie, Girshick 2020, "Momentum Contrast for Unsupervised Visual
    Representation Learning" (CVPR), eq. 1; Chen, Fan, Girshick, He 2020, "Improved
    Baselines with Momentum Contrastive Learning" (MoCo v2: MLP head, τ = 0.2). The
    positive of query ``q_i`` is its key ``k_i`` (a constant: no gradient), the
    negatives are the ``K`` queued keys (``queue``, already normalized, e.g.
    :attr:`MoCoQueue.queue`). The queue is copied here, so the caller may enqueue the
    new keys before ``backward()`` as MoCo does.

    Example::

        q, k = head_q(encoder_q(view1)), head_k(encoder_k(view2))
        loss = moco_infonce(q, k, queue.queue, temperature=0.2); queue.enqueue(k)
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.detach().to(q.dtype, copy=True).T
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCoQueue(nn.Module):
    """MoCo's queue: ``size`` normalized keys of dimension ``dim`` and a ring pointer.

    Starts as random normal vectors, normalized (as MoCo does), drawn from ``seed`` so
    that every rank starts from the same queue. :meth:`enqueue` gathers the keys of all
    ranks (in rank order) and writes them at the pointer, wrapping around. The state
    dict (``keys``, ``pointer``) is all a resume needs. MoCo v2's ``K`` is 65536.
    """

    def __init__(self, dim: int, size: int = 65536, seed: int | None = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.register_buffer(
            "keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        )
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def queue(self) -> Tensor:
        """The ``(K, D)`` keys (a view of the buffer: :func:`moco_infonce` copies it)."""
        return self.keys

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write this step's keys of all ranks at the pointer (oldest first out)."""
        keys = F.normalize(gather_no_grad(keys), dim=1).to(self.keys.dtype)
        size, count, start = self.keys.shape[0], keys.shape[0], int(self.pointer)
        if count > size:  # only the last ``size`` keys would survive
            keys, start = keys[-size:], start + count - size
        index = (start + torch.arange(keys.shape[0], device=self.keys.device)) % size
        self.keys.index_copy_(0, index, keys)
        self.pointer.fill_((int(self.pointer) + count) % size)


def momentum_update(online: nn.Module, target: nn.Module, m: float = 0.999) -> None:
    """``target ← m · target + (1 − m) · online`` for parameters; buffers are copied.

    MoCo's key encoder update (He et al. 2020, eq. 2; m = 0.999), through
    ``torch.optim.swa_utils.get_ema_multi_avg_fn`` (one fused lerp over the parameters).
    The two modules must have the same structure (a ``deepcopy`` of the online one).
    """
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    names = [n for n, _ in online.named_parameters()], [n for n, _ in target.named_parameters()]
    if names[0] != names[1]:
        raise ValueError("momentum_update: online and target modules have different parameters")
    with torch.no_grad():
        if names[0]:
            get_ema_multi_avg_fn(m)(
                list(target.parameters()), [p.detach() for p in online.parameters()], None
            )
        for b_target, b_online in zip(target.buffers(), online.buffers(), strict=True):
            b_target.copy_(b_online)


def _cross_modal(
    a: Tensor, b: Tensor, scale: Tensor | float, gather: bool
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropies a→b (a anchors, candidates all of b) and b→a; logits ``scale · cos``."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    all_a, offset = _candidates(a, gather)
    all_b, _ = _candidates(b, gather)
    labels = torch.arange(a.shape[0], device=a.device) + offset
    return F.cross_entropy(scale * a @ all_b.T, labels), F.cross_entropy(
        scale * b @ all_a.T, labels
    )


def convirt_loss(img: Tensor, txt: Tensor, temperature: float = 0.1, lam: float = 0.75,
                 gather: bool = True) -> Tensor:  # fmt: skip
    """ConVIRT's bidirectional InfoNCE between images and their reports.

    Zhang, Jiang, Miura, Manning, Langlotz 2020/2022, "Contrastive Learning of Medical
    Visual Representations from Paired Images and Text" (MLHC 2022), eqs. 2-4:
    ``λ · ℓ(image→text) + (1 − λ) · ℓ(text→image)`` with cosine similarity / τ;
    τ = 0.1, λ = 0.75 (LoVT's ConVIRT: ``global_a2b: 0.75``, ``global_b2a: 0.25``).

    Example::

        v, u = img_head(resnet(images)), txt_head(bert(sentences))   # (B, 512) each
        loss = convirt_loss(v, u, temperature=0.1, lam=0.75)
    """
    image_to_text, text_to_image = _cross_modal(img, txt, 1.0 / temperature, gather)
    return lam * image_to_text + (1.0 - lam) * text_to_image


def clip_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, gather: bool = True) -> Tensor:
    """CLIP's symmetric InfoNCE: the mean of the image→text and text→image cross-entropies.

    Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
    Supervision" (ICML), Figure 3: logits ``exp(logit_scale) · img @ txt.T`` on
    normalized embeddings, the temperature learned (:class:`LogitScale`).

    Example::

        scale = LogitScale()   # a module of the model, so the optimizer sees it
        loss = clip_loss(attnpool(c5), txt_proj(bert(reports)), scale())
    """
    image_to_text, text_to_image = _cross_modal(img, txt, logit_scale.exp(), gather)
    return (image_to_text + text_to_image) / 2


class LogitScale(nn.Module):
    """CLIP's temperature as a log-scale: learnable from ``log(1/0.07)``, exp() at most 100.

    With ``temperature=T`` it is fixed at ``log(1/T)`` (``requires_grad=False``). As in
    CLIP (and open_clip's ``clamp_(0, log 100)`` after each step) the value is clamped in
    place, here at each :meth:`forward`, so a scale pushed past 100 can come back down.
    """

    MAX_LOG = math.log(100.0)

    def __init__(self, temperature: float | None = None):
        super().__init__()
        if temperature is not None and temperature < 0.01:
            raise ValueError(f"LogitScale: temperature {temperature} is below CLIP's 1/100 floor")
        value = math.log(1.0 / (0.07 if temperature is None else temperature))
        self.log_scale = nn.Parameter(torch.tensor(value), requires_grad=temperature is None)

    def forward(self) -> Tensor:
        """The log-scale tensor (pass it to :func:`clip_loss`)."""
        with torch.no_grad():
            self.log_scale.clamp_(max=self.MAX_LOG)
        return self.log_scale
