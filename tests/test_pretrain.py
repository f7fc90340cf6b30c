"""`bench pretrain` end to end: every method on a tiny synthetic corpus, the checkpoint it writes,
resume, the user catalogue, the leakage guard, the built-in default and the bad inputs."""

import json
from pathlib import Path

import pytest
import torch

from bench.cli import main

TINY = ["--arch", "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--quiet"]
TEXT = ["--text-max-length", "16"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "mimic"
    assert main(["synth", "--task", "pretrain", "--out", str(root), "--n", "10", "--size", "64", "--quiet"]) == 0
    return root


def _pretrain(corpus, out, method, name, *extra):
    return main(["pretrain", "--method", method, "--data", str(corpus), "--out", str(out), "--name", name,
                 *TINY, *extra])  # fmt: skip


def _record(out, name) -> dict:
    return json.loads((Path(out) / name / "pretrain.json").read_text())


@pytest.mark.parametrize("method,extra", [("simclr", []), ("moco", ["--positives", "same-study", "--queue-size", "32"]),
                                          ("convirt", TEXT), ("clip", TEXT), ("supervised", [])])  # fmt: skip
def test_each_method_writes_a_loadable_encoder_that_moved(method, extra, corpus, tmp_path, cache):
    import weights_registry as wr
    from bench.env import seed_everything
    from bench.pretrain.encoder import new_encoder

    out = tmp_path / "pre"
    assert _pretrain(corpus, out, method, f"{method}-test", *extra) == 0
    rec = _record(out, f"{method}-test")
    assert rec["status"] == "done" and rec["method"] == method and len(rec["history"]) == 1
    assert rec["history"][0]["steps"] >= 1 and rec["history"][0]["loss"] > 0
    assert rec["settings"]["image_size"] == 32 and "lr" in rec["from_recipe"]
    assert rec["data"]["layout"] == "mimic" and rec["data"]["synthetic"] is True
    # the strict registry loader takes it exactly, by path and by its catalogue name
    encoder, info = wr.load_encoder(out / f"{method}-test" / "encoder.safetensors", "resnet18")
    assert info["tensors_loaded"] == info["tensors_expected"] and not info["partial"]
    by_name, info2 = wr.load_encoder(f"{method}-test", "resnet18")
    assert info2["sha256"] == rec["sha256"] and info2["sha256_verified"] is True
    assert info2["pretrained_on"] == ["MIMIC-CXR-JPG (cxrbench synthetic)"] and info2["seen_tasks"] == []
    # ... and its weights differ from the initialization the seed gives
    seed_everything(0)
    start = new_encoder("resnet18").state_dict()
    moved = [k for k, v in encoder.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert "layer4.1.conv2.weight" in moved and "conv1.weight" in moved
    if method == "moco":
        pairs = rec["stats"]["positive_pairs"]
        assert rec["settings"]["positives"] == "same-study" and 0 <= pairs["fallback_fraction"] <= 1
    if method in ("convirt", "clip"):
        assert (out / f"{method}-test" / "text_encoder" / "config.json").exists()
        assert rec["stats"]["text_encoder"]["source"] == "builtin"


def test_weights_list_and_show_the_user_entry(corpus, tmp_path, cache, capsys):
    out = tmp_path / "pre"
    assert _pretrain(corpus, out, "simclr", "mine") == 0
    capsys.readouterr()
    assert main(["weights", "list"]) == 0
    assert any(line.startswith("mine ") and "local" in line for line in capsys.readouterr().out.splitlines())
    assert main(["weights", "show", "mine"]) == 0
    shown = capsys.readouterr().out
    assert str(out / "mine" / "encoder.safetensors") in shown and "method:" in shown


def test_resume_continues_and_refuses_other_settings(corpus, tmp_path, cache, capsys):
    out = tmp_path / "pre"
    assert _pretrain(corpus, out, "simclr", "r") == 0
    first = _record(out, "r")
    # same name again without --resume: refused, nothing overwritten
    assert _pretrain(corpus, out, "simclr", "r") == 2
    assert "--resume" in capsys.readouterr().err
    # more epochs is another setting: refused, naming it
    assert _pretrain(corpus, out, "simclr", "r", "--epochs", "2", "--resume") == 2
    assert "epochs: 1 -> 2" in capsys.readouterr().err
    assert _record(out, "r")["sha256"] == first["sha256"]
    # an interrupted two-epoch run resumes after its last finished epoch
    assert main(["pretrain", "--method", "simclr", "--data", str(corpus), "--out", str(out), "--name", "two",
                 *TINY[:-3], "--epochs", "2", "--batch-size", "8", "--quiet"]) == 0  # fmt: skip
    full = _record(out, "two")
    state = torch.load(out / "two" / "state.pt", weights_only=False)
    state["epoch"], state["history"] = 1, state["history"][:1]
    torch.save(state, out / "two" / "state.pt")
    assert main(["pretrain", "--method", "simclr", "--data", str(corpus), "--out", str(out), "--name", "two",
                 *TINY[:-3], "--epochs", "2", "--batch-size", "8", "--quiet", "--resume"]) == 0  # fmt: skip
    again = _record(out, "two")
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    assert again["history"][0] == full["history"][0]


def test_bad_inputs(corpus, tmp_path, cache, capsys):
    out = tmp_path / "pre"
    # a batch too small for a contrastive loss
    assert _pretrain(corpus, out, "simclr", "b", "--batch-size", "1") == 2
    assert "at least 2 samples" in capsys.readouterr().err
    # more images per batch than the data has
    assert _pretrain(corpus, out, "simclr", "b", "--batch-size", "4096") == 2
    assert "fewer than one batch" in capsys.readouterr().err
    # a text encoder folder that is not a model
    (tmp_path / "notamodel").mkdir()
    assert _pretrain(corpus, out, "convirt", "c", "--text-encoder", str(tmp_path / "notamodel")) == 2
    assert "notamodel" in capsys.readouterr().err
    # a packaged init's name
    assert _pretrain(corpus, out, "simclr", "convirt") == 2
    assert "packaged" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_epoch(corpus, tmp_path, cache, capsys, monkeypatch):
    from bench.pretrain.methods import simclr

    out = tmp_path / "pre"
    assert main(["pretrain", "--method", "simclr", "--data", str(corpus), "--out", str(out), "--name", "n",
                 *TINY[:-3], "--epochs", "1", "--batch-size", "8", "--quiet"]) == 0  # fmt: skip
    good = (out / "n" / "encoder.safetensors").read_bytes()
    # resume into a second epoch whose loss is NaN
    monkeypatch.setattr(simclr, "nt_xent", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    state = torch.load(out / "n" / "state.pt", weights_only=False)
    state["settings"]["epochs"] = 2
    torch.save(state, out / "n" / "state.pt")
    assert main(["pretrain", "--method", "simclr", "--data", str(corpus), "--out", str(out), "--name", "n",
                 *TINY[:-3], "--epochs", "2", "--batch-size", "8", "--quiet", "--resume"]) == 1  # fmt: skip
    assert "loss became nan at epoch 2" in capsys.readouterr().err
    rec = _record(out, "n")
    assert rec["status"] == "failed" and "hold epoch 1" in rec["error"]
    assert (out / "n" / "encoder.safetensors").read_bytes() == good


def test_convirt_on_a_layout_without_reports_is_refused(tmp_path, cache, capsys):
    import numpy as np
    from PIL import Image

    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(12):
        name = f"{i:08d}_000.png"
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(root / "images" / name)
        label = "Pneumonia" if i % 2 else "No Finding"
        rows.append(f"{name},{label},0,{i},50,M,PA,48,48,0.143,0.143,")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    assert _pretrain(root, tmp_path / "pre", "convirt", "c") == 2
    assert "needs reports" in capsys.readouterr().err
    # NIH ChestX-ray14 holds the RSNA (and SIIM-ACR) images: an encoder pretrained on it has seen both
    assert _pretrain(root, tmp_path / "pre", "supervised", "nih-sup", "--batch-size", "4") == 0
    import weights_registry as wr

    entry = wr.get_entry("nih-sup")
    assert entry.seen_tasks == ("siim", "rsna") and wr.check_leakage(entry, "rsna")
    assert entry.pretrained_on == ("NIH ChestX-ray14",)


def test_builtin_default_pretrains_once_on_synthetic_data(tmp_path, cache, capsys, monkeypatch):
    """`bench run --init convirt` with no checkpoint on the built-in synthetic data: pretrained once, then reused."""
    from bench.engine import dataroot
    from bench.pretrain import builtin

    monkeypatch.setattr(dataroot, "BUILTIN_SYNTH", {"n": 40, "seed": 0, "size": 64})
    monkeypatch.setattr(builtin, "BUILTIN_CORPUS", {"n_patients": 10, "seed": 7, "size": 64})
    monkeypatch.setattr(builtin, "BUILTIN", {"image_size": 32, "epochs": 1, "batch_size": 8, "seed": 0,
                                             "text_max_length": 16})  # fmt: skip
    monkeypatch.setenv("CXRBENCH_WEIGHTS", str(tmp_path / "weights"))
    run = ["run", "--task", "siim", "--init", "convirt", "--protocol", "linear", "--arch", "resnet18",
           "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--quiet", "--out", str(tmp_path / "runs")]
    assert main(run) == 0
    err = capsys.readouterr().err
    assert "has no checkpoint: pretraining a small convirt" in err and "SYNTHETIC" in err
    (rec_path,) = (tmp_path / "runs").glob("*.json")
    rec = json.loads(rec_path.read_text())
    assert rec["status"] == "complete" and rec["weights"]["init"] == "convirt"
    assert rec["weights"]["source"].startswith("built-in synthetic pretraining")
    assert rec["weights"]["tensors_loaded"] == rec["weights"]["tensors_expected"]
    (folder,) = (p for p in (tmp_path / "weights" / "builtin").iterdir() if not p.name.startswith("."))  # .lock
    stamp = (folder / "encoder.safetensors").stat().st_mtime_ns
    assert main([*run, "--seed", "1"]) == 0
    assert "pretraining a small" not in capsys.readouterr().err
    assert (folder / "encoder.safetensors").stat().st_mtime_ns == stamp


def test_real_data_without_checkpoint_names_bench_pretrain(tmp_path, cache, capsys):
    from tasks import get_task

    root = tmp_path / "siim"
    get_task("siim").synth(root, n=30, seed=0, size=64, progress=False)
    (root / "SYNTHETIC_DATA.txt").unlink()  # looks like the real data now
    assert main(["run", "--task", "siim", "--init", "clip", "--data-root", str(root), "--arch", "resnet18",
                 "--image-size", "64", "--epochs", "1", "--quiet", "--out", str(tmp_path / "runs")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "bench pretrain --method clip" in err and "--checkpoint" in err


def test_encoder_file_bytes_are_the_same_in_every_process(tmp_path):
    """The same tensors give the same encoder file in any process: safetensors orders a
    multi-key ``__metadata__`` by a per-process hash (identical weights had two sha256s)."""
    import hashlib
    import struct
    import subprocess
    import sys

    from bench.pretrain.train import encoder_bytes

    torch.manual_seed(0)
    state = {"conv1.weight": torch.randn(4, 3, 3, 3), "bn1.num_batches_tracked": torch.tensor(7)}
    torch.save(state, tmp_path / "state.pt")
    blob = encoder_bytes(state)
    n = struct.unpack("<Q", blob[:8])[0]
    assert list(json.loads(blob[8:8 + n])["__metadata__"]) == ["format"]  # one key: one order
    code = ("import sys, hashlib, torch; from bench.pretrain.train import encoder_bytes; "
            "print(hashlib.sha256(encoder_bytes(torch.load(sys.argv[1]))).hexdigest())")  # fmt: skip
    shas = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "state.pt")], capture_output=True,
                           text=True, check=True).stdout.strip() for _ in range(3)}  # fmt: skip
    assert shas == {hashlib.sha256(blob).hexdigest()}
