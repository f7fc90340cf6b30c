"""ConVIRT: image-report contrastive pretraining (Zhang, Jiang, Miura, Manning, Langlotz, MLHC 2022).

Recipe: 512-d non-linear projections of the image and of the text, bidirectional
InfoNCE with temperature 0.1 weighted lambda 0.75 image->text / 0.25 text->image, one
sentence drawn at random from each report's findings and impression per sample, Adam
lr 1e-4 and weight decay 1e-6, batch 32; with a BERT text encoder from disk its
embeddings and first 6 transformer layers stay frozen. Image augmentations: crop,
affine, brightness/contrast, blur; no horizontal flip, because the sentences say
which side a finding is on.
"""

from __future__ import annotations

from torch import nn

from bench.pretrain.encoder import feature_dim, to_input
from bench.pretrain.heads import projection_mlp
from bench.pretrain.losses import convirt_loss
from bench.pretrain.methods import Method
from bench.pretrain.methods.text import image_sentence_dataset, text_encoder_for


class ConVIRT(nn.Module):
    def __init__(self, encoder: nn.Module, text_encoder: nn.Module, settings):
        super().__init__()
        d, t = feature_dim(encoder), text_encoder.out_dim
        self.encoder, self.text = encoder, text_encoder
        self.image_proj = projection_mlp(d, d, settings.proj_dim)
        self.text_proj = projection_mlp(t, t, settings.proj_dim)
        self.temperature, self.lam = settings.temperature, settings.lam

    def forward(self, batch):
        images, sentences = batch
        v = self.image_proj(self.encoder(to_input(images)))
        u = self.text_proj(self.text(list(sentences)))
        return convirt_loss(v, u, self.temperature, self.lam)


def _build(encoder, s, ctx):
    return ConVIRT(encoder, text_encoder_for(s, ctx, ctx.records, freeze=s.freeze_text_layers, pooling="max"), s)


METHOD = Method(
    name="convirt",
    title="ConVIRT",
    citation="Zhang, Jiang, Miura, Manning, Langlotz. Contrastive Learning of Medical Visual "
             "Representations from Paired Images and Text. MLHC 2022.",  # fmt: skip
    recipe="512-d projections, bidirectional InfoNCE tau 0.1, lambda 0.75, one sentence per sample, BERT layers 0-5 frozen",
    defaults=dict(image_size=224, epochs=50, batch_size=32, lr=1e-4, weight_decay=1e-6,
                  optimizer="adam", temperature=0.1, proj_dim=512, lam=0.75, text_encoder="builtin",
                  text_max_length=64, freeze_text_layers=6),  # fmt: skip
    build=_build,
    dataset=image_sentence_dataset,
    needs_reports=True,
)
