"""Detectors on a registry ResNet: frozen means frozen (BN stats included), finetune trains all."""

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision.ops.misc import FrozenBatchNorm2d

from bench.models.detection import (
    DETECTORS,
    anchor_coverage,
    anchor_generator,
    build_detector,
    detection_collate,
    iou_sweep_metrics,
    make_evaluate,
    make_loss_step,
)
from tasks import get_task

SIZE = 64
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two cores shared with other processes: one thread is faster and steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _encoder(channels: int = 3) -> torchvision.models.ResNet:
    """What the weights registry returns: a ResNet with ``fc`` replaced by Identity."""
    torch.manual_seed(0)
    enc = torchvision.models.resnet18()
    if channels != 3:
        enc.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    enc.fc = nn.Identity()
    return enc


def _detector(detector: str, protocol: str, channels: int = 3):
    model = build_detector(
        _encoder(channels),
        "resnet18",
        protocol,
        channels,
        [0.5] * channels,
        [0.25] * channels,
        detector=detector,
        image_size=SIZE,
    )
    # fewer sampled RoIs than torchvision's 512 keeps Faster R-CNN fast on a CPU
    if detector == "fasterrcnn":
        model.model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    return model


def _dataset(n: int = 4) -> list:
    """(uint8 image, {"boxes"}, index); odd images have no box."""
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        image = torch.randint(0, 256, (SIZE, SIZE), dtype=torch.uint8, generator=g)
        boxes = [[8.0, 10.0, 40.0, 50.0]] if i % 2 == 0 else []
        items.append((image, {"boxes": torch.tensor(boxes).reshape(-1, 4)}, i))
    return items


def _train(model, steps: int = 2, channels: int = 3) -> None:
    batch = detection_collate(_dataset(2))  # one image with a box, one without
    loss_step = make_loss_step(channels)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = loss_step(model, batch, CPU)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module: nn.Module) -> set:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("detector", DETECTORS)
def test_frozen_backbone_does_not_move(detector):
    model = _detector(detector, "frozen")
    body = model.encoder
    assert not any(p.requires_grad for p in body.parameters())
    body_before, all_before = _snapshot(body), _snapshot(model)
    _train(model)
    assert not body.training and all(not m.training for m in body.modules())
    assert _changed(body_before, body) == set()  # weights and BN running stats
    moved = {_group(k) for k in _changed(all_before, model)}
    heads = {"head"} if detector == "retinanet" else {"rpn", "roi_heads"}
    assert moved == {"backbone.fpn"} | heads


def _group(key: str) -> str:
    """'model.backbone.fpn.layer_blocks.0.weight' -> 'backbone.fpn'; 'model.head.x' -> 'head'."""
    parts = key.split(".")[1:]
    return ".".join(parts[:2]) if parts[0] == "backbone" else parts[0]


@pytest.mark.parametrize("detector", DETECTORS)
def test_finetune_trains_everything(detector):
    model = _detector(detector, "finetune")
    assert all(p.requires_grad for p in model.parameters())
    before = _snapshot(model.encoder)
    _train(model)
    changed = _changed(before, model.encoder)
    for key in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        assert key in changed, key
    assert {"bn1.running_mean", "layer1.0.bn1.running_var"} <= changed


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("protocol", ["frozen", "finetune"])
def test_no_frozen_batchnorm_anywhere(detector, protocol):
    model = _detector(detector, protocol)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules()) == 20


def test_one_channel_encoder_trains_and_predicts():
    model = _detector("retinanet", "finetune", channels=1)
    _train(model, steps=1, channels=1)
    loader = DataLoader(_dataset(2), batch_size=2, collate_fn=detection_collate)
    result = make_evaluate(CPU, ["a", "b"])(model, loader)
    assert result["n_images"] == 2


@pytest.mark.parametrize("detector", DETECTORS)
def test_evaluate_scores_every_image(detector):
    model = _detector(detector, "frozen")
    ids = [f"patient{i}" for i in range(4)]
    loader = DataLoader(_dataset(4), batch_size=3, collate_fn=detection_collate)
    result = make_evaluate(CPU, ids, iou_sweep=iou_sweep_metrics(get_task("rsna")))(model, loader)
    assert {"map", "map50", "map75", "rsna_score"} <= set(result)
    assert 0.0 <= result["map"] <= 1.0
    assert (result["n_images"], result["n_positive_images"], result["n_gt_boxes"]) == (4, 2, 2)
    assert model.encoder.training is False  # eval mode after evaluation


