"""End to end through the real CLI on synthetic RSNA data in the Kaggle stage 2 layout."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from bench.cli import main

RUN = ["--arch", "resnet18", "--image-size", "64", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "synth", "--task", "rsna", "--out", str(root),
         "--n", "48", "--size", "64", "--seed", "5", "--quiet"],
        capture_output=True, text=True, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_images"] == 48
    assert (
        (root / "stage_2_train_labels.csv")
        .read_text()
        .startswith("patientId,x,y,width,height,Target\n")
    )
    assert len(list((root / "stage_2_train_images").glob("*.dcm"))) == 48
    return root


@pytest.fixture(scope="module")
def labels(rsna_root):
    return pd.read_csv(rsna_root / "stage_2_train_labels.csv")


def _records(out):
    return {json.loads(p.read_text())["protocol"]: json.loads(p.read_text())
            for p in sorted(out.glob("*.json"))}  # fmt: skip


def _ground_truth_submission(labels: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for pid, g in labels.groupby("patientId", sort=False):
        boxes = g[g["Target"] == 1]
        rows.append((pid, " ".join(f"1.0 {r.x:g} {r.y:g} {r.width:g} {r.height:g}"
                                   for r in boxes.itertuples())))  # fmt: skip
    return pd.DataFrame(rows, columns=["patientId", "PredictionString"])


def test_synth_has_negatives_and_two_box_images(labels):
    per_patient = labels.groupby("patientId")["Target"].agg(["max", "count"])
    negative_share = (per_patient["max"] == 0).mean()
    assert 0.55 <= negative_share <= 0.75
    assert (per_patient["count"] == 2).any()
    assert labels.loc[labels["Target"] == 0, ["x", "y", "width", "height"]].isna().all().all()


@pytest.fixture(scope="module")
def runs(rsna_root, tmp_path_factory):
    """One run per protocol (frozen with Faster R-CNN, so both detectors are driven)."""
    out = tmp_path_factory.mktemp("runs")
    for protocol, extra in (("linear", []), ("frozen", ["--detector", "fasterrcnn"]),
                            ("finetune", [])):  # fmt: skip
        args = ["run", "--task", "rsna", "--init", "random", "--protocol", protocol,
                "--epochs", "1", "--data-root", str(rsna_root), "--out", str(out),
                "--save-predictions", *extra, *RUN]  # fmt: skip
        assert main(args) == 0, protocol
    return out


def test_runs_record_the_right_metrics(runs):
    recs = _records(runs)
    assert set(recs) == {"linear", "frozen", "finetune"}
    assert all(r["status"] == "complete" and r["data"]["synthetic"] for r in recs.values())
    # linear = segmentation of the box masks, detection protocols = mAP
    assert (
        recs["linear"]["primary_metric"] == "dice" and "dice" in recs["linear"]["metrics"]["test"]
    )
    for protocol in ("frozen", "finetune"):
        rec = recs[protocol]
        assert rec["primary_metric"] == "map"
        test = rec["metrics"]["test"]
        for key in ("map", "map50", "map75", "rsna_score"):
            assert 0.0 <= test[key] <= 1.0, key
    assert recs["frozen"]["hparams"]["detector"] == "fasterrcnn"
    # at 64 px the boxes are under the smallest anchor: recorded (and warned about)
    for protocol in ("frozen", "finetune"):
        cov = recs[protocol]["anchor_coverage"]
        assert cov["share"] == 0.0 and cov["boxes"] > 0
    assert "anchor_coverage" not in recs["linear"]
    assert recs["finetune"]["hparams"]["detector"] == "retinanet"
    counts = recs["frozen"]["split"]["counts"]
    assert counts["train"] + counts["val"] + counts["test"] == 48
    # the split is by patient and the same for every protocol
    assert recs["linear"]["split"]["counts"] == counts


def test_saved_predictions_reproduce_the_record(rsna_root, runs, tmp_path):
    """At 64 px synthetic = 64 px cache, bench evaluate of the saved Kaggle CSV gives the
    record's test mAP (both go through pycocotools on the same boxes)."""
    rec = _records(runs)["finetune"]
    pred = runs / f"{rec['run_id']}.test-predictions.csv"
    sub = pd.read_csv(pred, keep_default_na=False)
    assert list(sub.columns) == ["patientId", "PredictionString"]
    assert len(sub) == rec["split"]["counts"]["test"]
    assert main(["evaluate", "--task", "rsna", "--data-root", str(rsna_root),
                 "--predictions", str(pred), "--json", str(tmp_path / "ev.json")]) == 0  # fmt: skip
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["n_scored"] == rec["split"]["counts"]["test"] and ev["missing_predictions"] == 0
    assert ev["metrics"]["map"] == pytest.approx(rec["metrics"]["test"]["map"], abs=1e-3)


