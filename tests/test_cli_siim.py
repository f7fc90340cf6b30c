"""End to end through the real CLI on synthetic SIIM data in the Kaggle layout."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torchvision

from bench.cli import main

RUN = ["--arch", "resnet18", "--image-size", "64", "--epochs", "2", "--batch-size", "8",
       "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "synth", "--task", "siim", "--out", str(root),
         "--n", "48", "--size", "64", "--seed", "3", "--quiet"],
        capture_output=True, text=True, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_images"] == 48
    assert (root / "train-rle.csv").read_text().startswith("ImageId, EncodedPixels\n")
    return root


def _records(out):
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def test_run_writes_complete_record_and_is_repeatable(siim_root, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["run", "--task", "siim", "--init", "random", "--protocol", "finetune",
            "--data-root", str(siim_root), "--out", str(out), "--save-predictions", *RUN]  # fmt: skip
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (rec,) = _records(out)
    assert printed["run_id"] == rec["run_id"] and rec["status"] == "complete"
    for key in ("task", "init", "protocol", "fraction", "seed", "arch", "image_size", "hparams",
                "weights", "split", "metrics", "history", "timing", "env"):  # fmt: skip
        assert key in rec, key
    assert rec["data"]["synthetic"] is True
    assert rec["hparams"]["lr"] == 1e-4 and rec["weights"]["source"] == "none"
    counts = rec["split"]["counts"]
    assert counts["train"] + counts["val"] + counts["test"] == 48
    assert rec["metrics"]["test"]["n_images"] == counts["test"]
    assert 0.0 <= rec["metrics"]["test"]["dice"] <= 1.0
    assert len(rec["history"]) == 2

    # same settings, other folder: the same numbers (CPU runs are repeatable)
    out2 = tmp_path / "runs2"
    assert main([str(out2) if a == str(out) else a for a in args]) == 0
    (rec2,) = _records(out2)
    assert rec2["run_id"] == rec["run_id"]
    assert rec2["metrics"] == rec["metrics"]

    # bench evaluate on the saved predictions: original resolution == cache resolution here,
    # so it must reproduce the record's test Dice exactly
    pred = out / f"{rec['run_id']}.test-predictions.csv"
    assert main(["evaluate", "--task", "siim", "--data-root", str(siim_root),
                 "--predictions", str(pred), "--json", str(tmp_path / "ev.json")]) == 0  # fmt: skip
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["n_scored"] == counts["test"] and ev["missing_predictions"] == 0
    assert ev["metrics"]["dice"] == pytest.approx(rec["metrics"]["test"]["dice"], abs=1e-12)


def test_evaluate_ground_truth_scores_one_and_rejects_unknown_ids(siim_root, tmp_path, capsys):
    labels = pd.read_csv(siim_root / "train-rle.csv")
    labels.columns = [c.strip() for c in labels.columns]
    sub = tmp_path / "gt.csv"
    labels.to_csv(sub, index=False)
    assert main(["evaluate", "--task", "siim", "--data-root", str(siim_root),
                 "--predictions", str(sub), "--split", "all"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["dice"] == 1.0 and result["metrics"]["dice_pooled"] == 1.0
    assert result["n_scored"] == 48

    # a submission with an empty mask everywhere scores the fraction of negative images
    empty = labels.drop_duplicates("ImageId").assign(EncodedPixels="-1")
    empty.to_csv(sub, index=False)
    assert main(["evaluate", "--task", "siim", "--data-root", str(siim_root),
                 "--predictions", str(sub), "--split", "all"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    negatives = (labels.groupby("ImageId")["EncodedPixels"].apply(lambda s: (s.str.strip() == "-1").all())).mean()
    assert result["metrics"]["dice"] == pytest.approx(negatives)

    bad = pd.concat([empty, pd.DataFrame({"ImageId": ["1.2.3.not-there"], "EncodedPixels": ["-1"]})])
    bad.to_csv(sub, index=False)
    assert main(["evaluate", "--task", "siim", "--data-root", str(siim_root), "--predictions", str(sub)]) == 2
    assert "1.2.3.not-there" in capsys.readouterr().err

    empty.iloc[:1].assign(EncodedPixels="5 3 2").to_csv(sub, index=False)  # odd length
    assert main(["evaluate", "--task", "siim", "--data-root", str(siim_root), "--predictions", str(sub),
                 "--split", "all"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "line 2" in err and empty.iloc[0]["ImageId"] in err


def test_protocols_and_report(siim_root, tmp_path):
    out = tmp_path / "runs"
    for protocol in ("linear", "frozen"):
        for seed in (0, 1):
            assert main(["run", "--task", "siim", "--init", "random", "--protocol", protocol,
                         "--seed", str(seed), "--fraction", "0.5", "--epochs", "1",
                         "--data-root", str(siim_root), "--out", str(out),
                         *RUN[:2], *RUN[2:4], "--quiet"]) == 0  # fmt: skip
    recs = _records(out)
    assert sorted((r["protocol"], r["seed"]) for r in recs) == [
        ("frozen", 0), ("frozen", 1), ("linear", 0), ("linear", 1)]
    train_counts = {r["split"]["counts"]["train"] for r in recs}
    assert len(train_counts) == 1 and train_counts.pop() < recs[0]["split"]["counts"]["train_total"]
    md = tmp_path / "report" / "r.md"
    assert main(["report", "--runs", str(out), "--out", str(md)]) == 0
    text = md.read_text()
    assert "SYNTHETIC DATA" in text and "linear 50%" in text and "(n=2)" in text
    assert list(md.parent.glob("*.png"))
    # every run kept its example predictions; the report draws them
    assert len(list(out.glob("*.examples.npz"))) == 4
    assert (md.parent / "r_siim_examples.png").stat().st_size > 1000
    assert "## Example predictions" in text and "![siim examples](r_siim_examples.png)" in text
    assert "Best and worst init for frozen at 50% labels" in text


def test_bad_input_exit_codes(siim_root, tmp_path, capsys):
    base = ["run", "--task", "siim", "--protocol", "linear", "--out", str(tmp_path / "r"), *RUN]
    assert main([*base, "--init", "no-such-init", "--data-root", str(siim_root)]) == 2
    err = capsys.readouterr().err
    assert "no-such-init" in err and "imagenet" in err and "random" in err

    assert main([*base, "--init", "random", "--data-root", str(tmp_path / "missing")]) == 2
    assert "dicom-images-train" in capsys.readouterr().err

    # supervised (torchxrayvision) saw SIIM: refused before any download. (On the built-in
    # synthetic data `supervised` is the built-in synthetic pretraining instead, so the data
    # here is a copy that does not say it is synthetic.)
    real_looking = tmp_path / "real-looking"
    shutil.copytree(siim_root, real_looking)
    (real_looking / "SYNTHETIC_DATA.txt").unlink()
    assert main([*base, "--init", "supervised", "--data-root", str(real_looking)]) == 2
    assert "--allow-leakage" in capsys.readouterr().err

    # a resnet34 checkpoint with --arch resnet18 names the architecture
    ckpt = tmp_path / "r34.pth"
    m = torchvision.models.resnet34(weights=None)
    torch.save(m.state_dict(), ckpt)
    assert main([*base, "--init", str(ckpt), "--data-root", str(siim_root)]) == 2
    err = capsys.readouterr().err
    assert "resnet34" in err and "resnet18" in err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*.json"))


def test_leakage_allowed_is_flagged(siim_root, tmp_path):
    """A torchxrayvision-layout checkpoint (1 channel, fc 18) passed for `supervised`."""
    m = torchvision.models.resnet18(weights=None, num_classes=18)
    m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    ckpt = tmp_path / "xrv-like.pt"
    torch.save(m.state_dict(), ckpt)
    out = tmp_path / "runs"
    assert main(["run", "--task", "siim", "--init", "supervised", "--checkpoint", str(ckpt),
                 "--allow-leakage", "--protocol", "linear", "--data-root", str(siim_root),
                 "--out", str(out), *RUN[:4], "--epochs", "1", "--quiet"]) == 0  # fmt: skip
    (rec,) = _records(out)
    assert rec["weights"]["leakage"] is True and rec["weights"]["in_channels"] == 1
    assert rec["weights"]["tensors_loaded"] == rec["weights"]["tensors_expected"] > 0


def test_nan_loss_writes_status(siim_root, tmp_path, monkeypatch, capsys):
    import bench.models.segmentation as seg

    real = seg.make_loss_step

    def nan_loss_step(*a, **k):
        step = real(*a, **k)
        return lambda model, batch, device: step(model, batch, device) * float("nan")

    monkeypatch.setattr(seg, "make_loss_step", nan_loss_step)
    out = tmp_path / "runs"
    rc = main(["run", "--task", "siim", "--init", "random", "--protocol", "finetune",
               "--data-root", str(siim_root), "--out", str(out), *RUN])  # fmt: skip
    assert rc == 1
    (rec,) = _records(out)
    assert rec["status"] == "nan_loss" and "nan" in rec["error"]
    assert "nan_loss" in capsys.readouterr().err


def test_weights_cli(capsys):
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("random", "imagenet", "supervised", "moco", "convirt"):
        assert name in listing
    assert main(["weights", "show", "moco"]) == 0
    assert "r5w-00001.pth.tar" in capsys.readouterr().out


def test_mean_std_flags_reach_the_record(siim_root, tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["run", "--task", "siim", "--init", "random", "--protocol", "linear", "--epochs", "1",
            "--data-root", str(siim_root), "--out", str(out), *RUN[:4], "--quiet"]  # fmt: skip
    assert main([*base, "--mean", "0.5", "--std", "0.25"]) == 0
    (rec,) = _records(out)
    assert rec["weights"]["mean"] == [0.5] * 3 and rec["weights"]["std"] == [0.25] * 3
    assert rec["weights"]["normalization"].startswith("given")
    assert rec["config"]["mean"] == [0.5]
    # the normalization is part of the run's identity; without it the id is the old one
    assert main(base) == 0
    assert len(_records(out)) == 2
    assert main([*base, "--mean", "0.5"]) == 2
    assert "--mean and --std go together" in capsys.readouterr().err
    assert main([*base, "--mean", "0.5", "0.5", "--std", "0.2", "0.2"]) == 2
    assert "--mean has 2 values but the encoder takes 3" in capsys.readouterr().err
