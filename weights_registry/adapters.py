"""Per-format state-dict converters: checkpoint keys -> torchvision ResNet keys.

One small function per ``format`` of the catalogue, collected in ``ADAPTERS``.
Each takes the unwrapped checkpoint state dict (``{key: tensor}``) and the set of
encoder keys it should map onto, and returns an ``Adapted``: the encoder-level
state dict (prefix stripped, renames applied, ``fc.*`` removed), the prefix used,
and a summary of what was deliberately left out. Checking that the result covers
the encoder is the loader's job, not the adapters'.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .errors import CheckpointMismatchError

StateDict = dict[str, torch.Tensor]


@dataclass
class Adapted:
    state_dict: StateDict
    prefix: str | None
    ignored: list[str] = field(default_factory=list)


def summarize_keys(keys: Iterable[str], depth: int = 2) -> list[str]:
    """Group keys by their first ``depth`` components: ['text.bert.* (201 tensors)', 'queue']."""
    groups: Counter[str] = Counter()
    singles: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        group = ".".join(parts[:depth]) + ".*" if len(parts) > depth else key
        groups[group] += 1
        singles[group] = key
    return [singles[g] if n == 1 else f"{g} ({n} tensors)" for g, n in sorted(groups.items())]


def _is_fc(key: str) -> bool:
    return key == "fc" or key.startswith("fc.")


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> Adapted:
    """Keep the keys under ``prefix`` (stripped), drop ``fc.*``; the rest is ignored."""
    inside = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    outside = [k for k in sd if not k.startswith(prefix)]
    fc = sorted(k for k in inside if _is_fc(k))
    encoder = {k: v for k, v in inside.items() if not _is_fc(k)}
    return Adapted(encoder, prefix, summarize_keys(outside) + fc)


def prefix_candidates(keys: Iterable[str], expected: Iterable[str]) -> list[tuple[str, int]]:
    """Prefixes that map checkpoint keys onto encoder keys, with how many, best first."""
    expected = set(expected)
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in expected:
                counts[".".join(parts[:i]) + "." if i else ""] += 1
                break
    return sorted(counts.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0]))


def _first_present(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> str:
    for p in prefixes:
        if any(k.startswith(p) for k in sd):
            return p
    return prefixes[0]


def _none(sd: Mapping[str, torch.Tensor], expected: set[str]) -> Adapted:
    return Adapted({}, None, summarize_keys(sd))


def _plain(sd: Mapping[str, torch.Tensor], expected: set[str]) -> Adapted:
    """A torchvision ResNet state dict as saved (torchvision, torchxrayvision)."""
    return strip_prefix(sd, "")


def _moco(sd: Mapping[str, torch.Tensor], expected: set[str]) -> Adapted:
    """MoCo training checkpoint: keep the query encoder; encoder_k, queue, fc are dropped."""
    return strip_prefix(sd, _first_present(sd, ("module.encoder_q.", "encoder_q.")))


def _gloria(sd: Mapping[str, torch.Tensor], expected: set[str]) -> Adapted:
    return strip_prefix(sd, "gloria.img_encoder.model.")


def _mgca(sd: Mapping[str, torch.Tensor], expected: set[str]) -> Adapted:
    """MGCA: like its own fine-tuning code, strip the prefix then rename 'blocks' -> 'layer'."""
    adapted = strip_prefix(sd, "img_encoder_q.model.")
    adapted.state_dict = {k.replace("blocks", "layer"): v for k, v in adapted.state_dict.items()}
    return adapted


def _lovt(sd: Mapping[str, torch.Tensor], expected: set[str]) -> Adapted:
    return strip_prefix(sd, "model_a.encoder.feature_extractor.backbone_layers.")


def _biovil(sd: Mapping[str, torch.Tensor], expected: set[str]) -> Adapted:
    return strip_prefix(sd, "encoder.encoder.")


def _lightning(sd: Mapping[str, torch.Tensor], expected: set[str]) -> Adapted:
    """Any wrapper: the prefix that maps the most tensors onto the encoder."""
    candidates = prefix_candidates(sd, expected)
    if not candidates:
        return strip_prefix(sd, "")
    best, n = candidates[0]
    ties = [p for p, m in candidates if m == n]
    if len(ties) > 1:
        listed = ", ".join(f"{p!r} ({n} tensors)" for p in ties)
        raise CheckpointMismatchError(
            f"several prefixes map equally many tensors onto the encoder: {listed}. "
            "Say which one holds the encoder with prefix=... (--prefix)."
        )
    return strip_prefix(sd, best)


Adapter = Callable[[Mapping[str, torch.Tensor], set[str]], Adapted]

ADAPTERS: dict[str, Adapter] = {
    "none": _none,
    "plain": _plain,
    "xrv": _plain,
    "moco": _moco,
    "gloria": _gloria,
    "mgca": _mgca,
    "lovt": _lovt,
    "biovil": _biovil,
    "lightning": _lightning,
}

# Tried in this order when a checkpoint path is given without a catalogue entry;
# the first layout mapping the most tensors wins, so specific layouts beat the
# generic prefix search on ties.
AUTODETECT_ORDER: tuple[str, ...] = (
    "plain",
    "moco",
    "gloria",
    "mgca",
    "lovt",
    "biovil",
    "lightning",
)


def count_matches(adapted: Adapted, expected: set[str]) -> int:
    return sum(1 for k in adapted.state_dict if k in expected)


def detect_format(sd: Mapping[str, torch.Tensor], expected: set[str]) -> tuple[str, Adapted, int]:
    """The known layout mapping the most tensors onto the encoder: (format, adapted, count)."""
    best: tuple[str, Adapted, int] | None = None
    for fmt in AUTODETECT_ORDER:
        try:
            adapted = ADAPTERS[fmt](sd, expected)
        except CheckpointMismatchError:
            continue
        n = count_matches(adapted, expected)
        if best is None or n > best[2]:
            best = (fmt, adapted, n)
    assert best is not None
    fmt, adapted, n = best
    if fmt == "plain" and _looks_like_xrv(sd):
        fmt = "xrv"
    return fmt, adapted, n


def _looks_like_xrv(sd: Mapping[str, torch.Tensor]) -> bool:
    conv1, fc = sd.get("conv1.weight"), sd.get("fc.weight")
    return (
        conv1 is not None
        and conv1.ndim == 4
        and conv1.shape[1] == 1
        and fc is not None
        and fc.shape[0] == 18
    )
