"""Segmentation metrics (design §6) and the per-batch Dice defect (design §8.4)."""

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from bench.metrics.segmentation import SegMetrics, dice_per_image
from bench.metrics.stats import summarize


def _masks(rows):
    return np.array(rows, dtype=bool)


def test_dice_hand_cases():
    full = np.ones((1, 4, 4), bool)
    empty = np.zeros((1, 4, 4), bool)
    half = np.zeros((1, 4, 4), bool)
    half[0, :2] = True  # 8 pixels
    quarter = np.zeros((1, 4, 4), bool)
    quarter[0, 0] = True  # 4 pixels, all inside `half`
    pred = np.concatenate([full, empty, half, quarter, empty])
    target = np.concatenate([full, empty, empty, half, half])
    # perfect 1; both empty 1; false positive on empty target 0;
    # |p|=4, |t|=8, inter=4 -> 8/12; missed positive 0
    np.testing.assert_allclose(dice_per_image(pred, target), [1, 1, 0, 8 / 12, 0])
    # torch input, (N,1,H,W) shape gives the same numbers
    got = dice_per_image(torch.from_numpy(pred)[:, None], torch.from_numpy(target)[:, None])
    np.testing.assert_allclose(got, [1, 1, 0, 8 / 12, 0])


def test_seg_metrics_mean_pooled_pos_by_hand():
    # image a: |p|=1, |t|=3, inter=1 -> 2/4 = 0.5
    # image b: |p|=12, |t|=12, inter=12 -> 1
    # image c: empty/empty -> 1 (not in dice_pos, not in pooled)
    a_p, a_t = np.zeros((4, 4)), np.zeros((4, 4))
    a_p[0, 0] = 1
    a_t[0, :3] = 1
    b = np.zeros((4, 4))
    b[1:] = 1
    c = np.zeros((4, 4))
    m = SegMetrics()
    m.update(np.stack([a_p, b, c]) * 0.9, np.stack([a_t, b, c]), ["a", "b", "c"])
    out = m.compute()
    assert out["dice"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert out["dice_pooled"] == pytest.approx(2 * (1 + 12) / (1 + 3 + 12 + 12))  # 26/28
    assert out["dice_pos"] == pytest.approx(0.75)
    assert out["n_images"] == 3 and out["n_positive"] == 2
    assert m.per_image() == pytest.approx({"a": 0.5, "b": 1.0, "c": 1.0})


def test_threshold_and_shapes():
    probs = torch.tensor([[[[0.5, 0.51], [0.2, 0.0]]]])  # (1,1,2,2): only 0.51 > 0.5
    target = torch.tensor([[[[0, 1], [0, 0]]]], dtype=torch.float32)
    m = SegMetrics()
    m.update(probs, target, ["x"])
    assert m.compute()["dice"] == 1.0
    with pytest.raises(ValueError, match="probabilities"):
        SegMetrics().update(probs * 3 - 1, target, ["x"])  # logits
    with pytest.raises(ValueError, match="image ids"):
        SegMetrics().update(probs, target, ["x", "y"])
    with pytest.raises(ValueError, match="one channel"):
        SegMetrics().update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), ["x"])


def test_no_positives_and_no_images():
    m = SegMetrics()
    m.update(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), [0, 1])
    out = m.compute()
    assert out["dice"] == 1.0 and out["dice_pooled"] == 1.0
    assert out["dice_pos"] is None and out["n_positive"] == 0
    with pytest.raises(ValueError):
        SegMetrics().compute()


def _random_set(n=40, size=16, seed=0):
    """Random masks with every kind of image: empty/empty (Dice 1), empty target with a
    false positive (0), missed positive (0), perfect, and ordinary overlaps."""
    rng = np.random.default_rng(seed)
    probs = rng.random((n, 1, size, size)).astype(np.float32)
    target = rng.random((n, 1, size, size)) < 0.3
    q = n // 4
    target[:q] = False  # empty targets ...
    probs[:4] = 0.0  # ... with empty predictions for the first four
    probs[q : q + 4] = 0.0  # empty predictions, non-empty targets
    probs[-5:] = np.where(target[-5:], 0.9, 0.1)  # perfect predictions
    return probs, target, [f"img{i:03d}" for i in range(n)]


