"""Detection metrics: mAP over all images (negatives included), the IoU-sweep score (RSNA's
``rsna_score``), bookkeeping."""

import dataclasses

import numpy as np
import pytest
import torch

from bench.metrics.detection import (
    IOU_SWEEP_SCORE,
    IOU_THRESHOLDS,
    DetMetrics,
    box_iou,
    iou_sweep_image_score,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from bench.models.detection import iou_sweep_metrics
from tasks import MetricDef, get_task

GT = {
    "a": [[10.0, 10.0, 50.0, 60.0]],
    "b": [[0.0, 0.0, 20.0, 20.0], [60.0, 60.0, 90.0, 100.0]],
    "c": [],  # a negative image
}


def _pred(boxes, scores):
    return {"boxes": np.asarray(boxes, dtype=float).reshape(-1, 4), "scores": np.asarray(scores)}


def _target(boxes):
    return {"boxes": np.asarray(boxes, dtype=float).reshape(-1, 4)}


def _metrics(preds: dict, gt: dict = GT, **kwargs) -> dict:
    m = DetMetrics(**kwargs)
    ids = list(gt)
    m.update(ids, [preds.get(i, _pred([], [])) for i in ids], [_target(gt[i]) for i in ids])
    return m.compute()


def test_box_converters_round_trip():
    xywh = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert xywh_to_xyxy(xywh).tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert xyxy_to_xywh(xywh_to_xyxy(xywh)).tolist() == xywh.tolist()
    assert xywh_to_xyxy(np.zeros((0, 4))).shape == (0, 4)


def test_perfect_predictions_score_one():
    preds = {i: _pred(b, np.linspace(0.9, 0.5, len(b))) for i, b in GT.items() if b}
    r = _metrics(preds)
    for key in ("map", "map50", "map75", IOU_SWEEP_SCORE):
        assert r[key] == pytest.approx(1.0), key
    assert (r["n_images"], r["n_positive_images"], r["n_gt_boxes"], r["n_pred_boxes"]) == (
        3,
        2,
        3,
        3,
    )


def test_no_predictions_score_zero():
    r = _metrics({})
    assert r["map"] == r["map50"] == r["map75"] == 0.0
    assert r[IOU_SWEEP_SCORE] == 0.0  # positives with no prediction: all FN
    assert r["n_pred_boxes"] == 0


def test_no_positive_image_has_undefined_map():
    gt = {"x": [], "y": []}
    r = _metrics({"x": _pred([[0, 0, 5, 5]], [0.9])}, gt)
    assert r["map"] is None and r["map50"] is None and r["map75"] is None
    assert r[IOU_SWEEP_SCORE] == 0.0  # "x" scored 0, "y" is skipped
    r = _metrics({}, gt)
    assert r["map"] is None and r[IOU_SWEEP_SCORE] is None


def test_false_positive_on_negative_image_lowers_map():
    """MGCA skips images without targets, so their false positives are free (§8.3)."""
    preds = {
        "a": _pred([[12, 10, 50, 60], [0, 0, 5, 5]], [0.5, 0.3]),
        "b": _pred([[0, 0, 20, 22], [60, 60, 90, 100]], [0.4, 0.2]),
    }
    clean = _metrics(preds)
    with_fp = _metrics({**preds, "c": _pred([[30, 30, 70, 70]], [0.95])})
    assert with_fp["map"] < clean["map"]
    assert with_fp[IOU_SWEEP_SCORE] < clean[IOU_SWEEP_SCORE]


def test_iou_sweep_boundary_is_strict():
    gt = np.array([[0.0, 0.0, 10.0, 10.0]])
    pred = np.array([[0.0, 0.0, 10.0, 6.0]])  # IoU exactly 0.6
    assert box_iou(gt, pred)[0, 0] == 0.6
    # TP at 0.40, 0.45, 0.50, 0.55 (IoU > t); at 0.60..0.75 one FP + one FN -> 0
    assert iou_sweep_image_score(gt, pred, [0.9]) == pytest.approx(4 / 8)


def test_iou_sweep_hand_cases():
    gt = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    hit, miss = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]
    assert iou_sweep_image_score(gt, np.array([hit]), [0.9]) == pytest.approx(1 / 2)  # 1 TP, 1 FN
    assert iou_sweep_image_score(gt, np.array([hit, miss]), [0.9, 0.8]) == pytest.approx(1 / 3)
    assert iou_sweep_image_score(np.zeros((0, 4)), np.array([miss]), [0.1]) == 0.0
    assert iou_sweep_image_score(np.zeros((0, 4)), np.zeros((0, 4)), []) is None
    assert iou_sweep_image_score(gt, np.zeros((0, 4)), []) == 0.0


