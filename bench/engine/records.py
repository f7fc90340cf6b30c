"""Run records: one JSON file per run, written atomically, plus the environment it ran in.

A record is written when a run starts (``status: running``) and replaced when it
ends (``complete``, ``failed`` or ``nan_loss``). Writes go through
:func:`bench.util.write_json_atomic`, so a reader (or a killed sweep) only ever sees a
whole record, never half of one.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from bench.util import write_json_atomic

__all__ = ["write_json_atomic", "read_record", "record_path", "env_info", "get_field"]

RECORD_VERSION = 1
STATUSES = ("running", "complete", "failed", "nan_loss")


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
