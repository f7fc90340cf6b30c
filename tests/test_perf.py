"""`bench perf`: a tiny measurement writes its table and JSON with every field (numbers not asserted)."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from bench.engine import dataroot

TINY = ["--image-size", "32", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--rounds", "1",
        "--dicoms", "2", "--threads", "1", "--device", "cpu", "--quiet"]  # fmt: skip


@pytest.fixture
def tiny_synth(monkeypatch):
    monkeypatch.setattr(dataroot, "BUILTIN_SYNTH", {"n": 40, "seed": 0, "size": 64})


def _perf(argv: list[str]) -> int:
    from bench.cli import perf

    parser = argparse.ArgumentParser(prog="bench")
    perf.add_parser(parser.add_subparsers(dest="cmd"), "")
    args = parser.parse_args(["perf", *argv])
    return args.func(args)


def _positive(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_result(r: dict, task: str, methods: list[str], image_size: int = 32) -> None:
    for key in ("compute_ips", "pipeline_ips", "efficiency", "loader_ips", "dicom_ips", "cache_speedup",
                "dicom_step_ips", "dicom_step_efficiency"):  # fmt: skip
        assert _positive(r[key]), (key, r[key])
    assert r["efficiency"] == r["pipeline_ips"] / r["compute_ips"]
    assert r["cache_speedup"] == r["loader_ips"] / r["dicom_ips"]
    assert r["dicom_step_efficiency"] == r["dicom_step_ips"] / r["compute_ips"]
    assert set(r["reuse_speedup"]) == {"linear", "frozen"}
    assert "computed once" in r["reuse_note"]
    assert set(r["reuse_limit"]) == {"linear", "frozen"}
    for protocol, limit in r["reuse_limit"].items():
        v = r["reuse"][protocol]
        assert _positive(limit) and limit == v["head_step_ips"] / v["full_step_ips"]
        for key in ("full_step_ips", "head_step_ips", "encoder_ips", "pipeline_ips", "epoch_s",
                    "epoch_s_reuse_limit", "features_once_s", "reuse_epoch_s", "speedup", "ratio_to_limit"):  # fmt: skip
            assert _positive(v[key]), (protocol, key, v[key])
        assert v["n_train"] == r["settings"]["n_train"]
        assert r["reuse_speedup"][protocol] == v["speedup"] == v["epoch_s"] / v["reuse_epoch_s"]
        assert v["store"]["storage"] == "memory" and v["store"]["images"] == v["n_train"]
        # the head-only step on replayed features computes the full step's loss
        assert 0 <= v["head_loss_diff"] <= 1e-6, (protocol, v["head_loss_diff"])
    assert _positive(r["eval"]["eval_ips"]) and _positive(r["eval"]["metric_ips"])
    assert r["eval"]["n_images"] >= 1 and r["eval"]["metrics"]
    cb = r["cache_build"]
    assert (
        _positive(cb["ips"])
        and cb["workers"] == 1
        and cb["n_images"] == 2
        and cb["source_size"] == 1024
    )
    assert _positive(cb["seconds"]) and cb["image_size"] == image_size
    par = cb["parallel"]
    assert par["workers"] == 2 and _positive(par["ips"]) and _positive(par["seconds"])
    assert _positive(cb["usable_cores"])
    assert r["cache_build_2_vs_1"] == cb["ratio_2_vs_1"] == par["ips"] / cb["ips"]
    assert r["targets"]["cache_build_2_vs_1_workers"] == 1.7
    assert sorted(r["pretrain"]) == sorted(methods)
    for name, v in r["pretrain"].items():
        assert _positive(v["ips"]), (name, v)
    for path, m in r["memory"].items():
        assert _positive(m["host_peak_mb"]), path
        assert m["device_peak_mb"] is None  # CPU
    assert {"compute", "pipeline", "loader", "dicom", "eval"} <= set(r["memory"])
    s = r["settings"]
    assert (
        s["task"] == task
        and s["arch"] == "resnet18"
        and s["image_size"] == image_size
        and s["batch_size"] == 4
    )
    assert s["device"] == "cpu" and s["synthetic"] is True and s["threads"] == 1
    assert r["env"]["device"] == "cpu" and r["command"].startswith(f"bench perf --task {task}")


def test_perf_siim_writes_table_and_json(tiny_synth, tmp_path):
    md, js = tmp_path / "reports" / "perf.md", tmp_path / "perf.json"
    threads = torch.get_num_threads()
    assert _perf(["--task", "siim", *TINY, "--out", str(md), "--json", str(js)]) == 0
    assert torch.get_num_threads() == threads  # --threads is restored after the measurement
    r = json.loads(js.read_text())
    _check_result(r, "siim", ["simclr", "moco", "convirt", "clip", "supervised"])
    text = md.read_text()
    for name in ("compute_ips", "pipeline_ips", "efficiency", "cache_speedup", "reuse_limit frozen",
                 "cache_build_ips", "cache_build_ips 2 workers", "cache_build_2_vs_1", "## Feature reuse", "## Pretraining", "## Peak memory", "## Settings", "## Machine"):  # fmt: skip
        assert name in text


def test_perf_rsna_detection(tiny_synth, tmp_path):
    js = tmp_path / "perf.json"
    argv = [
        "--task",
        "rsna",
        *TINY,
        "--image-size",  # at 32 px a synthetic box can shrink to a line: an infinite box loss
        "64",
        "--methods",
        "none",
        "--out",
        str(tmp_path / "perf.md"),
        "--json",
        str(js),
    ]
    assert _perf(argv) == 0
    r = json.loads(js.read_text())
    _check_result(r, "rsna", [], image_size=64)
    assert r["settings"]["output"] == "boxes"
    assert r["reuse"]["frozen"]["output"] == "boxes" and r["reuse"]["linear"]["output"] == "mask"


def test_perf_settings_are_checked():
    from bench.perf.settings import PerfSettings

    with pytest.raises(ValueError, match="--rounds"):
        PerfSettings(task="siim", steps=2, rounds=3)
    with pytest.raises(ValueError, match="--methods"):
        PerfSettings(task="siim", methods=("byol",))
    with pytest.raises(ValueError, match="--steps"):
        PerfSettings(task="siim", steps=0)
    with pytest.raises(ValueError, match="--threads"):
        PerfSettings(task="siim", threads=0)


def test_perf_refuses_a_folder_as_out(tmp_path):
    with pytest.raises(ValueError, match="--out"):
        _perf(["--task", "siim", "--out", str(tmp_path)])
