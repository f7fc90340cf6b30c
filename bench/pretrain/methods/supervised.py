"""Supervised pretraining: multi-label classification on the labels the pretraining data has.

The ``supervised`` initialization that never saw SIIM or RSNA: binary cross-entropy
over the corpus's labels (CheXpert's 14, MIMIC's CheXpert labels, the synthetic
findings), with uncertain (-1) and blank labels ignored (the "U-Ignore" policy of
Irvin et al. 2019) and labels that are never positive dropped. Recipe: Adam lr 1e-4,
batch 16, 3 epochs (CheXpert, Irvin et al. AAAI 2019), light augmentation (the
MoCo-CXR crop, flip and rotation).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from bench.pretrain.augment import moco_cxr_transform
from bench.pretrain.encoder import feature_dim, to_input
from bench.pretrain.methods import Method
from bench.pretrain.methods.items import ImageLabels


def label_matrix(records, names) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, mask, kept names): 1/0 where known, mask 0 for uncertain/blank; never-positive labels dropped."""
    raw = np.array([[float(r.labels.get(n, np.nan)) for n in names] for r in records], dtype=np.float64)
    raw = raw.reshape(len(records), len(names))
    known = np.isin(raw, (0.0, 1.0))
    keep = [k for k in range(len(names)) if (raw[:, k] == 1.0).any() and (raw[known[:, k], k] == 0.0).any()]
    labels = np.where(known, raw, 0.0)[:, keep]
    return labels, known[:, keep].astype(np.float64), [names[k] for k in keep]


class Supervised(nn.Module):
    def __init__(self, encoder: nn.Module, n_labels: int):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(feature_dim(encoder), n_labels)

    def forward(self, batch):
        images, labels, mask = batch
        logits = self.classifier(self.encoder(to_input(images)))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def _labels(ctx):
    if "labels" not in ctx.stats:
        labels, mask, names = label_matrix(ctx.records, list(ctx.corpus.label_names))
        if not names:
            raise ValueError(
                f"--method supervised needs image labels; the {ctx.corpus.layout} data at "
                f"{ctx.corpus.root} has no label that is both positive and negative somewhere"
            )
        ctx.stats["labels"] = {"names": names, "positives": [int(v) for v in (labels * mask).sum(0)],
                               "known": [int(v) for v in mask.sum(0)], "policy": "uncertain and blank ignored"}  # fmt: skip
        ctx.label_arrays = (labels, mask)
    return ctx.label_arrays


def _dataset(images, records, s, ctx):
    labels, mask = _labels(ctx)
    return ImageLabels(images, labels, mask, moco_cxr_transform(s.image_size))


def _build(encoder, s, ctx):
    labels, _ = _labels(ctx)
    return Supervised(encoder, labels.shape[1])


METHOD = Method(
    name="supervised",
    title="Supervised (multi-label)",
    citation="Irvin et al. CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and "
             "Expert Comparison. AAAI 2019.",  # fmt: skip
    recipe="multi-label BCE on the data's labels (uncertain/blank ignored), Adam 1e-4",
    defaults=dict(image_size=224, epochs=3, batch_size=16, lr=1e-4, weight_decay=0.0, optimizer="adam"),
    build=_build,
    dataset=_dataset,
    needs_labels=True,
    contrastive=False,
)
