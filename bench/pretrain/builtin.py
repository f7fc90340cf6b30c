"""The built-in pretrained encoders: each method pretrained once on the built-in synthetic corpus.

Owns :func:`builtin_encoder`: ``bench run --init convirt`` (or simclr, moco, clip,
supervised) with no ``--checkpoint`` on the built-in synthetic downstream data
pretrains a small encoder of that method on the built-in synthetic image-report
corpus (``corpora.synth``, a seed space of its own, so it shares no image with the
downstream sets) the first time, says so loudly, and caches it under the weights
cache (``$CXRBENCH_WEIGHTS/builtin/``); later runs reuse it. The settings are
:data:`BUILTIN` (small: 64 px, a few epochs) and go into the folder name's hash, so
changing them pretrains again. With real downstream data nothing here is used: the
user pretrains with ``bench pretrain`` or passes ``--checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

BUILTIN_CORPUS = {"n_patients": 60, "seed": 7, "size": 128}
# the same small budget for every method; the recipe's loss settings otherwise
BUILTIN = {"image_size": 64, "epochs": 4, "batch_size": 32, "seed": 0}
BUILTIN_METHOD = {"moco": {"queue_size": 512, "lr": 0.03}, "simclr": {"lr": 1e-3, "crop_scale": 0.5}, "convirt": {"lr": 3e-4},
                  "clip": {"lr": 3e-4, "weight_decay": 0.01}, "supervised": {"lr": 1e-3}}  # fmt: skip


def builtin_corpus_root(progress: bool = True) -> Path:
    """The built-in synthetic pretraining corpus (MIMIC-CXR-JPG layout), generated on first use."""
    from bench.util import generate_once
    from corpora import synth
    from tasks.cache import cache_root

    c = BUILTIN_CORPUS
    root = cache_root() / "synthetic" / f"pretrain-p{c['n_patients']}-seed{c['seed']}-size{c['size']}"
    return generate_once(root, lambda tmp: synth(tmp, **c, progress=progress),
                         what="the built-in synthetic pretraining corpus")  # fmt: skip


def _settings(method: str, arch: str, out: Path):
    from bench.pretrain.settings import PretrainSettings

    return PretrainSettings(method=method, data=str(builtin_corpus_root()), out=str(out.parent), name=out.name,
                            arch=arch, device="cpu", **BUILTIN, **BUILTIN_METHOD.get(method, {}))  # fmt: skip


def builtin_encoder(method: str, arch: str, *, progress: bool = True) -> Path:
    """The encoder file of ``method`` pretrained on the built-in corpus (pretrained now if needed)."""
    from bench.pretrain.train import ENCODER_FILE, RECORD_FILE
    from bench.util import held_lock
    from weights_registry import weights_dir

    key = hashlib.sha256(json.dumps([method, arch, BUILTIN_CORPUS, BUILTIN, BUILTIN_METHOD.get(method)],
                                    sort_keys=True).encode()).hexdigest()[:10]  # fmt: skip
    out = weights_dir() / "builtin" / f"{method}-{arch}-{key}"
    record = out / RECORD_FILE
    done = lambda: record.exists() and json.loads(record.read_text()).get("status") == "done"  # noqa: E731
    if done():
        return out / ENCODER_FILE
    # the workers of a sweep on a fresh machine all ask for it at once: one pretrains, the
    # others wait and load its result (two writers in one folder would mix their epochs)
    with held_lock(out.parent / f".{out.name}.lock"):
        if not done():
            _pretrain_builtin(method, arch, out, progress)
    return out / ENCODER_FILE


def _pretrain_builtin(method: str, arch: str, out: Path, progress: bool) -> None:
    from bench.pretrain.train import pretrain

    print(
        f"\n!! --init {method} has no checkpoint: pretraining a small {method} {arch} on the built-in\n"
        f"!! SYNTHETIC image-report corpus once ({BUILTIN['epochs']} epochs at {BUILTIN['image_size']} px, CPU)\n"
        f"!! into {out}; later runs reuse it. For real data: bench pretrain --method {method} ...\n",
        file=sys.stderr,
    )  # fmt: skip
    pretrain(_settings(method, arch, out), resume=(out / "state.pt").exists(), progress=progress, register=False)
