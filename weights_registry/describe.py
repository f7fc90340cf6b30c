"""Human-readable views of the catalogue for ``bench weights list`` and ``bench weights show``.

Owns only text formatting: ``table()`` (one row per initialization) and
``describe(name)`` (everything known about one, including where its file is
cached and whether it is there).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from .catalogue import InitEntry, get_entry, list_inits
from .fetch import cache_path, is_cached, weights_dir


def _tasks() -> tuple[str, ...]:
    """The registered downstream tasks (``tasks.task_names``)."""
    from tasks import task_names

    return task_names()


def _fmt_floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _leakage(entry: InitEntry) -> str:
    if entry.seen_tasks:
        return "LEAKAGE: " + ",".join(entry.seen_tasks)
    if entry.user_checkpoint and not entry.pretrained_on:
        return "unknown"
    return "-"


def _cached(entry: InitEntry) -> str:
    if entry.source_kind != "download":
        return "n/a"
    archs = [a for a in entry.archs if is_cached(entry, a)]
    if not archs:
        return "no"
    if len(archs) == len(entry.archs):
        return "yes"
    return ",".join(archs)


def table() -> str:
    """A plain-text table of the catalogue: name, archs, source, pretrained on, leakage, cached."""
    header = ("name", "archs", "source", "pretrained on", "leakage", "cached")
    rows = [
        (
            e.name,
            ",".join(a.removeprefix("resnet") for a in e.archs),
            e.source_kind,
            _clip(", ".join(e.pretrained_on) or "-", 36),
            _leakage(e),
            _cached(e),
        )
        for e in list_inits()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    from .user import user_catalogue_path

    lines.append(f"archs: resnet18/34/50. cache: {weights_dir()}")
    lines.append(f"user catalogue (bench pretrain): {user_catalogue_path()}")
    lines.append(
        "A path to a checkpoint file (.pth, .pt, .pth.tar, .ckpt, .safetensors) is also accepted as --init."
    )
    return "\n".join(lines)


def describe(name: str) -> str:
    """Multi-line description of one initialization for ``bench weights show NAME``."""
    e = get_entry(name)
    wrap = textwrap.TextWrapper(width=88, initial_indent="  ", subsequent_indent="  ")
    out = [f"{e.name}: {e.description}", ""]
    out.append(f"archs:          {', '.join(e.archs)}")
    out.append(f"format:         {e.format}")
    out.append(f"in_channels:    {e.in_channels}")
    out.append(
        f"normalization:  mean {_fmt_floats(e.mean)}, std {_fmt_floats(e.std)} (inputs in [0, 1])"
    )
    out.append(f"pretrained on:  {', '.join(e.pretrained_on) or '-'}")
    known = _tasks()
    leak = [t for t in known if t in e.seen_tasks] + [t for t in e.seen_tasks if t not in known]
    if leak:
        out.append(
            f"leakage:        saw the images of {', '.join(leak)}: results on them are flagged"
        )
    elif e.user_checkpoint and not e.pretrained_on:
        out.append("leakage:        unknown (depends on the data your checkpoint was trained on)")
    elif e.user_checkpoint:
        out.append(f"leakage:        none known for {', '.join(known)} (for the authors' weights)")
    else:
        out.append(f"leakage:        none known for {', '.join(known)}")
    if e.homepage:
        out.append(f"homepage:       {e.homepage}")
    if e.source_kind == "none":
        out.append("source:         none (no weights; seed the global torch RNG)")
    elif e.source_kind == "local":
        assert e.local_file is not None
        there = "present" if Path(e.local_file.file).is_file() else "MISSING"
        out.append(f"source:         {e.local_file.file} ({there})")
        out.append(f"  sha256:       {e.local_file.sha256}")
        for key, value in (e.pretraining or {}).items():
            if not isinstance(value, dict | list):
                out.append(f"  {key + ':':<13} {value}")
    elif e.source_kind == "user":
        hint = f" (usually {e.file_hint})" if e.file_hint else ""
        out.append(f"source:         your own checkpoint{hint}: --checkpoint FILE")
    else:
        out.append("source:")
        for arch in e.archs:
            src = e.source(arch)
            assert src is not None
            path = cache_path(e, arch)
            sha = src.sha256 or (
                f"{src.hash_prefix}... (file-name prefix)" if src.hash_prefix else "unknown"
            )
            out.append(f"  {arch}: {src.url}")
            out.append(f"    sha256: {sha}")
            out.append(f"    cache:  {path} ({'present' if path.is_file() else 'not downloaded'})")
    out.append("")
    out.append("note:")
    out.extend(wrap.wrap(e.note))
    out.append("citation:")
    out.extend(wrap.wrap(e.citation))
    return "\n".join(out)
