"""Evaluation throughput: the head's evaluator over validation images, with and without the model.

- ``eval_ips``: ``head.evaluator(ids)(model, loader)`` on up to ``steps x batch_size``
  validation images: prediction (the model's forward in eval mode, autocast on CUDA)
  plus the metrics (Dice for masks, COCO mAP and the IoU-sweep score for boxes), as each
  validation epoch and the test run it;
- ``metric_ips``: the same evaluator on the same loader with the model replaced by
  :class:`ReplayModel`, which returns the predictions recorded in the first pass: the
  metric computation (and the loader, normalization, thresholding around it) alone.
"""

from __future__ import annotations

from torch import nn

from bench.perf.meter import Meter


class ReplayModel(nn.Module):
    """Returns recorded model outputs in order, one per call: the evaluator without the model."""

    def __init__(self, outputs: list, in_channels: int | None = None):
        super().__init__()
        self.outputs, self.i, self.in_channels = outputs, 0, in_channels

    def forward(self, *args, **kwargs):
        out = self.outputs[self.i]
        self.i += 1
        return out


def measure_eval(setup, trainer) -> dict:
    s = setup.settings
    idx = setup.splits["val"][: s.steps * s.batch_size]
    ids = setup.prepared.ids
    evaluate = trainer.head.evaluator(ids)
    model = trainer.model
    evaluate(
        model, trainer.loader(setup.prepared, idx[: s.batch_size], train=False)
    )  # warm-up, untimed

    outputs: list = []
    handle = model.register_forward_hook(lambda m, a, out: outputs.append(out))
    full = Meter("eval", setup.device)
    try:
        with full.chunk():
            metrics = evaluate(model, trainer.loader(setup.prepared, idx, train=False))
    finally:
        handle.remove()
    replay = Meter("metric", setup.device)
    with replay.chunk():
        evaluate(ReplayModel(outputs, getattr(model, "in_channels", None)),
                 trainer.loader(setup.prepared, idx, train=False))  # fmt: skip
    full.images = replay.images = len(idx)
    full.steps = replay.steps = len(outputs)
    reported = trainer.cfg.spec.metrics[trainer.output]
    result = {
        "eval_ips": full.ips,
        "metric_ips": replay.ips,
        "n_images": len(idx),
        "output": trainer.output,
        "metrics": [m for m in reported if m in metrics] or sorted(metrics),
        "memory": {"eval": full.memory(), "eval_metric": replay.memory()},
    }
    boxes = _predicted_boxes(outputs)
    if boxes is not None:  # the metric's cost grows with them (an untrained detector predicts few)
        result["predicted_boxes"] = boxes
    return result


def _predicted_boxes(outputs: list) -> int | None:
    """Boxes the detector returned over all batches; None for outputs that are not box lists."""
    if not outputs or not isinstance(outputs[0], list):
        return None
    return sum(
        len(o["boxes"]) for batch in outputs for o in batch if isinstance(o, dict) and "boxes" in o
    )