def test_agrees_with_monai():
    probs, target, ids = _random_set()
    pred_t = torch.from_numpy(probs > 0.5).float()
    targ_t = torch.from_numpy(target).float()
    m = SegMetrics()
    m.update(probs, target, ids)
    out = m.compute()

    monai_all = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    monai_all(pred_t, targ_t)
    per_image = monai_all.aggregate().flatten().numpy()
    np.testing.assert_allclose(list(m.per_image().values()), per_image, rtol=1e-6)

    mean_metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    mean_metric(pred_t, targ_t)
    assert out["dice"] == pytest.approx(float(mean_metric.aggregate()), rel=1e-6)

    pos_metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    pos_metric(pred_t, targ_t)
    assert out["dice_pos"] == pytest.approx(float(np.nanmean(pos_metric.aggregate())), rel=1e-6)
    # the set really contains every kind of image
    assert 0 < out["n_positive"] < out["n_images"]
    q = len(ids) // 4
    np.testing.assert_array_equal(per_image[:4], 1.0)  # empty/empty
    np.testing.assert_array_equal(per_image[4:q], 0.0)  # empty target, false positive
    np.testing.assert_array_equal(per_image[q : q + 4], 0.0)  # missed positive


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_invariant_to_batching_and_order(batch_size):
    probs, target, ids = _random_set(n=23)
    ref = SegMetrics()
    ref.update(probs, target, ids)
    expected = ref.compute()

    order = np.random.default_rng(batch_size).permutation(len(ids))
    m = SegMetrics()
    for start in range(0, len(ids), batch_size):
        idx = order[start : start + batch_size]  # last batch is short: nothing dropped
        m.update(torch.from_numpy(probs[idx]), torch.from_numpy(target[idx]), [ids[i] for i in idx])
    assert m.compute() == expected
    assert m.per_image() == pytest.approx(ref.per_image())

    # what a batch-averaged Dice would report differs (design §8.4)
    batch_means = [
        dice_per_image(probs[order[s : s + 7]] > 0.5, target[order[s : s + 7]]).mean()
        for s in range(0, len(ids), 7)
    ]
    assert np.mean(batch_means) != pytest.approx(expected["dice"])


def test_duplicate_image_id_raises():
    probs, target, ids = _random_set(n=6)
    m = SegMetrics()
    m.update(probs[:3], target[:3], ids[:3])
    with pytest.raises(ValueError, match="seen twice"):
        m.update(probs[2:5], target[2:5], ids[2:5])
    with pytest.raises(ValueError, match="seen twice"):
        SegMetrics().update(probs[:2], target[:2], ["same", "same"])
    with pytest.raises(ValueError, match="seen twice"):  # tensors of ids hash by identity
        SegMetrics().update(probs[:2], target[:2], torch.tensor([5, 5]))
    assert len(m) == 3  # the refused batch left nothing behind


def test_summarize_hand_numbers():
    s = summarize([0.5, 0.6, 0.7])
    assert s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(0.1)
    half = 0.1 * 4.302653 / math.sqrt(3)
    assert s["ci_half"] == pytest.approx(half, rel=1e-6)
    assert s["ci_low"] == pytest.approx(0.6 - half, rel=1e-6)
    assert s["ci_high"] == pytest.approx(0.6 + half, rel=1e-6)
    assert s["n"] == 3 and s["n_ignored"] == 0


def test_summarize_single_missing_and_empty():
    one = summarize([0.42])
    assert one["mean"] == 0.42 and one["n"] == 1
    assert one["std"] is None and one["ci_half"] is None and one["ci_low"] is None
    s = summarize([0.5, None, float("nan"), 0.7])
    assert s["n"] == 2 and s["n_ignored"] == 2 and s["mean"] == pytest.approx(0.6)
    assert s["ci_half"] == pytest.approx(math.sqrt(0.02) * 12.706205 / math.sqrt(2), rel=1e-6)
    none = summarize([])
    assert none["n"] == 0 and none["mean"] is None
