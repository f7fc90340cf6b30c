"""Build a torchvision ResNet encoder and load an initialization into it, strictly.

Owns ``load_encoder`` / ``build_encoder``: resolving ``init`` (catalogue name or
checkpoint path), reading the file safely (``weights_only`` unless trusted, or
safetensors), unwrapping containers, choosing the adapter, and the strict check
that every encoder tensor is present with the right shape (design.md 8.6: a
checkpoint whose prefix does not match must fail loudly, never run as random).
Returns the model and an info dict for the run record.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet

from .adapters import ADAPTERS, Adapted, detect_format, strip_prefix
from .catalogue import ARCHS, CHECKPOINT_SUFFIXES, InitEntry, get_entry, init_names
from .errors import (
    CheckpointMismatchError,
    HashMismatchError,
    UntrustedCheckpointError,
    UserCheckpointRequiredError,
    WeightsError,
)
from .fetch import _no_download_message, fetch_verified, sha256_file, verify_file
from .normalization import family_normalization, override_normalization

CONTAINER_KEYS = ("state_dict", "model", "module", "model_state", "model_state_dict", "net")
_SHOW = 10

# (blocks per stage, bottleneck) -> torchvision architecture
_ARCH_SHAPES = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


# --------------------------------------------------------------------------- model


def build_resnet(arch: str = "resnet50", in_channels: int = 3) -> ResNet:
    """A randomly initialized torchvision ResNet with ``fc = Identity`` and ``in_channels`` inputs."""
    if arch not in ARCHS:
        raise WeightsError(f"unsupported arch {arch!r}; choose one of {', '.join(ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    _set_in_channels(model, in_channels)
    return model


def _set_in_channels(model: ResNet, in_channels: int) -> None:
    if model.conv1.in_channels != in_channels:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)


def encoder_keys(model: nn.Module) -> list[str]:
    """The tensors a checkpoint must provide (``num_batches_tracked`` may be absent)."""
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def guess_arch(keys: Any) -> tuple[str | None, str]:
    """Guess the ResNet depth from encoder-level keys: (name or None, description)."""
    keys = list(keys)
    depths = []
    for i in range(1, 5):
        idx = [
            int(k.split(".")[1])
            for k in keys
            if k.startswith(f"layer{i}.") and k.split(".")[1].isdigit()
        ]
        depths.append(max(idx) + 1 if idx else 0)
    bottleneck = any(k.startswith("layer") and ".conv3." in k for k in keys)
    block = "Bottleneck" if bottleneck else "BasicBlock"
    return _ARCH_SHAPES.get((tuple(depths), bottleneck)), f"{block}, blocks per stage {depths}"


# ---------------------------------------------------------------------- checkpoint


def _reason(e: BaseException) -> str:
    """The one-line reason of an exception, never blank (``EOFError()`` has no message)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    if len(text) > 200:
        text = text[:200].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> Any:
    """Load a checkpoint file on CPU: safetensors, or torch.load with weights_only unless trusted.

    An unreadable file (empty, truncated, not a checkpoint) is a :class:`WeightsError`
    whose one-line message names the file and the reason.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise WeightsError(f"could not read checkpoint {path}: {_reason(e)}") from e
    if size == 0:
        raise WeightsError(f"could not read checkpoint {path}: the file is empty (0 bytes)")
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - SafetensorError is not importable portably
            raise WeightsError(
                f"could not read checkpoint {path}: not a valid .safetensors file ({_reason(e)}; "
                f"{size} bytes)"
            ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        if not _looks_like_torch_file(path):
            raise WeightsError(_not_torch_message(path, size)) from e
        if trust_checkpoint:
            raise WeightsError(f"could not read checkpoint {path}: {_reason(e)}") from e
        first = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
        raise UntrustedCheckpointError(
            f"{path} contains pickled Python objects besides tensors (e.g. Lightning "
            f"hyper_parameters), which torch.load(weights_only=True) refuses to run. "
            f"Pass --trust-checkpoint (Python: trust_checkpoint=True) only if you trust "
            f"where this file comes from: unpickling can execute arbitrary code. ({first})"
        ) from e
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises anything on a damaged file
        if not _looks_like_torch_file(path):
            raise WeightsError(_not_torch_message(path, size)) from e
        raise WeightsError(f"could not read checkpoint {path}: {_reason(e)} ({size} bytes)") from e


def _looks_like_torch_file(path: Path) -> bool:
    """Starts like torch.save's zip archive or a pickle (only asked once loading failed)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return magic == b"PK" or magic[:1] == b"\x80"


