"""SimCLR: two augmented views of one image, NT-Xent (Chen, Kornblith, Norouzi, Hinton, ICML 2020).

Recipe: temperature 0.1, a 2-layer MLP projection to 128-d, grayscale augmentations
(random resized crop, flip, brightness/contrast, blur; no hue or saturation), as the
LoVT / Müller et al. (2022) chest X-ray baseline uses. The paper trains with LARS at
large batch; here Adam (lr 3e-4, weight decay 1e-6) is the default, which is what
small-batch SimCLR reimplementations use; the record says which values were taken.
``--crop-scale`` (the smallest crop, 0.08 in the recipe) is raised by the demo and the
built-in default: at 32-64 px a crop of 8% of the image leaves almost nothing to match
(measured on the demo corpus at 32 px, batch 32: after 3-4 epochs the loss was still
at chance, log 63 = 4.14, with 0.08, and 3.96 with 0.5).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.pretrain.augment import simclr_transform
from bench.pretrain.encoder import feature_dim, to_input
from bench.pretrain.heads import projection_mlp
from bench.pretrain.losses import nt_xent
from bench.pretrain.methods import Method
from bench.pretrain.methods.items import TwoViews


class SimCLR(nn.Module):
    def __init__(self, encoder: nn.Module, settings):
        super().__init__()
        d = feature_dim(encoder)
        self.encoder = encoder
        self.projector = projection_mlp(d, d, settings.proj_dim)
        self.temperature = settings.temperature

    def forward(self, batch):
        v1, v2 = batch
        z = self.projector(self.encoder(to_input(torch.cat([v1, v2]))))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.temperature)


METHOD = Method(
    name="simclr",
    title="SimCLR",
    citation="Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of "
             "Visual Representations. ICML 2020.",  # fmt: skip
    recipe="two views, NT-Xent tau 0.1, MLP projection to 128, crop/flip/brightness-contrast/blur",
    defaults=dict(image_size=224, epochs=100, batch_size=256, lr=3e-4, weight_decay=1e-6,
                  optimizer="adam", temperature=0.1, proj_dim=128, crop_scale=0.08),  # fmt: skip
    build=lambda encoder, s, ctx: SimCLR(encoder, s),
    dataset=lambda images, records, s, ctx: TwoViews(images, simclr_transform(s.image_size, s.crop_scale)),
)
