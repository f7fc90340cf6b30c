"""The machine, build and randomness a result was made with; a bottom layer like ``bench.util``.

Owns :func:`env_info` (Python, platform, package versions, device, threads, GPU, the
git commit of the checkout; every run record and pretraining record carries it),
:func:`git_commit` and :func:`seed_everything` (Python, NumPy and torch RNGs). Imports
nothing of the project.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()`` or
    ``platform.machine()``; "unknown" when none says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info
