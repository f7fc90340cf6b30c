"""MoCo v2 with MedAug positives (He et al. CVPR 2020; Chen et al. 2020; Vu et al. MLHC 2021).

Recipe: a momentum encoder (m 0.999) and a queue of 65,536 keys, InfoNCE with
temperature 0.2, a 2-layer MLP head to 128-d (MoCo v2), SGD lr 0.03, momentum 0.9,
weight decay 1e-4; MoCo-CXR augmentations (Sowrirajan et al. 2021: flip, rotation 10
degrees, crop). MedAug (Vu et al. 2021): the key is a *different* image drawn from the
query's group (``--positives same-study`` or ``same-patient``, filtered by
``--laterality``); a group with one image falls back to a second view of the query,
and how often that happens is printed and recorded. MoCo's shuffled BatchNorm is not
used (its purpose, hiding the batch from BatchNorm across GPUs, is left to
SyncBatchNorm-free DDP as in most reimplementations; noted in the record).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.pretrain.augment import moco_cxr_transform
from bench.pretrain.encoder import feature_dim, to_input
from bench.pretrain.heads import projection_mlp
from bench.pretrain.losses import MoCoQueue, moco_infonce, momentum_update
from bench.pretrain.methods import Method
from bench.pretrain.methods.items import TwoViews
from bench.pretrain.pairs import PositivePairs


class MoCo(nn.Module):
    def __init__(self, encoder: nn.Module, settings):
        super().__init__()
        d = feature_dim(encoder)
        self.online = nn.Sequential(encoder, projection_mlp(d, d, settings.proj_dim))
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.queue = MoCoQueue(settings.proj_dim, settings.queue_size)
        self.momentum, self.temperature = settings.momentum, settings.temperature

    @property
    def encoder(self) -> nn.Module:
        return self.online[0]

    def forward(self, batch):
        query, key = batch
        q = self.online(to_input(query))
        with torch.no_grad():
            momentum_update(self.online, self.target, self.momentum)
            k = self.target(to_input(key))
        loss = moco_infonce(q, k, self.queue.queue.clone(), self.temperature)
        self.queue.enqueue(k.detach())
        return loss


def _dataset(images, records, s, ctx):
    c = ctx.corpus
    pairs = PositivePairs(records, s.positives, s.laterality, has_studies=c.has_studies,
                          has_views=c.has_views, layout=c.layout)  # fmt: skip
    counts = pairs.counts()
    ctx.stats["positive_pairs"] = counts
    if s.positives != "same-image" and ctx.rank == 0:
        print(f"bench pretrain: MedAug positives {s.positives} / laterality {s.laterality}: "
              f"{pairs.fallback_fraction:.1%} of the images have no other image in their group "
              "and use a second view of themselves", flush=True)  # fmt: skip
    return TwoViews(images, moco_cxr_transform(s.image_size), pairs)


METHOD = Method(
    name="moco",
    title="MoCo v2 (MedAug positives)",
    citation="He, Fan, Wu, Xie, Girshick. Momentum Contrast for Unsupervised Visual Representation "
             "Learning. CVPR 2020. Chen, Fan, Girshick, He. Improved Baselines with Momentum "
             "Contrastive Learning. 2020. Vu, Wang, Balachandar, Liu, Ng, Rajpurkar. MedAug: "
             "Contrastive learning leveraging patient metadata improves representations for chest "
             "X-ray interpretation. MLHC 2021.",  # fmt: skip
    recipe="momentum 0.999, queue 65536, InfoNCE tau 0.2, MLP head; MoCo-CXR aug; MedAug --positives/--laterality",
    defaults=dict(image_size=224, epochs=200, batch_size=256, lr=0.03, weight_decay=1e-4,
                  optimizer="sgd", temperature=0.2, proj_dim=128, queue_size=65536, momentum=0.999,
                  positives="same-image", laterality="any"),  # fmt: skip
    build=lambda encoder, s, ctx: MoCo(encoder, s),
    dataset=_dataset,
)
