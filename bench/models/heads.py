"""Output heads: one object per kind of output a task trains, all with one small interface.

A task says, per protocol, whether it trains a ``"mask"`` or ``"boxes"`` output
(``tasks.registry.TaskSpec.outputs``); :func:`make_head` returns the head for it:
:class:`bench.models.segmentation.SegmentationHead` or
:class:`bench.models.detection.DetectionHead`. The runner only ever talks to this
interface (as open_clip's ``task/clip_task.py`` bundles a model with its loss):

- ``build(encoder) -> ProtocolModel``: the model around the registry encoder, under
  the run's protocol;
- ``dataset(prepared, indices)`` and ``collate``: what the loaders iterate;
- ``diagnostics(prepared, train_indices) -> dict``: checks of the data against the
  model before training, merged into the record (the boxes head: ``anchor_coverage``);
- ``loss_step(model, batch, device) -> loss``: one training step's loss;
- ``predict(model, loader)``: yields ``(cache indices, predictions, targets)``;
- ``evaluator(ids)``: ``evaluate(model, loader) -> metrics`` for ``fit`` and the test;
- ``examples(model, prepared, indices) -> payload``: a few predictions for the report;
- ``to_original(prediction, orig_size, image_size)``: a prediction in the original
  image's pixels, which the task's ``SubmissionFormat.format`` writes;
- ``new_metrics(spec)``, ``empty(entry)`` (static): the task's metric accumulator
  (``add(ids, predictions, targets)``, ``compute()``) and an empty prediction, used by
  ``bench evaluate`` at original resolution.
"""

from __future__ import annotations

import torch


def head_class(kind: str):
    """The head class of an output kind (``"mask"`` or ``"boxes"``)."""
    from bench.models.detection import DetectionHead
    from bench.models.segmentation import SegmentationHead

    heads = {SegmentationHead.kind: SegmentationHead, DetectionHead.kind: DetectionHead}
    try:
        return heads[kind]
    except KeyError:
        raise ValueError(f"no head for output kind {kind!r}; known: {', '.join(heads)}") from None


def make_head(kind: str, cfg, winfo: dict, device: torch.device):
    """The head for ``kind``, set up for one run (its config, the init's normalization, device)."""
    return head_class(kind)(cfg, winfo, device)
