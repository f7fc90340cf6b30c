"""Protocols (design §5, §8.5): what trains and what does not, BatchNorm included."""

import pytest
import torch
import torchvision

from bench.engine.train import fit
from bench.models.datasets import Normalize, SegmentationDataset, make_loader
from bench.models.protocols import LoadMismatch, load_into
from bench.models.segmentation import build_segmenter, make_loss_step


def _encoder(channels=3):
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None)
    if channels != 3:
        m.conv1 = torch.nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    m.fc = torch.nn.Identity()
    return m


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return sorted(k for k in before if not torch.equal(before[k], after[k]))


def _train_steps(model, steps=3):
    norm = Normalize([0.5], [0.25], 1)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(8, 64, 64, generator=gen) * 255).to(torch.uint8).numpy()
    masks = (torch.rand(8, 64, 64, generator=gen) > 0.7).to(torch.uint8).numpy()
    loader = make_loader(SegmentationDataset(images, masks, range(8)), 4, train=True, seed=0)
    loss_step = make_loss_step(norm)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        for batch in loader:
            loss = loss_step(model, batch, torch.device("cpu"))
            opt.zero_grad()
            loss.backward()
            opt.step()


@pytest.mark.parametrize("protocol", ["frozen", "linear"])
def test_frozen_protocols_keep_encoder_and_bn_stats(protocol):
    model = build_segmenter(_encoder(1), "resnet18", protocol, in_channels=1)
    enc_before = _snapshot(model.encoder)
    all_before = _snapshot(model)
    _train_steps(model)
    assert _changed(enc_before, model.encoder) == []  # weights AND running_mean/var/num_batches
    assert not any(m.training for m in model.encoder.modules())
    changed = _changed(all_before, model)
    assert changed, "the head/decoder must train"
    assert all(not k.startswith("model.encoder.") for k in changed)
    if protocol == "linear":
        # the 1x1 conv trains; the probe's parameter-free BatchNorm only tracks C5's statistics
        assert set(k.split(".")[1] for k in changed) == {"head", "norm"}
        assert {k for k in changed if k.startswith("model.norm.")} <= {
            "model.norm.running_mean", "model.norm.running_var", "model.norm.num_batches_tracked"
        }
        assert list(model.model.norm.parameters()) == []
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"model.head.weight", "model.head.bias"}


def test_finetune_trains_encoder_and_bn_stats():
    model = build_segmenter(_encoder(1), "resnet18", "finetune", in_channels=1)
    before = _snapshot(model.encoder)
    _train_steps(model)
    changed = _changed(before, model.encoder)
    assert "conv1.weight" in changed
    assert "bn1.running_mean" in changed and "layer4.1.bn2.running_var" in changed


def test_random_init_with_frozen_protocol_stays_frozen():
    """A random encoder under 'frozen' is a baseline, not silently trained (design §8.5)."""
    model = build_segmenter(_encoder(3), "resnet18", "frozen", in_channels=3)
    assert all(not p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training and model.model.decoder.training


def test_encoder_weights_land_in_unet():
    enc = _encoder(1)
    model = build_segmenter(enc, "resnet18", "finetune", in_channels=1)
    src = enc.state_dict()
    dst = model.encoder.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in src)


def test_load_into_refuses_mismatch():
    import segmentation_models_pytorch as smp

    unet = smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1)
    with pytest.raises(LoadMismatch, match="missing"):
        load_into(unet.encoder, _encoder(3).state_dict())


def test_fit_early_stopping_restores_best_and_nan_stops():
    from bench.engine.train import NanLossError

    model = build_segmenter(_encoder(1), "resnet18", "linear", in_channels=1)
    scores = iter([0.5, 0.7, 0.6, 0.6, 0.6, 0.6])
    states = []

    def evaluate(m, loader):
        states.append(_snapshot(m))
        return {"dice": next(scores)}

    norm = Normalize([0.5], [0.25], 1)
    images = torch.zeros(4, 64, 64, dtype=torch.uint8).numpy()
    loader = make_loader(SegmentationDataset(images, images, range(4)), 2, train=True, seed=0)
    out = fit(
        model,
        loader,
        loader,
        loss_step=make_loss_step(norm),
        evaluate=evaluate,
        metric="dice",
        lr=1e-2,
        weight_decay=0,
        epochs=6,
        patience=2,
        device=torch.device("cpu"),
        progress=False,
    )
    assert out["best_epoch"] == 2 and len(out["history"]) == 4 and out["stopped_early"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in states[1].items())

    def nan_step(m, batch, device):
        return m(torch.zeros(2, 1, 64, 64)).sum() * float("nan")

    with pytest.raises(NanLossError, match="nan"):
        fit(
            model,
            loader,
            loader,
            loss_step=nan_step,
            evaluate=evaluate,
            metric="dice",
            lr=1e-2,
            weight_decay=0,
            epochs=2,
            patience=2,
            device=torch.device("cpu"),
            progress=False,
        )


@pytest.mark.parametrize(("src", "dst"), [((2, 2), (64, 64)), ((7, 7), (224, 224)), ((3, 5), (10, 7)), ((9, 4), (4, 9))])
def test_bilinear_upsample_is_torch_interpolate(src, dst):
    """The linear probe's separable upsampling: F.interpolate's values and gradients, up to
    float rounding, for up- and downsampling, non-square and non-integer ratios."""
    from bench.models.segmentation import bilinear_upsample

    torch.manual_seed(0)
    x = torch.randn(3, 2, *src, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, *dst, dtype=torch.float64)
    ref = torch.nn.functional.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    out = bilinear_upsample(x, dst)
    (grad,) = torch.autograd.grad(out, x, g)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-12)
    # float32, channels_last (as the probe's logits on CPU): the same values as float32 interpolate
    x32 = x.detach().float().contiguous(memory_format=torch.channels_last)
    ref32 = torch.nn.functional.interpolate(x32, size=dst, mode="bilinear", align_corners=False)
    assert torch.allclose(bilinear_upsample(x32, dst), ref32, rtol=0, atol=1e-5)
