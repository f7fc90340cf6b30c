"""Synthetic RSNA Pneumonia data in the official Kaggle stage 2 layout.

Owns: :func:`synth_records` (the deterministic cases: images from
:func:`tasks.synthetic.render_chest` with pneumonia-like opacities, their boxes,
classes, UIDs and storage kinds), :class:`Opacities` (the renderer's lesion hook that
draws the opacities) and :func:`synth` (the data set ``bench synth --task rsna``
writes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tasks import imageio, synthetic
from tasks.rsna.labels import CLASS_COLUMNS, CLASSES, LABEL_COLUMNS, OPACITY
from tasks.rsna.layout import CLASS_CSV, IMAGE_DIR, LABELS_CSV, TASK

_STREAM = 0x52534E41  # "RSNA": a random stream of its own, apart from SIIM's
_UID_BASE = 300000
_NEGATIVE_SHARE = 2 / 3
_TWO_BOX_SHARE = 0.3

_MARKER_TEXT = """SYNTHETIC DATA - NOT REAL PATIENT IMAGES

This folder was written by cxrbench (bench synth --task rsna). It imitates the layout
of the RSNA Pneumonia Detection Challenge (Kaggle, stage 2) dataset so that every code
path can be exercised without the real data. Images are procedurally generated
chest-X-ray-like pictures; "pneumonia" is a bright, blurry, roughly elliptical
opacity inside a lung field, and each box is the tight bounding box of one opacity.
Numbers obtained on this data say nothing about real clinical performance.