def test_evaluate_ground_truth_empty_and_bad_submissions(rsna_root, labels, tmp_path, capsys):
    base = ["evaluate", "--task", "rsna", "--data-root", str(rsna_root), "--split", "all"]
    gt = _ground_truth_submission(labels)
    sub = tmp_path / "sub.csv"
    gt.to_csv(sub, index=False)
    assert main([*base, "--predictions", str(sub)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["map"] == 1.0 and result["metrics"]["rsna_score"] == 1.0
    assert result["n_scored"] == 48

    # empty prediction strings are "no boxes": nothing found gives 0.0, not an error
    gt.assign(PredictionString="").to_csv(sub, index=False)
    assert main([*base, "--predictions", str(sub)]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["map"] == 0.0

    # a false positive on a negative image, ranked above the true boxes, lowers map below 1
    negative = labels.groupby("patientId")["Target"].max().loc[lambda s: s == 0].index[0]
    fp = gt.assign(PredictionString=gt["PredictionString"].str.replace("1.0 ", "0.5 "))
    fp.loc[fp["patientId"] == negative, "PredictionString"] = "0.99 5 5 20 20"
    fp.to_csv(sub, index=False)
    assert main([*base, "--predictions", str(sub)]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["map"] < 1.0

    cases = {
        "unknown id": (
            pd.concat(
                [gt, pd.DataFrame({"patientId": ["no-such-patient"], "PredictionString": [""]})]
            ),  # fmt: skip
            "no-such-patient",
        ),
        "confidence": (gt.assign(PredictionString="1.5 1 1 10 10"), "confidence outside [0, 1]"),
        "groups": (gt.assign(PredictionString="0.5 1 1 10"), "groups of 5"),
        "size": (gt.assign(PredictionString="0.5 1 1 -10 10"), "non-positive width"),
        "duplicate": (pd.concat([gt, gt.iloc[:1]]), "listed twice"),
    }
    for name, (frame, needle) in cases.items():
        frame.to_csv(sub, index=False)
        assert main([*base, "--predictions", str(sub)]) == 2, name
        err = capsys.readouterr().err
        assert needle in err and str(sub) in err, (name, err)


def test_bad_labels_name_the_row(rsna_root, tmp_path, capsys):
    """A copy of the dataset with a Target=1 row without a box: exit 2, the row named."""
    bad = tmp_path / "rsna"
    bad.mkdir()
    (bad / "stage_2_train_images").symlink_to(rsna_root / "stage_2_train_images")
    frame = pd.read_csv(rsna_root / "stage_2_train_labels.csv")
    row = int(frame.index[frame["Target"] == 1][0])
    frame.loc[row, "width"] = float("nan")
    frame.to_csv(bad / "stage_2_train_labels.csv", index=False)
    rc = main(["run", "--task", "rsna", "--init", "random", "--protocol", "frozen",
               "--epochs", "1", "--data-root", str(bad), "--out", str(tmp_path / "r"), *RUN])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "stage_2_train_labels.csv" in err and frame.loc[row, "patientId"] in err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*.json"))


def test_report_with_both_tasks(runs, tmp_path):
    # add a SIIM run so one report holds both tasks
    from tasks.siim import synth

    siim = tmp_path / "siim"
    synth(siim, n=24, seed=1, size=64, progress=False)
    assert main(["run", "--task", "siim", "--init", "random", "--protocol", "frozen", "--epochs", "1",
                 "--data-root", str(siim), "--out", str(runs), *RUN]) == 0  # fmt: skip
    md = tmp_path / "rep" / "report.md"
    assert main(["report", "--runs", str(runs), "--out", str(md)]) == 0
    text = md.read_text()
    assert "## siim" in text and "## rsna" in text
    # RSNA: Dice for the linear protocol (box masks), mAP for the detection protocols
    assert "| init | linear (dice) | frozen (map) | finetune (map) |" in text
    for task in ("siim", "rsna"):
        assert (md.parent / f"report_{task}.csv").exists()
        assert (md.parent / f"report_{task}_examples.png").stat().st_size > 1000
        assert f"![{task} examples](report_{task}_examples.png)" in text
    cells = pd.read_csv(md.parent / "report_rsna.csv").set_index("protocol")["metric"].to_dict()
    assert cells == {"linear": "dice", "frozen": "map", "finetune": "map"}
