"""cxrbench weights registry: the catalogue of encoder initializations and their loader.

Owns which initializations exist (``catalogue.yaml``), fetching and verifying
their files (``fetch``), converting checkpoint layouts (``adapters``) and loading
them strictly into a torchvision ResNet (``loader``). This module only re-exports
the public API::

    model = build_encoder("imagenet", arch="resnet50")
    model, info = load_encoder("gloria", checkpoint="chexpert_resnet50.ckpt", trust_checkpoint=True)
"""

from __future__ import annotations

from .catalogue import ARCHS, InitEntry, SourceFile, check_leakage, get_entry, list_inits
from .describe import describe, table
from .errors import (
    CatalogueError,
    CheckpointMismatchError,
    HashMismatchError,
    UnknownInitError,
    UntrustedCheckpointError,
    UserCheckpointRequiredError,
    WeightsError,
    WeightsUnavailableError,
)
from .fetch import cache_path, fetch, is_cached, sha256_file, verify_file, weights_dir
from .loader import build_encoder, build_resnet, load_encoder

__all__ = [
    "ARCHS",
    "CatalogueError",
    "CheckpointMismatchError",
    "HashMismatchError",
    "InitEntry",
    "SourceFile",
    "UnknownInitError",
    "UntrustedCheckpointError",
    "UserCheckpointRequiredError",
    "WeightsError",
    "WeightsUnavailableError",
    "build_encoder",
    "build_resnet",
    "cache_path",
    "check_leakage",
    "describe",
    "fetch",
    "get_entry",
    "is_cached",
    "list_inits",
    "load_encoder",
    "sha256_file",
    "table",
    "verify_file",
    "weights_dir",
]
