"""CLIP on chest X-rays, as Müller et al. (2022) adapt it (Radford et al. ICML 2021).

Recipe: the same ResNet as every other method; CLIP's attention pooling over the C5
grid replaces global average pooling *for the loss only* (the exported encoder is
the plain ResNet), a linear projection of the text to the same 512-d space,
symmetric InfoNCE with a learnable temperature (initialized at 0.07, logit scale
clamped at 100) or a fixed one with ``--temperature``; AdamW lr 5e-4, weight decay
0.2 (CLIP's ResNet settings). One report sentence per sample, as for ConVIRT; the
text encoder is trained in full.
"""

from __future__ import annotations

from torch import nn

from bench.pretrain.encoder import c5, feature_dim, to_input
from bench.pretrain.heads import AttentionPool2d
from bench.pretrain.losses import LogitScale, clip_loss
from bench.pretrain.methods import Method
from bench.pretrain.methods.text import image_sentence_dataset, text_encoder_for


class CLIP(nn.Module):
    def __init__(self, encoder: nn.Module, text_encoder: nn.Module, settings):
        super().__init__()
        d = feature_dim(encoder)
        self.encoder, self.text = encoder, text_encoder
        grid = max(settings.image_size // 32, 1)
        self.attnpool = AttentionPool2d(grid, d, max(d // 64, 1), settings.proj_dim)
        self.text_proj = nn.Linear(text_encoder.out_dim, settings.proj_dim, bias=False)
        self.logit_scale = LogitScale(settings.temperature)

    def forward(self, batch):
        images, sentences = batch
        v = self.attnpool(c5(self.encoder, to_input(images)))
        u = self.text_proj(self.text(list(sentences)))
        return clip_loss(v, u, self.logit_scale())


def _build(encoder, s, ctx):
    return CLIP(encoder, text_encoder_for(s, ctx, ctx.records, freeze=s.freeze_text_layers, pooling="cls"), s)


METHOD = Method(
    name="clip",
    title="CLIP",
    citation="Radford et al. Learning Transferable Visual Models From Natural Language Supervision. "
             "ICML 2021. Müller, Kaissis, Rueckert. The Role of Local Alignment and Uniformity in "
             "Image-Text Contrastive Learning on Medical Images. 2022.",  # fmt: skip
    recipe="same ResNet, attention pooling on C5 for the loss only, symmetric InfoNCE, learnable temperature",
    defaults=dict(image_size=224, epochs=50, batch_size=128, lr=5e-4, weight_decay=0.2,
                  optimizer="adamw", proj_dim=512, text_encoder="builtin", text_max_length=64,
                  freeze_text_layers=0),  # fmt: skip
    build=_build,
    dataset=image_sentence_dataset,
    needs_reports=True,
)
