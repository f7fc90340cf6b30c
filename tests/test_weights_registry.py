"""Loading checkpoints in every supported key layout into a torchvision ResNet, strictly.

Each test writes its own small resnet18 checkpoint in a real-world layout and
checks that the loaded encoder holds exactly the original tensors.
"""

from __future__ import annotations

import argparse
import hashlib

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

import weights_registry as wr
from weights_registry import (
    CheckpointMismatchError,
    UnknownInitError,
    UntrustedCheckpointError,
    UserCheckpointRequiredError,
    WeightsError,
    load_encoder,
)

N_R18 = 100  # tensors of a fc-less resnet18 without num_batches_tracked


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRBENCH_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setenv("CXRBENCH_OFFLINE", "1")


def _random_resnet18_sd(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-default values so equality means something
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_()
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(7)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r18() -> dict[str, torch.Tensor]:
    return _random_resnet18_sd(0)


def _encoder(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _assert_same(model: nn.Module, original: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(_encoder(original))
    for k, v in loaded.items():
        assert torch.equal(v, original[k]), k


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_info(info: dict, path, fmt: str) -> None:
    assert info["format"] == fmt
    assert info["tensors_loaded"] == info["tensors_expected"] == N_R18
    assert info["missing"] == info["unexpected"] == info["shape_mismatched"] == []
    assert info["partial"] is False
    assert info["file"] == str(path.resolve())
    assert info["sha256"] == _sha(path)


# ------------------------------------------------------------------ layouts


def test_plain_torchvision_state_dict(tmp_path, r18):
    path = tmp_path / "resnet18-plain.pth"
    torch.save(r18, path)
    model, info = load_encoder(str(path), "resnet18")
    _assert_same(model, r18)
    _check_info(info, path, "plain")
    assert isinstance(model, torchvision.models.ResNet) and isinstance(model.fc, nn.Identity)
    assert sorted(info["ignored"]) == ["fc.bias", "fc.weight"]
    assert info["in_channels"] == 3 and info["mean"] == [0.485, 0.456, 0.406]
    assert info["source"] == str(path.resolve()) and info["sha256_verified"] is None
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


def test_xrv_like_one_channel_checkpoint(tmp_path, r18):
    sd = dict(r18)
    torch.manual_seed(1)
    sd["conv1.weight"] = torch.randn(64, 1, 7, 7)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(18, 512), torch.randn(18)
    path = tmp_path / "xrv-like-state.pt"
    torch.save(sd, path)

    model, info = load_encoder(path, "resnet18")  # a Path works as well as a str
    _assert_same(model, sd)
    _check_info(info, path, "xrv")
    assert model.conv1.in_channels == 1 and info["in_channels"] == 1
    assert info["mean"] == [0.5] and info["std"] == [1 / 2048]
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 512)

    # Through the catalogue entry, with the local file replacing the download.
    model, info = load_encoder("supervised", "resnet18", checkpoint=path)
    _assert_same(model, sd)
    assert info["init"] == "supervised" and info["seen_tasks"] == ["siim", "rsna"]
    assert wr.check_leakage(info, "siim") and wr.check_leakage(info, "RSNA")


def test_moco_checkpoint_keeps_query_encoder(tmp_path, r18):
    key_encoder = _random_resnet18_sd(5)  # different values: loading encoder_k would be caught
    sd = {"module.encoder_q." + k: v for k, v in _encoder(r18).items()}
    sd.update(
        {
            "module.encoder_q.fc.0.weight": torch.randn(512, 512),
            "module.encoder_q.fc.0.bias": torch.randn(512),
        }
    )
    sd.update(
        {
            "module.encoder_q.fc.2.weight": torch.randn(128, 512),
            "module.encoder_q.fc.2.bias": torch.randn(128),
        }
    )
    sd.update({"module.encoder_k." + k: v for k, v in _encoder(key_encoder).items()})
    sd["module.queue"] = torch.randn(128, 4096)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "r8w-00001.pth.tar"
    torch.save(
        {"epoch": 20, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}}}, path
    )

    for init, kw in ((str(path), {}), ("moco", {"checkpoint": path})):
        model, info = load_encoder(init, "resnet18", **kw)
        _assert_same(model, r18)
        _check_info(info, path, "moco")
        assert info["prefix"] == "module.encoder_q."
        assert "module.encoder_k.* (120 tensors)" in info["ignored"]
        assert {"module.queue", "module.queue_ptr", "fc.0.weight", "fc.2.bias"} <= set(
            info["ignored"]
        )


def _lightning(state_dict: dict, **extra) -> dict:
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "1.9.0",
        "state_dict": state_dict,
        **extra,
    }


def _gloria_sd(r18: dict) -> dict:
    sd = {"gloria.img_encoder.model." + k: v for k, v in _encoder(r18).items()}
    sd["gloria.img_encoder.global_embedder.weight"] = torch.randn(768, 512)
    sd["gloria.text_encoder.model.embeddings.word_embeddings.weight"] = torch.randn(30, 8)
    return sd


