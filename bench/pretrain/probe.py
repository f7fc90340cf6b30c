"""A linear probe of frozen pooled features: did a pretraining learn anything about the findings?

Owns :func:`linear_probe`: the encoder's global-average-pooled features of each
image (frozen, eval mode, resized, ImageNet-normalized like every pretraining
input), a logistic regression per label (scikit-learn's ``LogisticRegression`` on
standardized features) trained on a patient-level split of a labelled image set and
scored by ROC AUC (``roc_auc_score``) on the held-out patients. ``bench demo`` runs
it for every init on a synthetic corpus the pretrainings never saw, so a reader sees
whether each method learned something before reading the downstream table.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def pooled_features(encoder, images: np.ndarray, image_size: int, batch_size: int = 64) -> np.ndarray:
    """(N, D) pooled features of uint8 images (N, S, S), resized to ``image_size``."""
    from bench.pretrain.encoder import to_input

    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start:start + batch_size])).float().div(255).unsqueeze(1)
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False, antialias=True)  # fmt: skip
        out.append(encoder(to_input(x)).float().numpy())
    return np.concatenate(out)


def linear_probe(encoder, images: np.ndarray, labels: np.ndarray, mask: np.ndarray, names: list[str],
                 groups: list[str], *, image_size: int, seed: int = 0) -> dict:  # fmt: skip
    """ROC AUC per label on held-out patients; ``mean_auc`` over the labels that could be scored."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tasks.splits import assign_splits

    ids = [str(i) for i in range(len(images))]
    split = assign_splits(ids, dict(zip(ids, groups)), (0.7, 0.3, 0.0), salt=f"probe-{seed}")
    train = np.array([split[i] == "train" for i in ids])
    features = pooled_features(encoder, images, image_size)
    auc: dict[str, float | None] = {}
    for k, name in enumerate(names):
        known = mask[:, k] > 0
        tr, te = known & train, known & ~train
        y = labels[:, k]
        if len(set(y[tr])) < 2 or len(set(y[te])) < 2:
            auc[name] = None
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        clf.fit(features[tr], y[tr])
        auc[name] = float(roc_auc_score(y[te], clf.predict_proba(features[te])[:, 1]))
    scored = [v for v in auc.values() if v is not None]
    return {"auc": auc, "mean_auc": float(np.mean(scored)) if scored else None,
            "n_train": int(train.sum()), "n_test": int((~train).sum())}  # fmt: skip
