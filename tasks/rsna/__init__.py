"""RSNA Pneumonia Detection (Kaggle, stage 2): the official layout, its box labels, synthetic data.

Owns: the task's registration (:data:`SPEC`) and its public API, re-exported from
:mod:`tasks.rsna.labels` (reading and checking the box label CSV and the optional
detailed class info), :mod:`tasks.rsna.layout` (finding and validating the dataset
layout, design section 4), :mod:`tasks.rsna.boxes` (clipping boxes that stick out of
their image, always reported, never silent; box masks), :mod:`tasks.rsna.data`
(``prepare``: dataset -> cached fixed-size images, xyxy boxes and box masks via
``tasks.cache.build_cache``; header-only ground truth for ``bench evaluate``),
:mod:`tasks.rsna.generator` (the synthetic generator that writes the same layout:
``synth``) and :mod:`tasks.rsna.submission` (the submission file).

Layout::

    <root>/
      stage_2_train_images/<patientId>.dcm
      stage_2_train_labels.csv            patientId,x,y,width,height,Target
                                          one row per box; Target=0 rows have empty
                                          box fields; x, y = top-left corner, pixels
      stage_2_detailed_class_info.csv     (optional) patientId,class

Boxes: the CSV has (x, y, width, height) in the DICOM's pixels. Everything downstream
uses xyxy: `load_ground_truth` in original pixels, `Prepared.boxes` in the image_size
frame (`cache.scale_boxes`). `Prepared.masks` are the filled boxes at image_size
(`boxes_to_mask`), the target of the `linear` protocol (design section 5).
"""

from __future__ import annotations

from tasks import registry
from tasks.rsna import submission
from tasks.rsna.boxes import boxes_to_mask, clip_boxes
from tasks.rsna.data import ground_truth_splits, load_ground_truth, prepare
from tasks.rsna.generator import synth, synth_records
from tasks.rsna.labels import (
    BOX_FIELDS,
    CLASS_COLUMNS,
    CLASSES,
    LABEL_COLUMNS,
    OPACITY,
    BoxRow,
    count_label_rows,
    read_class_info,
    read_labels,
)
from tasks.rsna.layout import (
    CLASS_CSV,
    EXPECTED_LAYOUT,
    IMAGE_DIR,
    LABELS_CSV,
    TASK,
    find_dicoms,
    find_layout,
)
from tasks.rsna.submission import parse_prediction_string

__all__ = [
    "BOX_FIELDS",
    "CLASSES",
    "CLASS_COLUMNS",
    "CLASS_CSV",
    "EXPECTED_LAYOUT",
    "IMAGE_DIR",
    "LABELS_CSV",
    "LABEL_COLUMNS",
    "OPACITY",
    "SPEC",
    "TASK",
    "BoxRow",
    "boxes_to_mask",
    "clip_boxes",
    "count_label_rows",
    "find_dicoms",
    "find_layout",
    "ground_truth_splits",
    "load_ground_truth",
    "parse_prediction_string",
    "prepare",
    "read_class_info",
    "read_labels",
    "synth",
    "synth_records",
]

SPEC = registry.register(
    registry.TaskSpec(
        name=TASK,
        title="RSNA pneumonia detection",
        # linear = linear segmentation of the box masks, as LoVT does (design section 5)
        outputs={"linear": "mask", "frozen": "boxes", "finetune": "boxes"},
        metrics={"mask": ("dice", "dice_pooled", "dice_pos"),
                 "boxes": ("map", "map50", "map75", "rsna_score")},
        # the competition scored thresholded submissions: a model's boxes count from 0.5
        metric_defs={"rsna_score": registry.MetricDef("iou_sweep_score", {"min_score": 0.5})},
        metric_notes={"rsna_score": "the Kaggle RSNA Pneumonia metric (per image and IoU "
                      "threshold TP/(TP+FP+FN), averaged over thresholds then images)"},
        prepare=prepare,
        synth=synth,
        load_ground_truth=load_ground_truth,
        target=lambda entry: {"boxes": entry["boxes"]},
        submission=registry.SubmissionFormat(
            id_column="patientId",
            value_column="PredictionString",
            check=submission.check_row,
            parse=submission.parse_rows,
            format=submission.format_boxes,
        ),
        submission_kind="boxes",
        layout=EXPECTED_LAYOUT,
        # the RSNA pneumonia images are a subset of NIH ChestX-ray14
        image_sources=("NIH ChestX-ray14",),
    )
)
