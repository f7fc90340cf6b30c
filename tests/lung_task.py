"""A third task registered from the test suite: lung-field segmentation, in a layout of its own.

It shows what a task plugin is (tasks/registry.py): one module that declares a
``TaskSpec`` and registers it, with nothing changed in ``bench/``. Layout::

    <root>/images/<id>.png      8-bit grayscale chest-like images
    <root>/masks/<id>.png       lung fields, 0 / 255
    <root>/patients.csv         id,patient

Submission: ``id,lungs`` with the lung mask as an absolute, column-major RLE (the SIIM
RLE functions are public API, so a plugin can reuse them).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from tasks import cache, csvfile, imageio, registry, synthetic
from tasks.errors import DataError
from tasks.siim import rle_decode, rle_encode

NAME = "lungs"


def synth(out, n: int = 40, seed: int = 0, size: int = 128, progress: bool = True) -> dict:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    synthetic.write_synthetic_marker(out, "SYNTHETIC lung fields (tests/lung_task.py)\n")
    rng = np.random.default_rng([7, seed])
    yy, xx = np.mgrid[0:size, 0:size] / size
    lines = ["id,patient"]
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for side in (-1, 1):
            cx, cy = 0.5 + side * rng.uniform(0.15, 0.22), rng.uniform(0.4, 0.5)
            ax, ay = rng.uniform(0.08, 0.14), rng.uniform(0.18, 0.3)
            mask |= ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
        image = np.where(mask, 70.0, 170.0) + rng.normal(0, 12, (size, size))
        image_id = f"cxr{seed:02d}{i:04d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out / "images" / f"{image_id}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{image_id}.png")
        lines.append(f"{image_id},p{seed}-{i // 2}")  # two images per patient
    (out / "patients.csv").write_text("\n".join(lines) + "\n")
    return {"task": NAME, "out": str(out), "n_images": n}


def _scan(root) -> tuple[Path, dict[str, str]]:
    root = Path(root)
    if not (root / "images").is_dir():
        raise DataError(f"{root / 'images'}: image folder missing (expected images/<id>.png)")
    table = csvfile.read_csv(root / "patients.csv", ("id", "patient"), what="patient list")
    return root, {row["id"].strip(): row["patient"].strip() for _, row in table.rows}


def _read_mask(path: Path) -> np.ndarray:
    return imageio.read_png(path) > 127


def _load_item(item: dict, *, patients: dict) -> dict:
    mask = _read_mask(item["mask"])
    return {"image": imageio.read_png(item["path"]), "mask": mask.astype(np.uint8),
            "patient_id": patients[item["id"]], "meta": {"positive": bool(mask.any())}}


def prepare(root, image_size: int, *, strict: bool = False, progress: bool = True):
    root, patients = _scan(root)
    images = sorted((root / "images").glob("*.png"))
    key = cache.cache_key(NAME, image_size, {"layout": "lungs-v1"}, images, root)
    cache_dir = cache.cache_dir_for(NAME, key)
    prepared = cache.load_prepared(cache_dir)
    if prepared is None:
        items = [{"id": p.stem, "path": p, "mask": root / "masks" / p.name} for p in images]
        prepared = cache.build_cache(cache_dir, task=NAME, root=root, items=items, image_size=image_size,
                                     load_item=functools.partial(_load_item, patients=patients),
                                     has_masks=True, strict=strict, progress=progress)
    return prepared


def load_ground_truth(root, *, progress: bool = False) -> dict:
    root, patients = _scan(root)
    out = {}
    for p in sorted((root / "images").glob("*.png")):
        h, w = imageio.read_png(p).shape
        out[p.stem] = {"patient_id": patients[p.stem], "height": h, "width": w,
                       "mask": root / "masks" / p.name}
    return out


def _check(value: str, where: str) -> None:
    tokens = value.split()
    if value.strip() != "-1" and (len(tokens) % 2 or not all(t.isdigit() for t in tokens)):
        raise DataError(f"{where}: not an RLE of (start, length) pairs: {value[:40]!r}")


def _parse(rows, entry: dict, where: str) -> np.ndarray:
    (line, value), = rows
    try:
        return rle_decode(value, entry["height"], entry["width"], "absolute").astype(bool)
    except ValueError as e:
        raise DataError(f"{where}, line {line}: {e}") from None


SPEC = registry.TaskSpec(
    name=NAME,
    title="lung-field segmentation (test plugin)",
    outputs={"linear": "mask", "frozen": "mask", "finetune": "mask"},
    metrics={"mask": ("dice", "dice_pooled", "dice_pos")},
    prepare=prepare,
    synth=synth,
    load_ground_truth=load_ground_truth,
    target=lambda entry: _read_mask(entry["mask"]),
    submission=registry.SubmissionFormat(
        id_column="id", value_column="lungs", check=_check, parse=_parse,
        format=lambda mask: rle_encode(np.asarray(mask).astype(np.uint8), "absolute"),
    ),
    submission_kind="mask",
)

registry.register(SPEC, replace=True)