def _not_torch_message(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        magic = f.read(8)
    return (f"could not read checkpoint {path}: not a PyTorch checkpoint (it starts with {magic!r}, "
            f"neither a zip archive nor a pickle; {size} bytes)")  # fmt: skip


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: unwraps state_dict / model / module containers."""
    for _ in range(5):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next(
            (obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping | nn.Module)), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(
            f"the checkpoint holds a {type(obj).__name__}, not a state dict"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        top = ", ".join(map(str, list(obj)[:_SHOW]))
        raise CheckpointMismatchError(f"no tensors found in the checkpoint (top-level keys: {top})")
    return tensors


# ------------------------------------------------------------------------- loading


def _head(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def _normalize_prefix(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith(".") else prefix + "."


def _match(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    target = model.state_dict()
    expected = encoder_keys(model)
    loadable = {
        k: v for k, v in sd.items() if k in target and tuple(v.shape) == tuple(target[k].shape)
    }
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs encoder {tuple(target[k].shape)}"
        for k in sd
        if k in target and k not in loadable
    ]
    return {
        "in_channels": model.conv1.in_channels,
        "loadable": loadable,
        "expected": expected,
        "missing": [k for k in expected if k not in sd],
        "unexpected": sorted(k for k in sd if k not in target),
        "shape_mismatched": mismatched,
    }


def _mismatch_message(
    what: str, arch: str, m: dict[str, Any], adapted: Adapted, raw_sd: Mapping[str, torch.Tensor]
) -> str:
    n_ok = sum(1 for k in m["loadable"] if k in set(m["expected"]))
    lines = [
        f"{what} does not cover the {arch} encoder: {n_ok} of {len(m['expected'])} tensors match."
    ]
    for label, items in (
        ("missing", m["missing"]),
        ("unexpected", m["unexpected"]),
        ("shape mismatch", m["shape_mismatched"]),
    ):
        if items:
            lines.append(f"  {label} ({len(items)}): {_head(items)}")
    guessed, desc = guess_arch(adapted.state_dict)
    if guessed and guessed != arch:
        lines.append(
            f"  The checkpoint looks like {guessed} ({desc}) but arch={arch} was asked: use --arch {guessed}."
        )
    elif guessed is None and any(k.startswith("layer") for k in adapted.state_dict):
        lines.append(f"  The checkpoint is not a torchvision ResNet18/34/50 ({desc}).")
    conv1 = adapted.state_dict.get("conv1.weight")
    if (
        conv1 is not None
        and conv1.ndim == 4
        and any(s.startswith("conv1.weight") for s in m["shape_mismatched"])
    ):
        lines.append(
            f"  Its conv1 takes {conv1.shape[1]} input channel(s); the encoder was built for "
            f"{m['in_channels']} (the entry's in_channels)."
        )
    if n_ok == 0:
        fmt, other, n = detect_format(raw_sd, set(m["expected"]))
        if n:
            lines.append(
                f"  Its keys look like the {fmt!r} layout (prefix {other.prefix!r}, {n} tensors): "
                f"load the file as a path, or pass prefix={other.prefix!r} (--prefix)."
            )
        else:
            lines.append(f"  First keys of the checkpoint: {_head(list(raw_sd))}")
    lines.append("Pass allow_partial=True (--allow-partial) to load only the matching tensors.")
    return "\n".join(lines)


def _resolve_init(init: str | os.PathLike | InitEntry) -> tuple[InitEntry | None, Path | None]:
    if isinstance(init, InitEntry):
        return init, None
    text = os.fspath(init)
    if not isinstance(init, os.PathLike) and text in init_names():
        return get_entry(text), None
    path = Path(text).expanduser()
    if path.is_file():
        return None, path.resolve()
    if (
        isinstance(init, os.PathLike)
        or text.endswith(CHECKPOINT_SUFFIXES)
        or "/" in text
        or os.sep in text
    ):
        raise WeightsError(f"checkpoint file not found: {path.resolve()}")
    get_entry(text)  # raises UnknownInitError listing the known names
    raise AssertionError("unreachable")


def _load_info(**fields: Any) -> dict[str, Any]:
    """The run record's ``weights`` section: every key, with "nothing loaded" defaults."""
    info = {
        "init": None, "arch": None, "source": "none", "file": None, "sha256": None,
        "sha256_verified": None, "format": "none", "prefix": None, "tensors_loaded": 0,
        "tensors_expected": 0, "missing": [], "unexpected": [], "shape_mismatched": [],
        "ignored": [], "partial": False, "in_channels": None, "mean": None, "std": None,
        "normalization": None,
    }  # fmt: skip
    unknown = set(fields) - set(info)
    assert not unknown, unknown
    return {**info, **fields}


def _locate(
    entry: InitEntry, arch: str, checkpoint: str | os.PathLike | None, offline: bool | None
) -> tuple[Path, str, bool | None, str]:
    """The file for a catalogue entry: (path, sha256, verified, source)."""
    if checkpoint is None and entry.user_checkpoint:
        raise UserCheckpointRequiredError(_no_download_message(entry))
    if checkpoint is None and entry.local_file is not None:
        return _local(entry, arch)
    if checkpoint is None:
        if arch not in entry.archs:
            raise WeightsError(
                f"{entry.name!r} provides {', '.join(entry.archs)}, not {arch}; "
                f"pick --arch {entry.archs[0]} or pass your own --checkpoint"
            )
        path, sha, verified = fetch_verified(entry, arch, offline=offline)
        return path, sha, verified, entry.source(arch).url  # type: ignore[union-attr,return-value]

    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    sha, verified = sha256_file(path), None
    src = entry.source(arch)
    if src is not None and (src.sha256 or src.hash_prefix):
        try:
            verified = verify_file(path, src.sha256, src.hash_prefix, actual=sha)[1]
        except HashMismatchError:
            verified = False
            warnings.warn(
                f"{path} is not the catalogue's {entry.name!r} file for {arch} (hash differs); "
                "loading it as given.",
                stacklevel=3,
            )
    return path, sha, verified, str(path)


def _local(entry: InitEntry, arch: str) -> tuple[Path, str, bool, str]:
    """The file of a user-catalogue entry (``bench pretrain``), checked against its sha256."""
    assert entry.local_file is not None and entry.local_file.file
    if arch not in entry.archs:
        raise WeightsError(f"{entry.name!r} was pretrained as {', '.join(entry.archs)}, not {arch}: "
                           f"use --arch {entry.archs[0]}")  # fmt: skip
    path = Path(entry.local_file.file)
    if not path.is_file():
        from .user import user_catalogue_path

        raise WeightsError(
            f"{entry.name!r} (user catalogue {user_catalogue_path()}) points to {path}, which does "
            "not exist: rerun its `bench pretrain`, or remove the entry from that file"
        )
    sha = sha256_file(path)
    if sha != entry.local_file.sha256:
        raise HashMismatchError(
            f"{path} changed since `bench pretrain` wrote it for {entry.name!r}: sha256 {sha}, the "
            f"user catalogue says {entry.local_file.sha256}. Rerun the pretraining, or remove the entry."
        )
    return path, sha, True, str(path)


def load_encoder(
    init: str | os.PathLike | InitEntry,
    arch: str = "resnet50",
    *,
    checkpoint: str | os.PathLike | None = None,
    prefix: str | None = None,
    allow_partial: bool = False,
    trust_checkpoint: bool = False,
    offline: bool | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> tuple[ResNet, dict[str, Any]]:
    """Build a torchvision ResNet (fc = Identity) with ``init``'s weights, checked strictly.

    ``init`` is a catalogue name or a checkpoint path (.pth/.pt/.pth.tar/.ckpt/.safetensors).
    ``checkpoint`` supplies the file for a user_checkpoint entry, or replaces a catalogue
    entry's download. ``prefix`` strips exactly that prefix instead of the format's adapter.
    Every encoder tensor must be loaded with the right shape, else
    ``CheckpointMismatchError``; ``allow_partial=True`` loads what matches and says so.
    ``mean``/``std`` (one value or one per input channel) replace the normalization the
    catalogue or the checkpoint layout implies. Returns ``(model, info)``; info is meant
    for the run record.
    """
    if arch not in ARCHS:
        raise WeightsError(f"unsupported arch {arch!r}; choose one of {', '.join(ARCHS)}")
    entry, path = _resolve_init(init)
    if entry is not None and not entry.has_weights:
        if checkpoint is not None or prefix is not None:
            raise WeightsError(f"{entry.name!r} loads no weights; it takes no checkpoint or prefix")
        info = _load_info(init=entry.name, arch=arch, in_channels=entry.in_channels, mean=list(entry.mean),
                          std=list(entry.std), normalization=f"catalogue entry {entry.name!r}")  # fmt: skip
        info.update(_provenance(entry))
        return build_resnet(arch, entry.in_channels), override_normalization(info, mean, std)
    if entry is not None:
        init_name, fmt, in_channels = entry.name, entry.format, entry.in_channels
        path, sha, verified, source = _locate(entry, arch, checkpoint, offline)
    else:
        assert path is not None
        init_name, fmt, in_channels = os.fspath(init), "auto", None
        sha, verified, source = sha256_file(path), None, str(path)

    raw_sd = unwrap_state_dict(read_checkpoint(path, trust_checkpoint=trust_checkpoint))
    model = build_resnet(arch)
    fmt, adapted = _adapt(raw_sd, set(encoder_keys(model)), fmt, prefix)
    if in_channels is None:
        conv1 = adapted.state_dict.get("conv1.weight")
        in_channels = int(conv1.shape[1]) if conv1 is not None and conv1.ndim == 4 else 3
    _set_in_channels(model, in_channels)
    if entry is not None:
        init_mean, init_std = list(entry.mean), list(entry.std)
        norm = f"catalogue entry {entry.name!r}"
    else:
        init_mean, init_std, norm = family_normalization(fmt, in_channels)
    loaded = _load_checked(model, adapted, raw_sd, f"checkpoint {path} (format {fmt}, prefix {adapted.prefix!r})",
                           arch, allow_partial)  # fmt: skip
    info = _load_info(init=init_name, arch=arch, source=source, file=str(path), sha256=sha,
                      sha256_verified=verified, format=fmt, prefix=adapted.prefix, ignored=adapted.ignored,
                      in_channels=in_channels, mean=init_mean, std=init_std, normalization=norm,
                      **loaded)  # fmt: skip
    return model, override_normalization({**info, **_provenance(entry)}, mean, std)


def _adapt(raw_sd: dict, expected: set[str], fmt: str, prefix: str | None) -> tuple[str, Adapted]:
    """(format used, adapted state dict): an explicit prefix, auto-detection, or the entry's adapter."""
    if prefix is not None:
        return "prefix", strip_prefix(raw_sd, _normalize_prefix(prefix))
    if fmt == "auto":
        fmt, adapted, _ = detect_format(raw_sd, expected)
        return fmt, adapted
    return fmt, ADAPTERS[fmt](raw_sd, expected)


def _load_checked(model: ResNet, adapted: Adapted, raw_sd: dict, what: str, arch: str,
                  allow_partial: bool) -> dict[str, Any]:  # fmt: skip
    """Load the matching tensors into ``model``; fail unless complete (or partial is allowed)."""
    m = _match(model, adapted.state_dict)
    expected = set(encoder_keys(model))
    n_loaded = sum(1 for k in m["loadable"] if k in expected)
    complete = not (m["missing"] or m["unexpected"] or m["shape_mismatched"])
    if not complete and (not allow_partial or n_loaded == 0):
        raise CheckpointMismatchError(_mismatch_message(what, arch, m, adapted, raw_sd))
    result = model.load_state_dict(m["loadable"], strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    if not complete:
        warnings.warn(
            f"partial load of {what}: {n_loaded}/{len(m['expected'])} encoder tensors; "
            f"{len(m['missing'])} missing, {len(m['unexpected'])} unexpected, "
            f"{len(m['shape_mismatched'])} with the wrong shape keep their random init",
            stacklevel=3,
        )
    return {"tensors_loaded": n_loaded, "tensors_expected": len(m["expected"]), "missing": m["missing"],
            "unexpected": m["unexpected"], "shape_mismatched": m["shape_mismatched"],
            "partial": n_loaded < len(m["expected"])}  # fmt: skip


def _provenance(entry: InitEntry | None) -> dict[str, Any]:
    """What the catalogue knows about the data behind the weights (nothing, for a bare path)."""
    return {
        "pretrained_on": list(entry.pretrained_on) if entry else [],
        "seen_tasks": list(entry.seen_tasks) if entry else [],
        "citation": entry.citation if entry else None,
    }


def build_encoder(init: str | os.PathLike | InitEntry, arch: str = "resnet50", **kw: Any) -> ResNet:
    """``load_encoder(init, arch, **kw)[0]``: the design's contract (design.md section 3)."""
    return load_encoder(init, arch, **kw)[0]
