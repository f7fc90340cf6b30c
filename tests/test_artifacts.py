"""Nothing finished is lost (issue 11, section 5): optional side files never fail a run,
files follow the user's umask, and a record's fields never become paths outside the
report folder."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.engine import artifacts
from bench.util import atomic_write, write_json_atomic
from tasks import get_task

RUN = ["run", "--task", "siim", "--init", "random", "--protocol", "linear", "--arch", "resnet18",
       "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim") / "data"
    get_task("siim").synth(root, n=24, seed=3, size=64, progress=False)
    return root


def _record(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_full_disk_on_optional_files_keeps_the_finished_run(siim_root, tmp_path, monkeypatch, capsys):
    real = artifacts.atomic_write

    def full_disk(path, write, **kw):  # the real atomic write, whose write hits ENOSPC
        def failing(f):
            f.write(b"partial" if kw.get("binary") else "partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(path, failing, **kw)

    monkeypatch.setattr(artifacts, "atomic_write", full_disk)
    out = tmp_path / "runs"
    assert main([*RUN, "--data-root", str(siim_root), "--out", str(out), "--save-predictions"]) == 0
    rec = _record(out)
    assert rec["status"] == "complete"
    assert 0.0 <= rec["metrics"]["test"]["dice"] <= 1.0 and rec["metrics"]["val"]
    examples = out / f"{rec['run_id']}.examples.npz"
    predictions = out / f"{rec['run_id']}.test-predictions.csv"
    assert rec["examples"] is None and rec["predictions"] is None
    assert sorted(rec["artifact_errors"], key=lambda e: e["artifact"]) == [
        {"artifact": "examples", "path": str(examples), "error": "OSError: [Errno 28] No space left on device"},
        {"artifact": "predictions", "path": str(predictions),
         "error": "OSError: [Errno 28] No space left on device"},
    ]  # fmt: skip
    # no half-written file and no temporary file left behind
    assert sorted(p.name for p in out.iterdir()) == [f"{rec['run_id']}.json"]
    err = capsys.readouterr().err
    assert f"could not write the examples file {examples}" in err and "No space left" in err


def test_write_optional_notes_any_failure():
    errors: list[dict] = []
    assert artifacts.write_optional("examples", Path("/x/e.npz"), lambda: 1 / 0, errors) is None
    assert errors == [{"artifact": "examples", "path": "/x/e.npz", "error": "ZeroDivisionError: division by zero"}]
    assert artifacts.write_optional("examples", Path("/x/e.npz"), lambda: None, errors) == "/x/e.npz"
    assert len(errors) == 1


def test_record_that_cannot_be_written_prints_its_metrics(siim_root, tmp_path, monkeypatch, capsys):
    from bench.engine import runner

    real = runner.write_json_atomic
    calls = []

    def second_write_fails(path, obj):
        calls.append(path)
        if len(calls) == 2:  # the final record (the first is the `running` one)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, obj)

    monkeypatch.setattr(runner, "write_json_atomic", second_write_fails)
    out = tmp_path / "runs"
    assert main([*RUN, "--data-root", str(siim_root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "ended complete, but its record could not be written to" in err
    assert "No space left on device" in err and '"dice":' in err


def test_files_follow_the_umask(siim_root, tmp_path):
    from bench.experiments.baseline import write_baseline

    out = tmp_path / "runs"
    old = os.umask(0o022)
    try:
        assert main([*RUN, "--data-root", str(siim_root), "--out", str(out), "--save-predictions"]) == 0
        rec = _record(out)
        baseline = tmp_path / "baseline.json"
        write_baseline(out, baseline)
        report = tmp_path / "report" / "r.md"
        assert main(["report", "--runs", str(out), "--out", str(report), "--no-figures"]) == 0
    finally:
        os.umask(old)
    files = [out / f"{rec['run_id']}.json", out / f"{rec['run_id']}.examples.npz",
             out / f"{rec['run_id']}.test-predictions.csv", baseline, report]  # fmt: skip
    assert {f.name: _mode(f) for f in files} == {f.name: 0o644 for f in files}

    old = os.umask(0o077)
    try:
        private = write_json_atomic(tmp_path / "private.json", {"a": 1})
        binary = atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"), binary=True)
    finally:
        os.umask(old)
    assert _mode(private) == _mode(binary) == 0o600


def test_prepared_cache_follows_the_umask(siim_root, cache):
    old = os.umask(0o022)
    try:
        prepared = get_task("siim").prepare(siim_root, 64, progress=False)
    finally:
        os.umask(old)
    assert _mode(prepared.cache_dir) == 0o755
    assert _mode(prepared.cache_dir / "images.npy") == 0o644


# ------------------------------------------------------------------ report paths


def _rec(run_id: str, task: str, init: str, seed: int, dice: float) -> dict:
    return {
        "run_id": run_id, "task": task, "init": init, "protocol": "linear", "fraction": 1.0,
        "seed": seed, "arch": "resnet18", "image_size": 64, "status": "complete",
        "primary_metric": "dice", "metrics": {"val": {"dice": dice}, "test": {"dice": dice}},
        "hparams": {"lr": 0.001}, "data": {"synthetic": False},
    }  # fmt: skip


def _examples() -> dict:
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[0, 8:16, 8:16] = 1
    return {"kind": np.array("segmentation"), "ids": np.array(["a", "b"]),
            "images": np.full((2, 32, 32), 128, np.uint8), "targets": masks, "predictions": masks}  # fmt: skip


@pytest.mark.parametrize("figures", [True, False])
def test_hostile_task_init_and_run_id_stay_inside_the_report_folder(tmp_path, figures):
    base = tmp_path / "a" / "b"
    runs, report = base / "runs", base / "report"
    runs.mkdir(parents=True)
    records = [
        _rec("r1", "../../../evil", "../../x", 0, 0.5),
        _rec("r2", "../../../evil", "/tmp/abs-init", 0, 0.4),
        _rec("../../r3", "../../../evil", "../../y", 1, 0.3),
        _rec("r4", "/abs/task", "../../z", 0, 0.6),
    ]
    for i, rec in enumerate(records):
        (runs / f"rec{i}.json").write_text(json.dumps(rec))
        artifacts.save_examples(runs / f"{rec['run_id'].replace('/', '_')}.examples.npz", _examples())
    md = report / "r.md"
    assert main(["report", "--runs", str(runs), "--out", str(md)] + ([] if figures else ["--no-figures"])) == 0
    outside = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                     if p.is_file() and runs not in p.parents and report not in p.parents)  # fmt: skip
    assert outside == []
    assert all(p.parent == report for p in report.rglob("*")), sorted(report.rglob("*"))
    names = sorted(p.name for p in report.iterdir())
    assert "r__abs_task.csv" in names and any(n.startswith("r_.._.._..") and n.endswith(".csv") for n in names)
    if figures:
        assert "r_.._.._.._evil_examples.png" in names and "r__abs_task_examples.png" in names
    assert not Path("/abs").exists() or not list(Path("/abs").glob("*examples*"))
