"""The user catalogue: initializations produced by ``bench pretrain`` on this machine.

Owns where it lives (``$CXRBENCH_CATALOGUE``, else ``catalogue.yaml`` in the user
config dir of ``platformdirs``), reading it (the same fields as the packaged
``catalogue.yaml``, plus ``pretraining``: method, data, layout, epochs, settings) and
adding or replacing an entry atomically. A user entry's ``source`` is a local file:
its absolute path and sha256, verified on every load. A user entry may not take the
name of a packaged one (``convirt`` stays "bring your own checkpoint"; name yours
``convirt-mimic``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import CatalogueError

_HEADER = """\
# cxrbench user catalogue: initializations made by `bench pretrain` on this machine.
# Same fields as the packaged weights_registry/catalogue.yaml, plus `pretraining`.
# Written by `bench pretrain`; you may edit or delete entries by hand.
"""

_cache: dict[str, tuple[tuple[int, int], dict]] = {}


def user_catalogue_path() -> Path:
    """``$CXRBENCH_CATALOGUE``, else ``<user config dir>/cxrbench/catalogue.yaml``."""
    env = os.environ.get("CXRBENCH_CATALOGUE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("cxrbench")) / "catalogue.yaml"


def _read_raw(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CatalogueError(f"user catalogue {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CatalogueError(f"user catalogue {path} must be a mapping of name -> entry")
    return data


def read_user_catalogue() -> dict:
    """``{name: InitEntry}`` of the user catalogue ({} when it does not exist); re-read on change."""
    from .catalogue import packaged_names, parse_catalogue

    path = user_catalogue_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(str(path))
    if hit and hit[0] == stamp:
        return hit[1]
    raw = _read_raw(path)
    clash = sorted(set(map(str, raw)) & set(packaged_names()))
    if clash:
        raise CatalogueError(
            f"user catalogue {path}: {', '.join(clash)} is the name of a packaged "
            "initialization; rename the entry"
        )
    try:
        entries = parse_catalogue(raw) if raw else {}
    except CatalogueError as e:
        raise CatalogueError(f"user catalogue {path}: {e}") from e
    _cache[str(path)] = (stamp, entries)
    return entries


def add_user_entry(name: str, entry: dict[str, Any]) -> Path:
    """Add (or replace) ``name`` in the user catalogue, checked first, written atomically."""
    from bench.util import write_text_atomic

    from .catalogue import packaged_names, parse_catalogue

    if name in packaged_names():
        raise CatalogueError(
            f"{name!r} is a packaged initialization; choose another --name "
            f"(for example {name}-<data>)"
        )
    path = user_catalogue_path()
    raw = _read_raw(path) if path.exists() else {}
    raw[name] = entry
    parse_catalogue({name: entry})  # a bad entry never reaches the file
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, _HEADER + "\n" + yaml.safe_dump(raw, sort_keys=False, width=100))
    return path
