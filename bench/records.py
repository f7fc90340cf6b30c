"""Run records: one JSON file per run, written atomically, plus the environment it ran in.

A record is written when a run starts (``status: running``) and replaced when it
ends (``complete``, ``failed`` or ``nan_loss``). Writes go to a temporary file in the
same folder followed by ``os.replace``, so a reader (or a killed sweep) only ever
sees a whole record, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

RECORD_VERSION = 1
STATUSES = ("running", "complete", "failed", "nan_loss")


def _clean(obj):
    """JSON-safe copy: NaN/inf become None (JSON has no NaN), numpy scalars become Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | Path, obj: dict) -> Path:
    """Write ``obj`` as JSON to ``path`` so that the file is either the old or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_record(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)


def record_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.json"


def git_commit() -> str | None:
    """The commit of the cxrbench checkout, or None when not run from one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=5,
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def env_info(device: str) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cxrbench": _version("cxrbench"),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "smp": _version("segmentation-models-pytorch"),
        "monai": _version("monai"),
        "pydicom": _version("pydicom"),
        "pycocotools": _version("pycocotools"),
        "numpy": _version("numpy"),
        "device": device,
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def get_field(rec: dict, dotted: str, default=None):
    """``rec["a"]["b"]`` for ``"a.b"``; ``default`` when any level is missing."""
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur
