"""The catalogue of initializations: reads and validates ``catalogue.yaml``.

Owns the ``InitEntry`` / ``SourceFile`` dataclasses, the list of supported
architectures, and name lookup (``list_inits``, ``get_entry``) over the packaged
catalogue plus the user catalogue of ``bench pretrain`` entries
(:mod:`weights_registry.user`). The data itself lives in ``catalogue.yaml`` next to
this file; nothing here knows about a particular initialization.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .adapters import ADAPTERS
from .errors import CatalogueError, UnknownInitError

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (
    ".pth",
    ".pt",
    ".pth.tar",
    ".tar",
    ".ckpt",
    ".safetensors",
    ".bin",
)

_REQUIRED = ("description", "archs", "format", "in_channels", "mean", "std", "pretrained_on",
             "seen_tasks", "note", "citation")  # fmt: skip
_OPTIONAL = ("source", "user_checkpoint", "pretraining")
_SOURCE_KEYS = ("homepage", "url", "file", "sha256", "hash_prefix")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class SourceFile:
    """Where one architecture's weights file of an entry comes from."""

    url: str | None
    file: str | None
    sha256: str | None = None
    hash_prefix: str | None = None


@dataclass(frozen=True)
class InitEntry:
    """One initialization of the catalogue (see catalogue.yaml for the field meanings)."""

    name: str
    description: str
    archs: tuple[str, ...]
    format: str
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pretrained_on: tuple[str, ...]
    seen_tasks: tuple[str, ...]
    note: str
    citation: str
    user_checkpoint: bool = False
    homepage: str | None = None
    file_hint: str | None = None
    sources: Mapping[str, SourceFile] = field(default_factory=dict, hash=False)
    # a file on this machine (entries written by `bench pretrain`): absolute path + sha256
    local_file: SourceFile | None = None
    # how `bench pretrain` made it (method, data, layout, epochs, ...); None for the packaged entries
    pretraining: Mapping[str, Any] | None = field(default=None, hash=False)

    def source(self, arch: str) -> SourceFile | None:
        """The download source for ``arch``, or None (random, user checkpoints)."""
        return self.sources.get(arch)

    @property
    def has_weights(self) -> bool:
        return self.format != "none"

    @property
    def downloadable(self) -> bool:
        return any(s.url for s in self.sources.values())

    @property
    def source_kind(self) -> str:
        """'none' (random), 'user' (bring your own file), 'local' (a file on this machine) or 'download'."""
        if not self.has_weights:
            return "none"
        if self.local_file is not None:
            return "local"
        return "download" if self.downloadable else "user"


def _per_arch(value: Any, archs: tuple[str, ...], what: str, name: str) -> dict[str, Any]:
    """A scalar applies to every arch; a mapping gives one value per arch."""
    if isinstance(value, Mapping):
        extra = set(value) - set(archs)
        if extra:
            raise CatalogueError(
                f"{name}: source.{what} names archs {sorted(extra)} not in archs {list(archs)}"
            )
        return {a: value.get(a) for a in archs}
    return {a: value for a in archs}


