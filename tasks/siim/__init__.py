"""SIIM-ACR pneumothorax segmentation: the official Kaggle layout, its RLE, and synthetic data.

Owns: the task's registration (:data:`SPEC`) and its public API, re-exported from
:mod:`tasks.siim.rle` (``rle_decode`` / ``rle_encode`` / ``is_negative``, the one
negative-mask check, design section 8.2), :mod:`tasks.siim.layout` (finding and
validating the dataset layout, design section 4, and reading the label CSV),
:mod:`tasks.siim.data` (``prepare``: dataset -> cached fixed-size arrays via
``tasks.cache.build_cache``; header-only ground truth for ``bench evaluate``),
:mod:`tasks.siim.generator` (the synthetic generator that writes the same layout:
``synth``) and :mod:`tasks.siim.submission` (the submission file).

Layout (stage 1, what GLoRIA / MGCA / LoVT read)::

    <root>/
      dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm
      train-rle.csv            header "ImageId, EncodedPixels"; relative RLE
      (or stage_2_train.csv    header "ImageId,EncodedPixels"; RLE format must be chosen)

PNG re-exports (public copies that replaced the DICOMs by ``<ImageId>.png``, possibly
downsized) are read when there is no DICOM folder: the PNGs under one of
``PNG_DIRS`` plus the same label CSV. The RLE still describes the 1024x1024 originals,
so masks are decoded at ``PNG_RLE_SIZE`` and resized to the PNG; a PNG has no
PatientID, so each image is its own split group (recorded in the manifest).
"""

from __future__ import annotations

from tasks import registry
from tasks.siim import submission
from tasks.siim.data import ground_truth_mask, ground_truth_splits, load_ground_truth, prepare
from tasks.siim.generator import synth, synth_records
from tasks.siim.layout import (
    DICOM_DIR,
    EXPECTED_LAYOUT,
    PNG_DIRS,
    PNG_RLE_SIZE,
    STAGE1_CSV,
    STAGE2_CSV,
    TASK,
    find_dicoms,
    find_layout,
    read_labels,
)
from tasks.siim.rle import RLE_FORMATS, decode_rows, is_negative, rle_decode, rle_encode

__all__ = [
    "DICOM_DIR",
    "EXPECTED_LAYOUT",
    "PNG_DIRS",
    "PNG_RLE_SIZE",
    "RLE_FORMATS",
    "SPEC",
    "STAGE1_CSV",
    "STAGE2_CSV",
    "TASK",
    "decode_rows",
    "find_dicoms",
    "find_layout",
    "ground_truth_mask",
    "ground_truth_splits",
    "is_negative",
    "load_ground_truth",
    "prepare",
    "read_labels",
    "rle_decode",
    "rle_encode",
    "synth",
    "synth_records",
]

SPEC = registry.register(
    registry.TaskSpec(
        name=TASK,
        title="SIIM-ACR pneumothorax segmentation",
        outputs={"linear": "mask", "frozen": "mask", "finetune": "mask"},
        metrics={"mask": ("dice", "dice_pooled", "dice_pos")},
        metric_notes={"dice": "mean over test images of the per-image Dice at threshold 0.5 (empty "
                      "target and empty prediction = 1, empty target and any prediction = 0): the "
                      "Kaggle SIIM-ACR metric"},
        prepare=prepare,
        synth=synth,
        load_ground_truth=load_ground_truth,
        target=lambda entry: ground_truth_mask(entry).astype(bool),
        submission=registry.SubmissionFormat(
            id_column="ImageId",
            value_column="EncodedPixels",
            check=submission.check_row,
            parse=submission.parse_rows,
            format=submission.format_mask,
        ),
        submission_kind="mask",
        options=(
            registry.TaskOption(
                name="rle_format",
                flag="--rle-format",
                choices=RLE_FORMATS,
                help="SIIM RLE convention of the labels (and of a submission): relative (stage 1 "
                "train-rle.csv, default) or absolute (some stage_2_train.csv copies)",
            ),
        ),
        layout=EXPECTED_LAYOUT,
        image_sources=("NIH ChestX-ray14",),  # the SIIM-ACR images were drawn from ChestX-ray14 too
    )
)
