"""Cache location, offline behaviour, hash verification and (file://) downloads of weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import platformdirs
import pytest
import torch
import torchvision

import weights_registry as wr
from weights_registry import HashMismatchError, InitEntry, SourceFile, WeightsUnavailableError
from weights_registry.fetch import fetch_verified


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRBENCH_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setenv("CXRBENCH_OFFLINE", "1")


def _entry(
    url: str, file: str, sha256: str | None = None, hash_prefix: str | None = None
) -> InitEntry:
    """A one-arch test entry in the same shape as the catalogue's torchvision entries."""
    return InitEntry(
        name="test-init",
        description="test",
        archs=("resnet18",),
        format="plain",
        in_channels=3,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        pretrained_on=("nothing",),
        seen_tasks=(),
        note="",
        citation="",
        sources={
            "resnet18": SourceFile(url=url, file=file, sha256=sha256, hash_prefix=hash_prefix)
        },
    )


def _resnet18_file(tmp_path: Path) -> tuple[Path, str, dict]:
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "src.pth"
    torch.save(sd, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), sd


def test_weights_dir_env_and_default(monkeypatch, tmp_path):
    assert wr.weights_dir() == (tmp_path / "cache").resolve()
    monkeypatch.delenv("CXRBENCH_WEIGHTS")
    assert wr.weights_dir() == Path(platformdirs.user_cache_dir("cxrbench")) / "weights"


def test_offline_fetch_says_url_path_and_hash(tmp_path):
    target = (tmp_path / "cache" / "imagenet" / "resnet50-0676ba61.pth").resolve()
    assert wr.cache_path("imagenet", "resnet50") == target
    with pytest.raises(WeightsUnavailableError) as err:
        wr.fetch(wr.get_entry("imagenet"), "resnet50")
    msg = str(err.value)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert str(target) in msg and "0676ba61" in msg and "offline" in msg
    assert not target.exists()
    # The same through load_encoder, and with offline=True instead of the environment.
    with pytest.raises(WeightsUnavailableError, match="resnet18-f37072fd.pth"):
        wr.load_encoder("imagenet", "resnet18")


def test_offline_argument_overrides_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CXRBENCH_OFFLINE")
    with pytest.raises(WeightsUnavailableError, match="offline"):
        wr.fetch("supervised", "resnet50", offline=True)


def test_cached_file_with_wrong_hash_is_refused(tmp_path):
    target = wr.cache_path("imagenet", "resnet50")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the torchvision weights")
    actual = hashlib.sha256(b"not the torchvision weights").hexdigest()
    with pytest.raises(HashMismatchError) as err:
        wr.fetch("imagenet", "resnet50")
    msg = str(err.value)
    assert str(target) in msg and "0676ba61" in msg and actual in msg
    assert wr.is_cached("imagenet", "resnet50")
    assert "present" in wr.describe("imagenet")


def test_verify_file_full_hash_and_name_prefix(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"some weights")
    sha = hashlib.sha256(b"some weights").hexdigest()
    assert wr.sha256_file(path) == sha
    assert wr.verify_file(path) == (sha, None)
    assert wr.verify_file(path, hash_prefix=sha[:8]) == (sha, True)
    assert wr.verify_file(path, sha256=sha) == (sha, True)
    assert wr.verify_file(path, sha256=sha, hash_prefix=sha[:10]) == (sha, True)
    with pytest.raises(HashMismatchError, match=sha):
        wr.verify_file(path, hash_prefix="deadbeef")
    with pytest.raises(HashMismatchError, match="0" * 64):
        wr.verify_file(path, sha256="0" * 64)


def test_cached_file_with_matching_prefix_loads_verified(tmp_path):
    src, sha, sd = _resnet18_file(tmp_path)
    entry = _entry(
        "https://example.invalid/resnet18-x.pth", f"resnet18-{sha[:8]}.pth", hash_prefix=sha[:8]
    )
    target = wr.cache_path(entry, "resnet18")
    target.parent.mkdir(parents=True)
    target.write_bytes(src.read_bytes())

    assert wr.fetch(entry, "resnet18") == target  # offline, but cached: no download needed
    model, info = wr.load_encoder(entry, "resnet18")
    assert info["sha256"] == sha and info["sha256_verified"] is True
    assert info["source"] == "https://example.invalid/resnet18-x.pth" and info["file"] == str(
        target
    )
    assert torch.equal(model.state_dict()["layer3.1.conv2.weight"], sd["layer3.1.conv2.weight"])


def test_download_verifies_and_renames_atomically(monkeypatch, tmp_path):
    monkeypatch.delenv("CXRBENCH_OFFLINE")
    src, sha, _ = _resnet18_file(tmp_path)
    entry = _entry(src.as_uri(), "resnet18-test.pth", sha256=sha)
    path, actual, verified = fetch_verified(entry, "resnet18")
    assert path == wr.cache_path(entry, "resnet18") and path.read_bytes() == src.read_bytes()
    assert actual == sha and verified is True
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "resnet18-test.pth"
    ]  # no temp files left


def test_download_with_wrong_hash_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("CXRBENCH_OFFLINE")
    src, sha, _ = _resnet18_file(tmp_path)
    entry = _entry(src.as_uri(), "resnet18-test.pth", sha256="f" * 64)
    with pytest.raises(HashMismatchError):
        wr.fetch(entry, "resnet18")
    assert list(wr.cache_path(entry, "resnet18").parent.iterdir()) == []


def test_failed_download_says_url_and_path(monkeypatch, tmp_path):
    monkeypatch.delenv("CXRBENCH_OFFLINE")
    url = (tmp_path / "does-not-exist.pth").as_uri()
    entry = _entry(url, "resnet18-test.pth")
    with pytest.raises(WeightsUnavailableError) as err:
        wr.fetch(entry, "resnet18")
    target = wr.cache_path(entry, "resnet18")
    assert (
        url in str(err.value)
        and str(target) in str(err.value)
        and "download failed" in str(err.value)
    )
    assert list(target.parent.iterdir()) == []


def test_user_checkpoint_entries_cannot_be_fetched():
    with pytest.raises(wr.UserCheckpointRequiredError, match="--checkpoint"):
        wr.fetch("gloria", "resnet50")