def test_gloria_lightning_checkpoint(tmp_path, r18):
    path = tmp_path / "chexpert_resnet18.ckpt"
    torch.save(_lightning(_gloria_sd(r18)), path)
    for init, kw in ((str(path), {}), ("gloria", {"checkpoint": str(path)})):
        model, info = load_encoder(init, "resnet18", **kw)
        _assert_same(model, r18)
        _check_info(info, path, "gloria")
        assert info["mean"] == [0.5, 0.5, 0.5] and info["std"] == [0.5, 0.5, 0.5]


def test_mgca_checkpoint_renames_blocks_to_layer(tmp_path, r18):
    sd = {
        "img_encoder_q.model." + k.replace("layer", "blocks"): v for k, v in _encoder(r18).items()
    }
    assert any("blocks" in k for k in sd)
    sd["img_encoder_q.global_embed.head.weight"] = torch.randn(128, 512)
    sd["text_encoder_q.model.embeddings.word_embeddings.weight"] = torch.randn(30, 8)
    sd["prototype_layer.weight"] = torch.randn(500, 128)
    path = tmp_path / "mgca.ckpt"
    torch.save(_lightning(sd), path)
    for init, kw in ((str(path), {}), ("mgca", {"checkpoint": path})):
        model, info = load_encoder(init, "resnet18", **kw)
        _assert_same(model, r18)
        _check_info(info, path, "mgca")


def test_lovt_checkpoint(tmp_path, r18):
    prefix = "model_a.encoder.feature_extractor.backbone_layers."
    sd = {prefix + k: v for k, v in _encoder(r18).items()}
    sd["model_a.encoder.global_projector.0.weight"] = torch.randn(16, 512)
    sd["model_b.encoder.transformer.embeddings.word_embeddings.weight"] = torch.randn(30, 8)
    path = tmp_path / "lovt.ckpt"
    torch.save(_lightning(sd), path)
    for init, kw in ((str(path), {}), ("lovt", {"checkpoint": path})):
        model, info = load_encoder(init, "resnet18", **kw)
        _assert_same(model, r18)
        _check_info(info, path, "lovt")


def test_biovil_checkpoint(tmp_path, r18):
    sd = {"encoder.encoder." + k: v for k, v in r18.items()}  # hi-ml's ResNet keeps its fc
    sd["projector.projector.0.weight"] = torch.randn(128, 512, 1, 1)
    path = tmp_path / "biovil_image_resnet18.pt"
    torch.save(sd, path)
    for init, kw in ((str(path), {}), ("biovil", {"checkpoint": path})):
        model, info = load_encoder(init, "resnet18", **kw)
        _assert_same(model, r18)
        _check_info(info, path, "biovil")
        assert "fc.weight" in info["ignored"]
        assert info["mean"] == [0.0, 0.0, 0.0] and info["std"] == [1.0, 1.0, 1.0]


def test_safetensors_checkpoint(tmp_path, r18):
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in r18.items()}, str(path))
    model, info = load_encoder(str(path), "resnet18")
    _assert_same(model, r18)
    _check_info(info, path, "plain")


def test_lightning_wrapper_prefix_found_or_given(tmp_path, r18):
    sd = {"backbone." + k: v for k, v in _encoder(r18).items()}
    sd["projection_head.0.weight"] = torch.randn(128, 512)
    path = tmp_path / "simclr.ckpt"
    torch.save(_lightning(sd), path)

    model, info = load_encoder("simclr", "resnet18", checkpoint=path)
    _assert_same(model, r18)
    assert info["format"] == "lightning" and info["prefix"] == "backbone."

    model, info = load_encoder(str(path), "resnet18", prefix="backbone")  # trailing dot optional
    _assert_same(model, r18)
    assert info["format"] == "prefix" and info["prefix"] == "backbone."


def test_dataparallel_model_container(tmp_path, r18):
    path = tmp_path / "dp.pth"
    torch.save({"model": {"module." + k: v for k, v in r18.items()}, "epoch": 1}, path)
    model, info = load_encoder(str(path), "resnet18")
    _assert_same(model, r18)
    assert info["prefix"] == "module." and info["tensors_loaded"] == N_R18


def test_missing_num_batches_tracked_is_fine(tmp_path, r18):
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in r18.items() if not k.endswith("num_batches_tracked")}, path)
    model, info = load_encoder(str(path), "resnet18")
    assert info["tensors_loaded"] == N_R18 and not info["partial"]
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, r18[k])


# ------------------------------------------------------------------ strictness