def test_iou_sweep_matches_in_confidence_order():
    gt = np.array([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0]])
    a = [2.0, 0.0, 12.0, 10.0]  # IoU 2/3 with both targets (tie: takes the first)
    b = [0.0, 0.0, 10.0, 10.0]  # IoU 1 with the first target, 3/7 with the second
    # a first: a takes target 1; b gets target 2 only at t=0.40 -> (1 + 7 * 1/3) / 8
    assert iou_sweep_image_score(gt, np.array([a, b]), [0.9, 0.2]) == pytest.approx(5 / 12)
    # b first: b takes target 1, a target 2 up to t=0.65 -> (6 + 2 * 1/3) / 8
    assert iou_sweep_image_score(gt, np.array([a, b]), [0.2, 0.9]) == pytest.approx(5 / 6)
    assert iou_sweep_image_score(gt, np.array([b, a]), [0.9, 0.2]) == pytest.approx(5 / 6)


def test_min_score_only_affects_the_iou_sweep_score():
    """RSNA declares ``rsna_score`` as the IoU-sweep score of the boxes scoring >= 0.5."""
    assert iou_sweep_metrics(get_task("rsna")) == {"rsna_score": 0.5}
    preds = {"a": _pred([[10, 10, 50, 60], [0, 0, 5, 5]], [0.9, 0.1])}
    low = _metrics(preds, {"a": GT["a"]})
    high = _metrics(preds, {"a": GT["a"]}, iou_sweep=iou_sweep_metrics(get_task("rsna")))
    assert low["map"] == high["map"] and "rsna_score" not in low and IOU_SWEEP_SCORE not in high
    assert low[IOU_SWEEP_SCORE] == pytest.approx(1 / 2) and high["rsna_score"] == 1.0
    both = _metrics(preds, {"a": GT["a"]}, iou_sweep={"all": 0.0, "cut": 0.5})
    assert (both["all"], both["cut"]) == (low[IOU_SWEEP_SCORE], 1.0)
    m = DetMetrics()
    m.update(["a"], [preds["a"]], [_target(GT["a"])])
    assert m.per_image_iou_sweep() == {"a": pytest.approx(1 / 2)}
    assert m.per_image_iou_sweep(0.5) == {"a": 1.0}


def test_iou_sweep_declarations_are_checked():
    with pytest.raises(ValueError, match="clash"):
        DetMetrics(iou_sweep={"map": 0.5})
    rsna = get_task("rsna")
    bad = dataclasses.replace(rsna, name="bad", metric_defs={"rsna_score": MetricDef("f1")})
    with pytest.raises(ValueError, match="'rsna_score' is 'f1'"):
        iou_sweep_metrics(bad)
    bad = dataclasses.replace(rsna, name="bad", metric_defs={
        "rsna_score": MetricDef(IOU_SWEEP_SCORE, {"min_scor": 0.5})})
    with pytest.raises(ValueError, match="min_scor"):
        iou_sweep_metrics(bad)
    with pytest.raises(ValueError, match="does not report"):
        dataclasses.replace(rsna, name="bad", metric_defs={"other": MetricDef(IOU_SWEEP_SCORE)})
    # a task may also report the generic score under its own name, every box counted
    plain = dataclasses.replace(rsna, name="plain", metric_defs={},
                                metrics={**rsna.metrics, "boxes": ("map", IOU_SWEEP_SCORE)})
    assert iou_sweep_metrics(plain) == {IOU_SWEEP_SCORE: 0.0}