def test_protocol_and_channel_checks():
    with pytest.raises(ValueError, match="linear"):
        build_detector(_encoder(), "resnet18", "linear", 3, [0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match="channels"):
        build_detector(_encoder(), "resnet18", "frozen", 1, [0.5], [0.25])
    with pytest.raises(ValueError, match="C5"):
        build_detector(_encoder(), "resnet50", "frozen", 3, [0.5] * 3, [0.25] * 3)


def test_transform_keeps_image_size_and_normalization():
    model = _detector("retinanet", "frozen")
    t = model.model.transform
    assert t.min_size == (SIZE,) and t.max_size == SIZE
    assert t.image_mean == [0.5] * 3 and t.image_std == [0.25] * 3
    images, _ = t([torch.rand(3, SIZE, SIZE)])
    assert images.tensors.shape[-2:] == (SIZE, SIZE)


def test_anchors_are_torchvisions_defaults_at_every_image_size():
    for size in (64, 256, 1024):
        assert anchor_generator("retinanet", size).sizes[0] == pytest.approx(
            (32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3))
        )
        assert anchor_generator("fasterrcnn", size).sizes == ((32,), (64,), (128,), (256,), (512,))


def test_anchors_cover_the_synthetic_boxes_better_than_image_scaled_ones():
    """Why the anchors are not scaled with the image (module docstring): on the synthetic
    RSNA boxes, anchors scaled by image_size / 1024 leave most boxes at 128 px without a
    positive anchor; torchvision's stride-tied defaults cover them."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from tasks.rsna.generator import synth_records

    rel = torch.tensor([b for r in synth_records(200, 0, 256) for b in r["boxes"]]) / 256.0
    for size in (128, 256):
        boxes = rel * size
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        scale = size / 1024
        scaled = AnchorGenerator(
            tuple(tuple(x * scale * 2 ** (k / 3) for k in range(3)) for x in (32, 64, 128, 256, 512)),
            ((0.5, 1.0, 2.0),) * 5,
        )
        ours = anchor_coverage("retinanet", size, boxes)
        theirs = anchor_coverage("retinanet", size, boxes, generator=scaled)
        assert ours >= (0.7 if size == 128 else 0.99) and ours > theirs


def test_runs_record_anchor_coverage_and_warn_when_boxes_are_below_the_anchors():
    """At 64 px the synthetic boxes (~12 px) are under the smallest anchor (32 px): the run
    records a coverage of 0 and warns; at 256 px every box has an anchor."""
    from types import SimpleNamespace

    from bench.engine.config import RunConfig
    from bench.models.detection import DetectionHead
    from tasks.rsna.generator import synth_records

    recs = list(synth_records(40, 0, 256))
    rel = [np.asarray(r["boxes"], dtype=np.float32).reshape(-1, 4) / 256.0 for r in recs]
    winfo = {"in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    for size, detector in ((64, "retinanet"), (64, "fasterrcnn"), (256, "retinanet")):
        boxes = [b * size for b in rel]
        for b in boxes:
            b[:, 2:] += b[:, :2]
        cfg = RunConfig(task="rsna", protocol="finetune", image_size=size, detector=detector, out="x")
        head = DetectionHead(cfg, winfo, torch.device("cpu"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = head.diagnostics(SimpleNamespace(boxes=boxes), list(range(len(boxes))))
        cov = info["anchor_coverage"]
        assert cov["boxes"] == sum(len(b) for b in boxes) > 0 and cov["iou"] == 0.5
        if size == 64:
            assert cov["share"] == 0.0
            assert len(caught) == 1 and "raise --image-size" in str(caught[0].message)
        else:
            assert cov["share"] == 1.0 and not caught
    # no box at all: no share, no warning
    head = DetectionHead(RunConfig(task="rsna", protocol="frozen", image_size=64, out="x"), winfo,
                         torch.device("cpu"))  # fmt: skip
    assert head.diagnostics(SimpleNamespace(boxes=[np.zeros((0, 4))]), [0])["anchor_coverage"]["share"] is None