seed={seed} n={n} size={size}
"""


def synth_records(n: int = 200, seed: int = 0, size: int = 1024) -> Iterator[dict]:
    """Generate the synthetic cases (deterministic from n, seed, size).

    Yields dicts: patient_id (uuid-like, also the DICOM PatientID), sop_uid,
    study_uid, series_uid, storage ("plain", "rle", "jpeg", "mono1", "rescale"), image
    (uint8 (size, size): exactly what reading the written DICOM gives back, except for
    JPEG's lossy error), boxes (list of integer (x, y, width, height), one per opacity,
    [] for negatives), regions (the opacities' {0,1} support masks; each box is the
    tight bounding box of its region) and class (the detailed class info).
    About two thirds are negatives (half "Normal", half "No Lung Opacity / Not
    Normal"); about 30% of the positives have two opacities, one per lung.
    """
    rng = np.random.default_rng([_STREAM, seed])
    n = int(n)
    storage = synthetic.assign_storage(rng, n)
    negative, two = synthetic.assign_cases(rng, n, round(_NEGATIVE_SHARE * n), _TWO_BOX_SHARE)
    not_normal = rng.random(n) < 0.5
    patients = [synthetic.random_uuid(rng) for _ in range(n)]
    stamps = rng.integers(100, 1000, n), rng.integers(100002, 999999, n)
    for i in range(n):
        case_rng = np.random.default_rng([_STREAM, seed, i])
        sides = synthetic.lesion_sides(case_rng, negative[i], two[i])
        lesion = Opacities(sides)
        image, _ = synthetic.render_chest(case_rng, size, [], lesion=lesion)
        tail = f"8323329.{_UID_BASE + i}.1517874{stamps[0][i]}"
        if sides:
            cls = OPACITY
        else:
            cls = CLASSES[1] if not_normal[i] else "Normal"
        yield {
            "patient_id": patients[i],
            **synthetic.kaggle_uids(tail, int(stamps[1][i])),
            "storage": str(storage[i]),
            "image": synthetic.fit_storage(image, storage[i]),
            "boxes": lesion.boxes,
            "regions": lesion.regions,
            "class": cls,
        }


class Opacities:
    """`tasks.synthetic.render_chest` lesion hook: one pneumonia-like opacity per side in `sides`.

    A rotated ellipse (axes 11-24% x 12-28% of the image side, so boxes are 10-30% of
    it) inside the lung field, 40-60 grey levels brighter at its core, fading smoothly
    to nothing at its outline, with a patchy texture. Its support (pixels whose centre
    is inside the ellipse) gives the region mask and the integer box.
    """

    def __init__(self, sides: list[int]):
        self.sides = sides
        self.boxes: list[tuple[int, int, int, int]] = []
        self.regions: list[np.ndarray] = []

    def __call__(self, rng: np.random.Generator, img: np.ndarray, scene: dict) -> np.ndarray:
        if not self.sides:
            return img
        size, xx, yy = scene["size"], scene["xx"], scene["yy"]
        texture = np.clip(0.8 + 0.25 * synthetic.smooth_noise(rng, size, 12), 0.4, 1.2)
        for side, lcx, lcy, ax, ay in scene["lungs"]:
            if side not in self.sides:
                continue
            ox, oy = rng.uniform(0.055, 0.12), rng.uniform(0.06, 0.14)
            theta = rng.uniform(-0.45, 0.45)
            ocx = lcx + side * rng.uniform(-0.15, 0.45) * ax
            ocy = lcy + rng.uniform(-0.3, 0.55) * ay
            amplitude = rng.uniform(40, 60)
            dx, dy = xx - ocx, yy - ocy
            u = dx * np.cos(theta) + dy * np.sin(theta)
            v = -dx * np.sin(theta) + dy * np.cos(theta)
            e = np.sqrt((u / ox) ** 2 + (v / oy) ** 2)
            t = np.clip((1 - e) / 0.45, 0, 1)
            img = img + amplitude * t * t * (3 - 2 * t) * texture
            region = e < 1
            rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
            x, y = int(cols[0]), int(rows[0])
            self.boxes.append((x, y, int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y))
            self.regions.append(region.astype(np.uint8))
        return img


def synth(out, n: int = 200, seed: int = 0, size: int = 1024, progress: bool = True) -> dict:
    """Write a synthetic RSNA Pneumonia dataset in the official Kaggle stage 2 layout.

    stage_2_train_images/<patientId>.dcm + stage_2_train_labels.csv (one row per box,
    x/y/width/height as floats like "264.0", Target=0 rows with empty box fields) +
    stage_2_detailed_class_info.csv (one row per label row, as on Kaggle) +
    SYNTHETIC_DATA.txt. Returns a summary dict.
    """
    out = Path(out)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    synthetic.write_synthetic_marker(out, _MARKER_TEXT.format(seed=seed, n=n, size=size))
    label_lines = [",".join(LABEL_COLUMNS)]
    class_lines = [",".join(CLASS_COLUMNS)]
    storage: dict[str, int] = {}
    classes: Counter = Counter()
    n_pos = n_two = n_boxes = 0
    records = synth_records(n, seed, size)
    for rec in tqdm(records, total=n, desc="synth rsna", unit="img", disable=not progress):
        pid, kind = rec["patient_id"], rec["storage"]
        imageio.write_dicom(
            out / IMAGE_DIR / f"{pid}.dcm",
            rec["image"],
            patient_id=pid,
            sop_uid=rec["sop_uid"],
            study_uid=rec["study_uid"],
            series_uid=rec["series_uid"],
            **synthetic.storage_kwargs(kind),
        )
        storage[kind] = storage.get(kind, 0) + 1
        classes[rec["class"]] += 1
        n_pos += bool(rec["boxes"])
        n_two += len(rec["boxes"]) > 1
        n_boxes += len(rec["boxes"])
        for box in rec["boxes"]:
            label_lines.append(f"{pid},{','.join(f'{float(v):.1f}' for v in box)},1")
        if not rec["boxes"]:
            label_lines.append(f"{pid},,,,,0")
        class_lines += [f"{pid},{rec['class']}"] * max(len(rec["boxes"]), 1)
    (out / LABELS_CSV).write_text("\n".join(label_lines) + "\n")
    (out / CLASS_CSV).write_text("\n".join(class_lines) + "\n")
    return {
        "task": TASK,
        "out": str(out),
        "seed": seed,
        "size": size,
        "n_images": n,
        "n_positive": n_pos,
        "n_negative": n - n_pos,
        "n_two_boxes": n_two,
        "n_boxes": n_boxes,
        "n_label_rows": len(label_lines) - 1,
        "classes": dict(sorted(classes.items())),
        "storage": dict(sorted(storage.items())),
        "label_file": LABELS_CSV,
        "class_file": CLASS_CSV,
    }
