"""Synthetic SIIM-ACR data in the official Kaggle layout.

Owns: :func:`synth_records` (the deterministic cases: images from
:func:`tasks.synthetic.render_chest` with pneumothorax crescents, their masks and
RLE rows, UIDs, patients, storage kinds) and :func:`synth` (the data set ``bench synth
--task siim`` writes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tasks import imageio, synthetic
from tasks.siim.layout import DICOM_DIR, STAGE1_CSV, TASK
from tasks.siim.rle import rle_encode

_STREAM, _ID_BASE = 0, 1000  # random stream, ImageId number base
_NAMESPACE = "siim"  # named in the marker and the summary (kept: existing sets stay identical)

_MARKER_TEXT = """SYNTHETIC DATA - NOT REAL PATIENT IMAGES

This folder was written by cxrbench ({how}). It imitates the layout of the
SIIM-ACR Pneumothorax Segmentation (Kaggle) dataset so that every code path can be
exercised without the real data. Images are procedurally generated chest-X-ray-like
pictures; "pneumothorax" regions are dark crescents with a bright pleural line.
Numbers obtained on this data say nothing about real clinical performance.

seed={seed} n={n} size={size} namespace={namespace}
"""


def synth_records(n: int = 200, seed: int = 0, size: int = 1024) -> Iterator[dict]:
    """Generate the synthetic cases (deterministic from n, seed, size).

    Yields dicts: image_id, patient_id, study_uid, series_uid, storage ("plain", "rle",
    "jpeg", "mono1", "rescale"), image (uint8 (size, size): exactly what reading the
    written DICOM gives back, except for JPEG's lossy error), regions (list of {0,1}
    masks, one per RLE row; empty for negatives) and rles (the relative RLE strings).
    """
    rng = np.random.default_rng([_STREAM, seed])
    n = int(n)
    storage = synthetic.assign_storage(rng, n)
    negative, two_regions = synthetic.assign_cases(rng, n, round(n / 3), 0.2)
    patients = [synthetic.random_uuid(rng) for _ in range(n)]
    order = rng.permutation(n)
    for j in range(round(0.075 * n)):  # ~15% of images come in pairs from one patient
        patients[order[2 * j + 1]] = patients[order[2 * j]]
    stamps = rng.integers(100, 1000, n), rng.integers(100002, 999999, n)

    for i in range(n):
        case_rng = np.random.default_rng([_STREAM, seed, i])
        sides = synthetic.lesion_sides(case_rng, negative[i], two_regions[i])
        image, regions = synthetic.render_chest(case_rng, size, sides)
        image = synthetic.fit_storage(image, storage[i])
        tail = f"8323329.{_ID_BASE + i}.1517875{stamps[0][i]}"
        uids = synthetic.kaggle_uids(tail, int(stamps[1][i]))
        yield {
            "image_id": uids["sop_uid"],
            "study_uid": uids["study_uid"],
            "series_uid": uids["series_uid"],
            "patient_id": patients[i],
            "storage": str(storage[i]),
            "image": image,
            "regions": regions,
            "rles": [rle_encode(m) for m in regions],
        }


def synth(out, n: int = 200, seed: int = 0, size: int = 1024, progress: bool = True) -> dict:
    """Write a synthetic SIIM-ACR dataset in the official Kaggle layout under out.

    dicom-images-train/<Study>/<Series>/<ImageId>.dcm + train-rle.csv ("ImageId,
    EncodedPixels", negatives " -1", relative RLE, one row per region) +
    SYNTHETIC_DATA.txt. Returns a summary dict.
    """
    out = Path(out)
    (out / DICOM_DIR).mkdir(parents=True, exist_ok=True)
    synthetic.write_synthetic_marker(
        out,
        _MARKER_TEXT.format(how="bench synth --task siim", seed=seed, n=n, size=size,
                            namespace=_NAMESPACE),
    )  # fmt: skip
    csv_lines = ["ImageId, EncodedPixels"]
    storage: dict[str, int] = {}
    n_pos = n_multi = 0
    patients = set()
    records = synth_records(n, seed, size)
    for rec in tqdm(records, total=n, desc="synth siim", unit="img", disable=not progress):
        kind = rec["storage"]
        imageio.write_dicom(
            out / DICOM_DIR / rec["study_uid"] / rec["series_uid"] / f"{rec['image_id']}.dcm",
            rec["image"],
            patient_id=rec["patient_id"],
            sop_uid=rec["image_id"],
            study_uid=rec["study_uid"],
            series_uid=rec["series_uid"],
            **synthetic.storage_kwargs(kind),
        )
        storage[kind] = storage.get(kind, 0) + 1
        patients.add(rec["patient_id"])
        n_pos += bool(rec["rles"])
        n_multi += len(rec["rles"]) > 1
        for rle in rec["rles"] or ["-1"]:
            csv_lines.append(f"{rec['image_id']}, {rle}")
    (out / STAGE1_CSV).write_text("\n".join(csv_lines) + "\n")
    return {
        "task": TASK,
        "out": str(out),
        "namespace": _NAMESPACE,
        "seed": seed,
        "size": size,
        "n_images": n,
        "n_positive": n_pos,
        "n_negative": n - n_pos,
        "n_multi_region": n_multi,
        "n_patients": len(patients),
        "n_label_rows": len(csv_lines) - 1,
        "storage": dict(sorted(storage.items())),
        "label_file": STAGE1_CSV,
        "rle_format": "relative",
    }
