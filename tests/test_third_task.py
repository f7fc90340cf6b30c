"""A task registered from the test suite (tests/lung_task.py) runs through bench unchanged.

`bench synth`, `bench run` (three protocols), `bench evaluate` and `bench report` drive
it with no change to `bench/`: everything they know about a task comes from its spec.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from tasks import get_task, register, task_names, unregister

RUN = ["--arch", "resnet18", "--image-size", "64", "--batch-size", "8", "--epochs", "2", "--quiet"]


@pytest.fixture
def lungs(cache):
    """The plugin registered for one test only (importing it registers it)."""
    global lung_task
    lung_task = importlib.import_module("lung_task")
    register(lung_task.SPEC, replace=True)
    yield lung_task.SPEC
    unregister(lung_task.NAME)


lung_task = None  # set by the fixture


@pytest.fixture
def lungs_root(lungs, tmp_path):
    root = tmp_path / "lungs"
    assert main(["synth", "--task", "lungs", "--out", str(root), "--n", "40", "--size", "96", "--quiet"]) == 0
    return root


def _record(out: Path, protocol: str) -> dict:
    (path,) = [p for p in out.glob(f"lungs-random-{protocol}-*.json")]
    return json.loads(path.read_text())


def test_registry_knows_the_plugin(lungs):
    assert "lungs" in task_names() and get_task("lungs") is lungs
    assert lungs.primary_metric("frozen") == "dice"
    with pytest.raises(ValueError, match="already registered"):
        register(lung_task.SPEC.__class__(**{**lung_task.SPEC.__dict__, "title": "other"}))


def test_run_evaluate_report(lungs, lungs_root, tmp_path, capsys):
    out = tmp_path / "runs"
    for protocol in ("linear", "frozen", "finetune"):
        extra = ["--save-predictions"] if protocol == "finetune" else []
        assert main(["run", "--task", "lungs", "--init", "random", "--protocol", protocol,
                     "--data-root", str(lungs_root), "--out", str(out), *RUN, *extra]) == 0  # fmt: skip
    recs = {p: _record(out, p) for p in ("linear", "frozen", "finetune")}
    for rec in recs.values():
        assert rec["status"] == "complete" and rec["task"] == "lungs" and rec["primary_metric"] == "dice"
        assert rec["data"]["synthetic"] is True
        assert rec["split"]["counts"]["test"] > 0
        assert 0 <= rec["metrics"]["test"]["dice"] <= 1
    # every image has lungs, so predicting nothing scores Dice 0; the trained decoders
    # find the big dark ellipses even in two epochs
    assert recs["frozen"]["metrics"]["test"]["dice"] > 0.2
    assert recs["finetune"]["metrics"]["test"]["dice"] > 0.2

    # the saved submission, scored by `bench evaluate` at original size, matches the record
    fin = recs["finetune"]
    sub = pd.read_csv(fin["predictions"])
    assert list(sub.columns) == ["id", "lungs"] and len(sub) == fin["split"]["counts"]["test"]
    capsys.readouterr()
    assert main(["evaluate", "--task", "lungs", "--data-root", str(lungs_root),
                 "--predictions", fin["predictions"]]) == 0  # fmt: skip
    scored = json.loads(capsys.readouterr().out)
    assert scored["task"] == "lungs" and scored["missing_predictions"] == 0
    # 96 px originals vs 64 px predictions upsampled: close to the record, not equal
    assert abs(scored["metrics"]["dice"] - fin["metrics"]["test"]["dice"]) < 0.05

    # ground truth as a submission scores 1; an empty submission scores the empty-mask Dice
    gt = lung_task.load_ground_truth(lungs_root)
    perfect = tmp_path / "perfect.csv"
    pd.DataFrame([(i, lungs.submission.format(lungs.target(e))) for i, e in gt.items()],
                 columns=["id", "lungs"]).to_csv(perfect, index=False)  # fmt: skip
    assert main(["evaluate", "--task", "lungs", "--data-root", str(lungs_root),
                 "--predictions", str(perfect), "--split", "all"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["metrics"]["dice"] == 1.0
    bad = tmp_path / "bad.csv"
    bad.write_text("id,lungs\ncxr000000,1 2 3\n")
    assert main(["evaluate", "--task", "lungs", "--data-root", str(lungs_root), "--predictions", str(bad)]) == 2
    assert "bad.csv, line 2" in capsys.readouterr().err

    md = tmp_path / "rep" / "report.md"
    assert main(["report", "--runs", str(out), "--out", str(md)]) == 0
    text = md.read_text()
    assert "lungs" in text and "SYNTHETIC" in text
    assert (md.parent / "report_lungs.csv").is_file()
    table = pd.read_csv(md.parent / "report_lungs.csv")
    assert set(table["protocol"]) == {"linear", "frozen", "finetune"}


def test_plugin_from_environment(tmp_path, cache):
    """$CXRBENCH_TASKS imports a task module in a fresh process: the CLI offers it."""
    env = {**os.environ, "CXRBENCH_TASKS": "lung_task",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    root = tmp_path / "lungs"
    proc = subprocess.run([sys.executable, "-m", "bench", "synth", "--task", "lungs", "--out", str(root),
                           "--n", "6", "--size", "32", "--quiet"], env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(list((root / "images").glob("*.png"))) == 6
    env["CXRBENCH_TASKS"] = "no_such_task_module"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--help"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "no_such_task_module" in proc.stderr
