"""catalogue.yaml is complete and consistent; the validator rejects malformed entries."""

from __future__ import annotations

import copy

import pytest
import yaml

import weights_registry as wr
from weights_registry.adapters import ADAPTERS
from weights_registry.catalogue import parse_catalogue

EXPECTED = ["random", "imagenet", "imagenet-v2", "supervised", "moco", "simclr", "convirt", "clip",
            "gloria", "mgca", "lovt", "biovil"]  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRBENCH_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setenv("CXRBENCH_OFFLINE", "1")


def test_expected_entries_in_order():
    assert [e.name for e in wr.list_inits()] == EXPECTED


@pytest.mark.parametrize("entry", wr.list_inits(), ids=lambda e: e.name)
def test_entry_is_consistent(entry):
    assert entry.archs and set(entry.archs) <= set(wr.ARCHS)
    assert entry.format in ADAPTERS
    assert len(entry.mean) == len(entry.std) == entry.in_channels
    assert all(s > 0 for s in entry.std)
    assert entry.description and entry.note and entry.citation
    assert set(entry.seen_tasks) <= {"siim", "rsna"}
    if entry.user_checkpoint:
        assert not entry.sources and entry.source_kind == "user" and entry.format != "none"
    elif entry.format == "none":
        assert not entry.sources and entry.source_kind == "none"
    else:
        assert entry.source_kind == "download" and set(entry.sources) == set(entry.archs)
        for arch, src in entry.sources.items():
            assert src.url.startswith("https://") and src.url.endswith(src.file)
            if src.hash_prefix:
                assert f"-{src.hash_prefix}." in src.file
            assert wr.cache_path(entry, arch).name == src.file


def test_key_facts():
    imagenet = wr.get_entry("imagenet")
    assert [imagenet.source(a).file for a in wr.ARCHS] == [
        "resnet18-f37072fd.pth",
        "resnet34-b627a593.pth",
        "resnet50-0676ba61.pth",
    ]
    assert wr.get_entry("imagenet-v2").source("resnet50").hash_prefix == "11ad3fa6"
    sup = wr.get_entry("supervised")
    assert (
        sup.in_channels == 1
        and sup.mean == (0.5,)
        and sup.std == (1 / 2048,)
        and sup.format == "xrv"
    )
    assert set(sup.seen_tasks) == {"siim", "rsna"}
    assert sup.source("resnet50").url.endswith(
        "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"
    )
    assert wr.get_entry("moco").source("resnet50").file == "r5w-00001.pth.tar"
    assert wr.get_entry("gloria").mean == (0.5, 0.5, 0.5)
    assert wr.get_entry("random").mean == wr.get_entry("imagenet").mean
    for name in ("simclr", "convirt", "clip", "gloria", "mgca", "lovt", "biovil"):
        assert wr.get_entry(name).user_checkpoint
    assert (
        "released none" in wr.get_entry("convirt").note
        or "released no" in wr.get_entry("convirt").note
    )


def _raw() -> dict:
    from importlib import resources

    return yaml.safe_load(
        resources.files("weights_registry").joinpath("catalogue.yaml").read_text()
    )


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("imagenet", {"mean": [0.5, 0.5]}, "one value per input channel"),
        ("supervised", {"std": [0.5, 0.5, 0.5]}, "one value per input channel"),
        ("imagenet", {"archs": ["resnet101"]}, "archs"),
        ("imagenet", {"format": "timm"}, "unknown format"),
        ("random", {"std": [0.2, 0.0, 0.2]}, "positive"),
        ("gloria", {"source": {"url": "https://example.org/x.ckpt"}}, "no download url"),
        ("moco", {"source": {"homepage": "https://example.org"}}, "needs source.url"),
        ("imagenet", {"colour": "red"}, "unknown fields"),
    ],
)
def test_validation_rejects(name, change, message):
    raw = copy.deepcopy(_raw())
    raw[name].update(change)
    with pytest.raises(wr.CatalogueError, match=message):
        parse_catalogue(raw)


def test_table_and_describe():
    text = wr.table()
    for name in EXPECTED:
        assert name in text
    assert "LEAKAGE: siim,rsna" in text
    shown = wr.describe("supervised")
    assert "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt" in shown
    assert str(wr.cache_path("supervised", "resnet50")) in shown and "not downloaded" in shown
    assert "siim, rsna" in shown and "0.000488281" in shown
    assert "--checkpoint" in wr.describe("mgca")
    with pytest.raises(wr.UnknownInitError):
        wr.describe("nope")