def test_wrong_arch_names_the_architecture(tmp_path, r18):
    path = tmp_path / "r18.pth"
    torch.save(r18, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_encoder(str(path), "resnet50")
    msg = str(err.value)
    assert "looks like resnet18 (BasicBlock" in msg and "arch=resnet50" in msg
    assert "missing (" in msg and "shape mismatch (" in msg


def test_partial_checkpoint_lists_missing_keys(tmp_path, r18):
    sd = {k: v for k, v in r18.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_encoder(str(path), "resnet18")
    n_missing = sum(
        1 for k in r18 if k.startswith("layer4.") and not k.endswith("num_batches_tracked")
    )
    assert f"missing ({n_missing})" in str(err.value)
    assert "layer4.0.conv1.weight" in str(err.value)
    assert "allow_partial" in str(err.value)


def test_allow_partial_loads_what_matches(tmp_path, r18):
    sd = {k: v for k, v in r18.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.warns(UserWarning, match="partial load"):
        model, info = load_encoder(str(path), "resnet18", allow_partial=True)
    assert info["partial"] is True
    assert (
        info["tensors_loaded"] == N_R18 - len(info["missing"])
        and "layer4.0.conv1.weight" in info["missing"]
    )
    loaded = model.state_dict()
    for k, v in sd.items():
        if not k.startswith("fc."):
            assert torch.equal(loaded[k], v), k


def test_prefix_that_matches_nothing_fails_and_suggests_layout(tmp_path, r18):
    path = tmp_path / "gloria.ckpt"
    torch.save(_lightning(_gloria_sd(r18)), path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_encoder("mgca", "resnet18", checkpoint=path)  # wrong family: MGCA's prefix is absent
    assert "0 of 100" in str(err.value) and "'gloria' layout" in str(err.value)
    with pytest.raises(
        CheckpointMismatchError
    ):  # allow_partial never turns "nothing matched" into random
        load_encoder("mgca", "resnet18", checkpoint=path, allow_partial=True)


def test_checkpoint_with_no_resnet_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointMismatchError, match="First keys of the checkpoint"):
        load_encoder(str(path), "resnet18")


def test_pickled_namespace_needs_trust(tmp_path, r18):
    path = tmp_path / "with_hparams.ckpt"
    torch.save(
        _lightning(_gloria_sd(r18), hyper_parameters=argparse.Namespace(lr=1e-4, emb_dim=768)), path
    )
    with pytest.raises(UntrustedCheckpointError) as err:
        load_encoder("gloria", "resnet18", checkpoint=path)
    assert str(path) in str(err.value) and "--trust-checkpoint" in str(err.value)
    model, info = load_encoder("gloria", "resnet18", checkpoint=path, trust_checkpoint=True)
    _assert_same(model, r18)
    assert info["tensors_loaded"] == N_R18


# ------------------------------------------------------------------ names


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownInitError) as err:
        load_encoder("imagenett")
    msg = str(err.value)
    for name in ("random", "imagenet", "supervised", "moco", "gloria", "biovil"):
        assert name in msg
    assert "path to a checkpoint" in msg
    assert isinstance(err.value, WeightsError) and isinstance(err.value, Exception)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_encoder(str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="not found"):
        load_encoder("gloria", checkpoint=tmp_path / "nope.ckpt")


def test_user_checkpoint_entry_without_file_explains():
    with pytest.raises(UserCheckpointRequiredError) as err:
        load_encoder("convirt")
    assert "no public weights" in str(err.value) and "--checkpoint" in str(err.value)


def test_unsupported_arch():
    with pytest.raises(WeightsError, match="unsupported arch"):
        load_encoder("random", "resnet101")
    with pytest.raises(WeightsError, match="provides resnet50"):
        load_encoder("imagenet-v2", "resnet18")


def test_random_loads_nothing_and_follows_the_global_seed():
    torch.manual_seed(3)
    model, info = load_encoder("random", "resnet18")
    torch.manual_seed(3)
    again = wr.build_encoder("random", "resnet18")
    assert info["tensors_loaded"] == 0 and info["source"] == "none" and info["format"] == "none"
    assert info["sha256"] is None and not info["partial"]
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert isinstance(model.fc, nn.Identity)
    with pytest.raises(WeightsError):
        load_encoder("random", "resnet18", checkpoint="x.pth")


def test_check_leakage_accepts_entries_and_names():
    assert wr.check_leakage("supervised", "siim") and wr.check_leakage(
        wr.get_entry("supervised"), "rsna"
    )
    assert not wr.check_leakage("imagenet", "siim")
    assert not wr.check_leakage({"seen_tasks": []}, "rsna")


def test_mean_std_override(tmp_path, r18):
    path = tmp_path / "gloria-like.pth"
    torch.save(r18, path)
    _, info = load_encoder(str(path), "resnet18", mean=[0.5], std=[0.5])
    assert info["mean"] == [0.5] * 3 and info["std"] == [0.5] * 3
    assert info["normalization"].startswith("given (--mean/--std; the init's own was: ImageNet")
    _, info = load_encoder("random", "resnet18", mean=[0.1, 0.2, 0.3], std=[1, 2, 3])
    assert info["mean"] == [0.1, 0.2, 0.3] and info["std"] == [1.0, 2.0, 3.0]
    with pytest.raises(wr.WeightsError, match="--mean has 2 values but the encoder takes 3"):
        load_encoder(str(path), "resnet18", mean=[0.5, 0.5], std=[0.5])
    with pytest.raises(wr.WeightsError, match="--std values must be > 0"):
        load_encoder(str(path), "resnet18", mean=[0.5], std=[0.0])
