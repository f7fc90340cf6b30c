"""Synthetic data shared by every task: the marker that flags it, and the chest renderer.

Owns: :data:`SYNTHETIC_MARKER` (the file every synthetic dataset root carries, so
records and reports flag the data), :func:`is_synthetic` and
:func:`write_synthetic_marker`; the task-independent pieces of every task's generator:
:func:`render_chest` (one chest-X-ray-like image, with pneumothorax crescents and an
optional lesion hook for other findings), :func:`smooth_noise`, :func:`ellipse`,
:func:`random_uuid`, the case plan (:func:`assign_cases`, :func:`lesion_sides`), the
DICOM storage kinds (:data:`STORAGE`, :data:`RESCALE`, :func:`assign_storage`,
:func:`fit_storage`, :func:`storage_kwargs`) and Kaggle-like UIDs
(:func:`kaggle_uids`). Every function draws from the generator it is given, in a
fixed order, so each task's data stays identical from one version to the next.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SYNTHETIC_MARKER = "SYNTHETIC_DATA.txt"

# DICOM storage kinds besides "plain" and the share of cases stored that way
STORAGE = (("rle", 0.10), ("jpeg", 0.10), ("mono1", 0.05), ("rescale", 0.05))
RESCALE = (2.0, 4.0)  # slope, intercept; pixels made even and >= 4 so it round-trips

# lesion(rng, img, scene) -> img: see `render_chest`
Lesion = Callable[[np.random.Generator, np.ndarray, dict], np.ndarray]


def is_synthetic(root: str | os.PathLike) -> bool:
    """True when `root` carries the synthetic-data marker file."""
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def write_synthetic_marker(root: Path, text: str) -> None:
    """Write the marker that says `root` holds generated, not real, data."""
    (Path(root) / SYNTHETIC_MARKER).write_text(text)


# --------------------------------------------------------------------------- the case plan


def assign_storage(rng: np.random.Generator, n: int) -> np.ndarray:
    """Storage kind per case ("plain" or one of `STORAGE`, each at least once when n allows)."""
    storage = np.array(["plain"] * n, dtype=object)
    order = rng.permutation(n)
    start = 0
    for kind, share in STORAGE:
        k = max(1, round(share * n)) if n >= 2 * len(STORAGE) else int(start < n)
        storage[order[start : start + k]] = kind
        start += k
    return storage


def assign_cases(
    rng: np.random.Generator, n: int, n_negative: int, two_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """(negative, two) bool arrays of length n: which cases have no finding, which two.

    One permutation of the cases: its first `n_negative` are negatives; of the
    positives (when there are at least 3) the first max(1, round(two_share * count))
    have a finding in each lung.
    """
    order = rng.permutation(n)
    negative = np.zeros(n, bool)
    negative[order[:n_negative]] = True
    positives = order[n_negative:]
    n_two = max(1, round(two_share * len(positives))) if len(positives) >= 3 else 0
    two = np.zeros(n, bool)
    two[positives[:n_two]] = True
    return negative, two


def lesion_sides(case_rng: np.random.Generator, negative: bool, two: bool) -> list[int]:
    """The lungs (-1 right of the image, 1 left) with a finding; one draw for a single side."""
    if negative:
        return []
    if two:
        return [-1, 1]
    return [int(case_rng.choice([-1, 1]))]


def random_uuid(rng: np.random.Generator) -> str:
    """A version-4-looking UUID from 16 random bytes (patient ids)."""
    h = rng.bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def kaggle_uids(tail: str, r: int) -> dict[str, str]:
    """SOP / study / series instance UIDs in the style of the Kaggle data sets."""
    return {
        "sop_uid": f"1.2.276.0.7230010.3.1.4.{tail}.{r}",
        "study_uid": f"1.2.276.0.7230010.3.1.2.{tail}.{r - 1}",
        "series_uid": f"1.2.276.0.7230010.3.1.3.{tail}.{r - 2}",
    }


def fit_storage(image: np.ndarray, kind: str) -> np.ndarray:
    """Make pixels exactly representable by the storage kind (rescale: even and >= 4)."""
    return np.maximum(image, 4) & np.uint8(0xFE) if kind == "rescale" else image


def storage_kwargs(kind: str) -> dict:
    """`imageio.write_dicom` keyword arguments for a storage kind."""
    return {
        "compression": {"rle": "rle", "jpeg": "jpeg"}.get(kind),
        "monochrome1": kind == "mono1",
        "rescale": RESCALE if kind == "rescale" else None,
    }


# --------------------------------------------------------------------------- the renderer


def ellipse(xx, yy, cx, cy, ax, ay):
    """Normalised elliptic radius (1 on the boundary)."""
    return np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Gaussian noise on a cells x cells grid, bicubically upsampled to size x size."""
    coarse = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def render_chest(
    rng: np.random.Generator, size: int, ptx_sides: list[int], lesion: Lesion | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One chest-X-ray-like image and one pneumothorax mask per side in ptx_sides.

    Dark background, bright body, two darker lung fields with rib arcs and smooth
    "lung markings", heart and spine shadows, noise. A pneumothorax is the crescent
    between the lung outline and a shrunken copy of it that still touches the outline at
    its medial-inferior edge (so the crescent is widest at the apex / lateral side): no
    markings or ribs, clearly darker, with a thin bright pleural line at its inner edge.

    lesion (used by other tasks' generators, e.g. `tasks.rsna`): optional callable
    `lesion(rng, img, scene) -> img` applied to the float image just before the final
    noise; scene = {"size", "xx", "yy" (pixel-centre coordinates in [0, 1], shapes
    (1, size) and (size, 1)), "lungs": [(side, cx, cy, ax, ay), ...] (lung ellipses)}.
    Without it the random stream, and so every SIIM image, is unchanged.
    """
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = c[:, None], c[None, :]
    cx, cy = 0.5 + rng.normal(0, 0.012), 0.56 + rng.normal(0, 0.012)
    bg, tissue = rng.uniform(8, 25), rng.uniform(150, 175)
    lung_level = rng.uniform(75, 95)
    body = np.clip(
        (1 - ellipse(xx, yy, cx, cy, rng.uniform(0.40, 0.45), rng.uniform(0.5, 0.56))) / 0.06, 0, 1
    )
    img = bg + (tissue - bg + 25 * (yy - 0.5)) * body

    freq, phase = rng.uniform(8.5, 10.0), rng.uniform(0, 1)
    ribs = np.clip(
        (np.cos(2 * np.pi * ((yy + 0.9 * (xx - cx) ** 2) * freq + phase)) - 0.5) / 0.5, 0, 1
    )
    markings = 0.6 * smooth_noise(rng, size, 10) + 0.4 * smooth_noise(rng, size, 32)
    lungs, lung_soft, ptx_region, pleural_line, regions = _lungs(rng, xx, yy, cx, size, ptx_sides)

    lung_tex = ribs * 28 + markings * 9
    img = (
        img
        - (tissue - lung_level) * lung_soft
        + lung_tex * lung_soft
        + 8 * ribs * body * (1 - lung_soft)
    )
    heart = np.clip((1 - ellipse(xx, yy, cx + 0.05, cy + 0.1, 0.13, 0.11)) / 0.3, 0, 1)
    spine = np.exp(-(((xx - cx) / 0.035) ** 2)) * body
    img = img + 45 * heart + 30 * spine
    if ptx_sides:
        ptx_level = lung_level - rng.uniform(22, 40)
        img = np.where(ptx_region, ptx_level + 2 * markings, img)
        img = np.where(pleural_line & ~ptx_region, img + 50, img)
    if lesion is not None:
        img = lesion(rng, img, {"size": size, "xx": xx, "yy": yy, "lungs": lungs})
    img = img + rng.normal(0, 3.0, (size, size))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), regions


def _lungs(rng, xx, yy, cx, size: int, ptx_sides: list[int]):
    """Both lung fields (right of the image first) and the pneumothoraces in ptx_sides.

    Returns (lungs [(side, cx, cy, ax, ay)], soft lung mask, pneumothorax region,
    pleural line, one {0,1} mask per pneumothorax).
    """
    lung_soft = np.zeros((size, size), np.float32)
    ptx_region = np.zeros((size, size), bool)
    pleural_line = np.zeros((size, size), bool)
    regions, lungs = [], []
    for side in (-1, 1):
        lcx, lcy = cx + side * rng.uniform(0.16, 0.19), rng.uniform(0.43, 0.47)
        ax, ay = rng.uniform(0.115, 0.135), rng.uniform(0.26, 0.30)
        lungs.append((side, lcx, lcy, ax, ay))
        e = ellipse(xx, yy, lcx, lcy, ax, ay)
        lung_soft = np.maximum(lung_soft, np.clip((1 - e) / 0.12, 0, 1))
        if side in ptx_sides:
            s = rng.uniform(0.6, 0.88)  # collapsed lung scale
            hx, hy = lcx - side * 0.8 * ax, lcy + 0.6 * ay  # medial-inferior edge
            ec = ellipse(xx, yy, hx + s * (lcx - hx), hy + s * (lcy - hy), s * ax, s * ay)
            region = (e < 1) & (ec > 1)
            width = max(1.2 / size, 0.002) / (s * min(ax, ay))
            pleural_line |= (e < 1) & (np.abs(ec - 1) < width)
            ptx_region |= region
            regions.append(region.astype(np.uint8))
    return lungs, lung_soft, ptx_region, pleural_line, regions
