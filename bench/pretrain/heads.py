"""Owns: the heads that pretraining puts on the encoder for its loss only.

:func:`projection_mlp` (SimCLR, MoCo v2, ConVIRT projections) and
:class:`AttentionPool2d` (CLIP's pooling over the C5 grid). Neither is exported: the
checkpoint ``bench pretrain`` writes is the plain torchvision ResNet, so downstream
protocols see the same encoder whatever head pretraining used.
"""

from __future__ import annotations

from timm.layers import AttentionPool2d as _TimmAttentionPool2d
from torch import nn


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """``layers`` Linear layers with ReLU between them and no BatchNorm.

    ``layers=2`` is MoCo v2's head (Chen et al. 2020, ``Linear(2048, 2048)-ReLU-
    Linear(2048, 128)``), SimCLR's ``g(h) = W2 σ(W1 h)`` as its paper writes it
    (Chen et al. 2020, §2.1; LoVT's SimCLR baseline, Müller et al. 2022, uses this form),
    and ConVIRT's non-linear projection (Zhang et al. 2020). No BatchNorm, so no
    per-rank batch statistics leak into the loss under DDP; ``layers=1`` is a linear
    projection (CLIP's text projection).
    """
    if layers < 1:
        raise ValueError(f"projection_mlp: layers must be >= 1, not {layers}")
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    modules: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        modules += [nn.Linear(d_in, d_out)] + ([nn.ReLU(inplace=True)] if i < layers - 1 else [])
    return nn.Sequential(*modules)


class AttentionPool2d(_TimmAttentionPool2d):
    """CLIP's attention pooling of a ``(B, C, H, W)`` feature map to ``(B, output_dim)``.

    Radford et al. 2021, ``ModifiedResNet.attnpool``: the spatial mean is prepended as a
    query token, a learned positional embedding for a ``grid × grid`` map is added, one
    multi-head attention layer runs and the mean token's output is projected to
    ``output_dim``. This is timm's implementation of it (``timm.layers.AttentionPool2d``,
    "based on impl in CLIP by OpenAI"), which resamples the positional embedding
    (bicubic) when ``H, W`` differ from ``grid``. For the loss only: the exported
    encoder is the plain ResNet. CLIP's RN50: ``grid=7`` (224 px), ``embed_dim=2048``,
    ``num_heads=32``, ``output_dim=1024``.
    """

    def __init__(self, grid: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__(in_features=embed_dim, feat_size=grid, out_features=output_dim,
                         embed_dim=embed_dim, num_heads=num_heads, qkv_separate=True)  # fmt: skip