def test_duplicate_id_raises():
    m = DetMetrics()
    m.update(["a"], [_pred([], [])], [_target([])])
    with pytest.raises(ValueError, match="twice"):
        m.update(["a"], [_pred([], [])], [_target([])])
    with pytest.raises(ValueError, match="twice"):
        DetMetrics().update(["b", "b"], [_pred([], [])] * 2, [_target([])] * 2)


def test_malformed_inputs_raise():
    with pytest.raises(ValueError, match="scores"):
        DetMetrics().update(["a"], [_pred([[0, 0, 1, 1]], [0.1, 0.2])], [_target([])])
    with pytest.raises(ValueError, match="x1 <= x2"):  # x y w h passed as xyxy
        DetMetrics().update(["a"], [_pred([], [])], [_target([[50, 40, 10, 10]])])


def _random_case(rng: np.random.Generator, n_images: int = 12):
    """Random targets (some images without boxes) and noisy scored predictions."""
    preds, targets = [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 4))
        xy = rng.uniform(0, 80, (m, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 40, (m, 2))], 1)
        noisy = gt + rng.normal(0, 3, gt.shape)
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 80, (k, 2))
        extra = np.concatenate([xy, xy + rng.uniform(8, 40, (k, 2))], 1)
        boxes = np.concatenate([noisy, extra])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append(_pred(boxes, rng.uniform(0.05, 1, len(boxes))))
        targets.append(_target(gt))
    return preds, targets


@pytest.mark.parametrize("seed", range(5))
def test_map_agrees_with_torchmetrics(seed):
    from torchmetrics.detection import MeanAveragePrecision

    preds, targets = _random_case(np.random.default_rng(seed))
    if not any(len(t["boxes"]) for t in targets):
        targets[0] = _target([[1.0, 1.0, 30.0, 30.0]])
    ours = DetMetrics()
    ours.update(range(len(preds)), preds, targets)
    r = ours.compute()

    def tensors(d, scores):
        out = {"boxes": torch.tensor(d["boxes"], dtype=torch.float64).reshape(-1, 4)}
        out["labels"] = torch.zeros(len(out["boxes"]), dtype=torch.long)
        if scores:
            out["scores"] = torch.tensor(d["scores"], dtype=torch.float64)
        return out

    # torchmetrics keeps every image, with or without target boxes, in imgIds
    tm = MeanAveragePrecision(
        box_format="xyxy", iou_thresholds=list(IOU_THRESHOLDS), backend="pycocotools"
    )
    tm.update([tensors(p, True) for p in preds], [tensors(t, False) for t in targets])
    expected = tm.compute()
    assert r["map"] == pytest.approx(float(expected["map"]), abs=1e-6)
    assert r["map50"] == pytest.approx(float(expected["map_50"]), abs=1e-6)
    assert r["map75"] == pytest.approx(float(expected["map_75"]), abs=1e-6)


def test_batch_order_and_input_type_invariance():
    preds, targets = _random_case(np.random.default_rng(7), n_images=10)
    ids = [f"img{i}" for i in range(10)]
    one = DetMetrics()
    one.update(ids, preds, targets)
    other = DetMetrics()
    for chunk in ([7, 2, 9], [0, 5], [8, 1, 3, 4, 6]):
        other.update(
            [ids[i] for i in chunk],
            [{k: torch.from_numpy(v) for k, v in preds[i].items()} for i in chunk],
            [targets[i] for i in chunk],
        )
    assert one.compute() == other.compute()
