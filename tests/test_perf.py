"""`bench perf`: a tiny measurement writes its table and JSON with every field (numbers not asserted)."""

from __future__ import annotations

import argparse
import json
import math
import statistics

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
    assert _positive(r["plain_fp32_ips"]) and r["fast_path_speedup"] == r["compute_ips"] / r["plain_fp32_ips"]
    assert r["fast_path"] == ("channels_last" if torch.backends.mkldnn.is_available() else
                              "nothing (the same float32, NCHW step)")  # fmt: skip
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
        assert r["reuse_speedup"][protocol] == v["speedup"] == statistics.median(v["round_speedups"])
        assert len(v["round_speedups"]) == v["store"]["rounds"] >= 1 and all(map(_positive, v["round_speedups"]))
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
    assert r["cache_build_2_vs_1"] == cb["ratio_2_vs_1"] == statistics.median(cb["round_ratios"])
    assert len(cb["round_ratios"]) == 1 and cb["ratio_2_vs_1"] == par["ips"] / cb["ips"]  # --rounds 1: one round
    assert r["targets"]["cache_build_2_vs_1_workers"] == 1.7
    assert sorted(r["pretrain"]) == sorted(methods)
    for name, v in r["pretrain"].items():
        assert _positive(v["ips"]), (name, v)
    for path, m in r["memory"].items():
        assert _positive(m["host_peak_mb"]), path
        assert m["device_peak_mb"] is None  # CPU
    assert {"compute", "pipeline", "plain_fp32", "loader", "dicom", "eval"} <= set(r["memory"])
    s = r["settings"]
    assert (
        s["task"] == task
        and s["arch"] == "resnet18"
        and s["image_size"] == image_size
        and s["batch_size"] == 4
    )
    assert s["device"] == "cpu" and s["synthetic"] is True and s["threads"] == 1
    assert r["env"]["device"] == "cpu" and r["command"].startswith(f"bench perf --task {task}")
    proj = r["projection"]
    assert proj["task"] == task and proj["runs"] == 315 and len(proj["rows"]) == 9
    assert _positive(proj["hours"]) and math.isclose(proj["hours"], sum(x["hours"] for x in proj["rows"]))
    assert {x["reuse"] for x in proj["rows"] if x["protocol"] != "finetune"} == {"reuse (memory)"}


def test_perf_siim_writes_table_and_json(tiny_synth, tmp_path):
    md, js = tmp_path / "reports" / "perf.md", tmp_path / "perf.json"
    threads = torch.get_num_threads()
    assert _perf(["--task", "siim", *TINY, "--out", str(md), "--json", str(js)]) == 0
    assert torch.get_num_threads() == threads  # --threads is restored after the measurement
    r = json.loads(js.read_text())
    _check_result(r, "siim", ["simclr", "moco", "convirt", "clip", "supervised"])
    text = md.read_text()
    for name in ("compute_ips", "pipeline_ips", "efficiency", "cache_speedup", "reuse_limit frozen", "fast_path_speedup",
                 "cache_build_ips", "cache_build_ips 2 workers", "cache_build_2_vs_1", "## Feature reuse", "## Pretraining", "## Projection", "## Peak memory", "## Settings", "## Machine"):  # fmt: skip
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


def _result(**over) -> dict:
    """A bench perf result with round figures (the fields bench.perf.projection reads)."""
    store = {"bytes": 1000 * 2**20, "images": 100}  # 10 MiB of features an image
    reuse = {p: {"n_train": 100, "reuse_epoch_s": 1.0, "encoder_ips": 500.0, "pipeline_ips": 50.0,
                 "store": dict(store)} for p in ("linear", "frozen")}  # fmt: skip
    reuse["frozen"]["reuse_epoch_s"] = 3.0  # a U-Net decoder: 30 ms an image, the linear head 10
    r = {"settings": {"task": "siim", "protocol": "finetune", "device": "cuda", "arch": "resnet50",
                      "image_size": 224, "batch_size": 16},
         "pipeline_ips": 100.0, "eval": {"eval_ips": 400.0, "metric_ips": 1000.0}, "reuse": reuse}  # fmt: skip
    r["settings"].update(over)
    return r


def test_projection_of_the_standard_table_is_its_formula():
    from bench.perf.projection import REAL_IMAGES, project

    n = REAL_IMAGES["siim"]
    p = project(_result(), budget=2**50)  # every store fits
    rows = {(x["protocol"], x["fraction"]): x for x in p["rows"]}
    assert p["runs"] == 315 and all(x["runs"] == 35 for x in p["rows"])
    # finetune 100%: 20 x (0.7 n / 100 + 0.15 n / 400) + 0.15 n / 400 seconds
    ft = 20 * (0.7 * n / 100 + 0.15 * n / 400) + 0.15 * n / 400
    assert math.isclose(rows[("finetune", 1.0)]["hours_per_run"], ft / 3600)
    assert math.isclose(rows[("finetune", 1.0)]["hours"], 35 * ft / 3600)
    # linear 10% with reuse: features of train+val+test once, 10 ms an image replayed, 11 ms to evaluate
    n_train = 0.07 * n
    lin = (n_train + 0.3 * n) / 500 + 20 * n_train * 0.01 + (20 * 0.15 * n + 0.15 * n) * 0.011
    assert math.isclose(rows[("linear", 0.1)]["hours_per_run"], lin / 3600)
    assert rows[("linear", 0.1)]["reuse"] == "reuse (memory)"
    assert math.isclose(p["hours"], sum(x["hours"] for x in p["rows"]))
    assert math.isclose(sum(x["share"] for x in p["rows"]), 1.0)
    by = p["by_protocol"]
    assert by["frozen"] > max(by["linear"], by["finetune"]) and p["dominant"].startswith("frozen (")

    # over the budget: a GPU runs the frozen protocols without reuse, at their pipeline's speed
    small = project(_result(), budget=2**30)
    fz = {(x["protocol"], x["fraction"]): x for x in small["rows"]}[("frozen", 1.0)]
    assert fz["reuse"].startswith("none") and fz["phases"]["features"] == 0
    want = 20 * (0.7 * n / 50 + 0.15 * n / 400) + 0.15 * n / 400
    assert math.isclose(fz["hours_per_run"], want / 3600)
    cpu = project(_result(device="cpu"), budget=2**30)  # the CPU keeps them on disk
    assert {x["reuse"] for x in cpu["rows"] if x["protocol"] == "frozen"} == {"reuse (disk)"}

    assert "skipped" in project(_result(task="lungs"))
    assert "--protocol finetune" in project(_result(protocol="frozen"))["skipped"]


def test_plain_fp32_turns_the_fast_path_off_and_back_on(monkeypatch):
    from bench.models import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert isinstance(dev.autocast(cuda), torch.autocast) and dev.channels_last(cuda)
    with dev.plain_fp32():
        assert not dev.channels_last(cuda) and not dev.channels_last(cpu)
        assert not isinstance(dev.autocast(cuda), torch.autocast)
        assert not dev.grad_scaler(cuda).is_enabled()
        with dev.plain_fp32():  # nested: still off after the inner block
            pass
        assert not dev.channels_last(cuda)
    assert dev.channels_last(cuda) and isinstance(dev.autocast(cuda), torch.autocast)