def _input_spec(name: str, raw: Mapping) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(in_channels, mean, std) of an entry, checked: one finite mean and positive std per channel."""
    in_channels = raw["in_channels"]
    if not isinstance(in_channels, int) or in_channels < 1:
        raise CatalogueError(f"{name}: in_channels must be a positive int, got {in_channels!r}")
    mean = tuple(float(x) for x in raw["mean"])
    std = tuple(float(x) for x in raw["std"])
    if len(mean) != in_channels or len(std) != in_channels:
        raise CatalogueError(
            f"{name}: mean and std need one value per input channel ({in_channels}), "
            f"got {len(mean)} and {len(std)}"
        )
    if not all(math.isfinite(s) and s > 0 for s in std) or not all(math.isfinite(m) for m in mean):
        raise CatalogueError(
            f"{name}: std must be positive and mean finite, got mean={mean} std={std}"
        )

    return in_channels, mean, std


def _sources(name: str, src: Mapping, archs: tuple[str, ...]) -> dict[str, SourceFile]:
    """The download of each arch: url, file name, sha256 and/or hash prefix, checked."""
    sources: dict[str, SourceFile] = {}
    urls = _per_arch(src["url"], archs, "url", name)
    files = _per_arch(src.get("file"), archs, "file", name)
    shas = _per_arch(src.get("sha256"), archs, "sha256", name)
    prefixes = _per_arch(src.get("hash_prefix"), archs, "hash_prefix", name)
    for arch in archs:
        url = urls[arch]
        if not url:
            raise CatalogueError(f"{name}: no url for {arch}")
        file = files[arch] or url.rsplit("/", 1)[-1]
        sha, prefix = shas[arch], prefixes[arch]
        if sha is not None and not (len(sha) == 64 and _HEX.match(sha)):
            raise CatalogueError(f"{name}: sha256 for {arch} must be 64 lowercase hex digits")
        if prefix is not None and not (_HEX.match(str(prefix)) and str(prefix) in file):
            raise CatalogueError(
                f"{name}: hash_prefix {prefix!r} must be hex and part of {file!r}"
            )
        sources[arch] = SourceFile(
            url=url, file=file, sha256=sha, hash_prefix=prefix and str(prefix)
        )
    return sources


def _parse_entry(name: str, raw: Any) -> InitEntry:
    if not isinstance(raw, Mapping):
        raise CatalogueError(f"{name}: entry must be a mapping, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED if k not in raw]
    unknown = [k for k in raw if k not in _REQUIRED + _OPTIONAL]
    if missing or unknown:
        raise CatalogueError(f"{name}: missing fields {missing}, unknown fields {unknown}")

    archs = tuple(raw["archs"] or ())
    bad = [a for a in archs if a not in ARCHS]
    if not archs or bad:
        raise CatalogueError(
            f"{name}: archs must be a non-empty subset of {list(ARCHS)}, got {list(archs)}"
        )
    if raw["format"] not in ADAPTERS:
        raise CatalogueError(f"{name}: unknown format {raw['format']!r}; known: {sorted(ADAPTERS)}")

    in_channels, mean, std = _input_spec(name, raw)

    seen = tuple(str(t).lower() for t in raw["seen_tasks"] or ())
    user = bool(raw.get("user_checkpoint", False))
    src = raw.get("source") or {}
    if not isinstance(src, Mapping) or set(src) - set(_SOURCE_KEYS):
        raise CatalogueError(
            f"{name}: source must be a mapping with keys among {list(_SOURCE_KEYS)}"
        )

    sources: dict[str, SourceFile] = {}
    local = None
    if src.get("url") is not None:
        if user:
            raise CatalogueError(f"{name}: a user_checkpoint entry has no download url")
        sources = _sources(name, src, archs)
    elif raw["format"] != "none" and not user and src.get("file") is not None:
        local = _local_file(name, src)
    elif raw["format"] != "none" and not user:
        raise CatalogueError(
            f"{name}: an entry with weights needs source.url, source.file (an absolute path "
            "on this machine, with its sha256) or user_checkpoint: true"
        )
    pretraining = raw.get("pretraining")
    if pretraining is not None and not isinstance(pretraining, Mapping):
        raise CatalogueError(f"{name}: pretraining must be a mapping")
    if raw["format"] == "none" and (src or user):
        raise CatalogueError(f"{name}: format none takes no source and no checkpoint")

    return InitEntry(
        name=name,
        description=str(raw["description"]).strip(),
        archs=archs,
        format=raw["format"],
        in_channels=in_channels,
        mean=mean,
        std=std,
        pretrained_on=tuple(str(d) for d in raw["pretrained_on"] or ()),
        seen_tasks=seen,
        note=" ".join(str(raw["note"]).split()),
        citation=" ".join(str(raw["citation"]).split()),
        user_checkpoint=user,
        homepage=src.get("homepage"),
        file_hint=None if sources or local or isinstance(src.get("file"), Mapping) else src.get("file"),
        sources=sources,
        local_file=local,
        pretraining=dict(pretraining) if pretraining is not None else None,
    )


def _local_file(name: str, src: Mapping) -> SourceFile:
    """A file on this machine: an absolute path and the full sha256 it must have."""
    file, sha = src.get("file"), src.get("sha256")
    if not isinstance(file, str) or not Path(file).is_absolute():
        raise CatalogueError(f"{name}: source.file of a local entry must be an absolute path, got {file!r}")
    if not (isinstance(sha, str) and len(sha) == 64 and _HEX.match(sha)):
        raise CatalogueError(f"{name}: a local entry needs the file's sha256 (64 lowercase hex digits)")
    return SourceFile(url=None, file=file, sha256=sha)


def parse_catalogue(data: Any) -> dict[str, InitEntry]:
    """Validate parsed YAML and return ``{name: InitEntry}`` in file order."""
    if not isinstance(data, Mapping) or not data:
        raise CatalogueError("the catalogue must be a non-empty mapping of name -> entry")
    return {str(name): _parse_entry(str(name), raw) for name, raw in data.items()}


def read_catalogue(path: str | Path | None = None) -> dict[str, InitEntry]:
    """Read a catalogue file (default: the packaged catalogue.yaml)."""
    if path is None:
        text = resources.files(__package__).joinpath("catalogue.yaml").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return parse_catalogue(yaml.safe_load(text))


@functools.cache
def _packaged() -> dict[str, InitEntry]:
    return read_catalogue()


def packaged_names() -> list[str]:
    """The names of the packaged catalogue (a user entry may not take one)."""
    return list(_packaged())


def _catalogue() -> dict[str, InitEntry]:
    """The packaged entries, then the user catalogue's (re-read when its file changes)."""
    from .user import read_user_catalogue

    user = read_user_catalogue()
    return {**_packaged(), **user}


def list_inits() -> list[InitEntry]:
    """All catalogue entries, in catalogue order."""
    return list(_catalogue().values())


def init_names() -> list[str]:
    return list(_catalogue())


def get_entry(name: str) -> InitEntry:
    """The entry called ``name``; ``UnknownInitError`` listing the known names otherwise."""
    try:
        return _catalogue()[name]
    except KeyError:
        raise UnknownInitError(
            f"unknown initialization {name!r}. Known names: {', '.join(init_names())}. "
            f"A path to a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) is also accepted."
        ) from None


def check_leakage(info_or_entry: InitEntry | Mapping[str, Any] | str, task: str) -> bool:
    """True when ``task`` is among the tasks whose images the initialization was trained on.

    Accepts an ``InitEntry``, a ``load_encoder`` info dict, or a catalogue name.
    """
    if isinstance(info_or_entry, str):
        info_or_entry = get_entry(info_or_entry)
    if isinstance(info_or_entry, InitEntry):
        seen = info_or_entry.seen_tasks
    else:
        seen = info_or_entry.get("seen_tasks") or ()
    return task.lower() in {str(t).lower() for t in seen}
