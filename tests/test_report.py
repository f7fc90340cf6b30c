"""Markdown report from hand-made run records (design §6 aggregates, §8.7, §8.8)."""

import json
import math
import re

import pytest

from bench.report import aggregate, load_records, make_table, write_report

T975 = {2: 12.706205, 3: 4.302653}  # scipy.stats.t.ppf(0.975, n - 1) for n = 2, 3


def _record(task, init, protocol, fraction, seed, test, status="complete", **extra):
    primary = extra.pop("primary_metric", "dice")
    rec = {
        "run_id": f"{task}-{init}-{protocol}-f{fraction}-s{seed}-{status}",
        "task": task,
        "init": init,
        "protocol": protocol,
        "fraction": fraction,
        "seed": seed,
        "arch": "resnet18",
        "image_size": 64,
        "status": status,
        "metrics": {"val": {primary: test}, "test": {primary: test}},
        "primary_metric": primary,
        "hparams": {"lr": 0.001, "epochs": 5, "batch_size": 8},
        "best_epoch": 3,
        "timing": {"wall_s": 12.3},
        "data": {"synthetic": False, "root": "/data/siim", "n_images": 200},
        "weights": {"source": "none", "sha256": None, "tensors_loaded": 0,
                    "tensors_expected": 0, "partial": False, "leakage": False},
        "env": {"python": "3.11.7", "torch": "2.15.0", "device": "cpu", "git_commit": "abc"},
    }  # fmt: skip
    for key, value in extra.items():
        if isinstance(value, dict):
            rec[key] = {**rec.get(key, {}), **value}
        else:
            rec[key] = value
    if test is not None and primary == "dice":
        rec["metrics"]["test"].update(dice_pooled=test - 0.1, dice_pos=test - 0.2, n_images=30)
    return rec


def _write(runs, records):
    for i, rec in enumerate(records):
        sub = runs / rec["task"] / f"batch{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{rec['run_id']}.json").write_text(json.dumps(rec))


# random/linear 10%: 0.5, 0.6, 0.7 -> 0.600 ± 0.248 (n=3)
# imagenet/linear 10%: 0.6, 0.8 -> 0.700 ± 12.706205*0.141421/sqrt(2) = 1.271 (n=2)
# random/finetune 100%: 0.7 (n=1); imagenet/finetune 100%: 0.8, 0.9, 1.0 -> 0.900 ± 0.248
# supervised/linear 10%: 0.95 (leakage, n=1): highest mean but never bold
SEEDS = {
    ("random", "linear", 0.1): [0.5, 0.6, 0.7],
    ("imagenet", "linear", 0.1): [0.6, 0.8],
    ("random", "finetune", 1.0): [0.7],
    ("imagenet", "finetune", 1.0): [0.8, 0.9, 1.0],
}


def _records(synthetic=False):
    recs = [
        _record("siim", init, proto, frac, seed, v, data={"synthetic": synthetic})
        for (init, proto, frac), values in SEEDS.items()
        for seed, v in enumerate(values)
    ]
    recs.append(
        _record("siim", "supervised", "linear", 0.1, 0, 0.95,
                weights={"source": "txrv", "leakage": True})
    )  # fmt: skip
    recs.append(_record("siim", "random", "linear", 0.1, 7, 0.01, status="failed", error="OOM"))
    recs.append(_record("siim", "imagenet", "linear", 0.1, 9, None, status="nan_loss"))
    return recs


def _half(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return T975[n] * std / math.sqrt(n)


def _table_rows(md, task):
    section = md.split(f"## {task}\n", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split(" | ")]
        if cells[0] in {"random", "imagenet", "supervised", "moco"} and cells[0] not in rows:
            rows[cells[0]] = dict(zip(header, cells))
        else:
            break
    return header, rows


def test_hand_numbers_are_the_cells(tmp_path):
    assert f"{_half([0.5, 0.6, 0.7]):.3f}" == "0.248"
    assert f"{_half([0.6, 0.8]):.3f}" == "1.271"
    _write(tmp_path / "runs", _records())
    out = write_report(tmp_path / "runs", tmp_path / "rep" / "report.md")
    md = out.read_text()
    header, rows = _table_rows(md, "siim")
    assert header == ["init", "linear 10%", "finetune 100%"]
    # failed (0.01) and nan_loss runs are not in the means
    assert rows["random"]["linear 10%"] == "0.600 ± 0.248 (n=3)"
    assert rows["imagenet"]["linear 10%"] == "**0.700 ± 1.271 (n=2)**"
    assert rows["random"]["finetune 100%"] == "0.700 (n=1)"
    assert rows["imagenet"]["finetune 100%"] == "**0.900 ± 0.248 (n=3)**"
    assert rows["supervised"]["linear 10%"] == "0.950 (n=1) †"  # leakage: dagger, not bold
    assert rows["supervised"]["finetune 100%"] == "–"
    assert "† the initialization was pretrained on data that includes" in md
    assert "Kaggle SIIM-ACR metric" in md
    # secondary metrics: dice_pooled = dice - 0.1
    assert "| random | linear | 10% | 0.500 ± 0.248 (n=3) | 0.400 ± 0.248 (n=3) |" in md


def test_bold_is_best_in_column(tmp_path):
    _write(tmp_path, _records())
    md = write_report(tmp_path, tmp_path / "r.md").read_text()
    header, rows = _table_rows(md, "siim")
    for col in header[1:]:
        cells = {i: r[col] for i, r in rows.items() if r[col] != "–" and "†" not in r[col]}
        means = {i: float(re.search(r"\d+\.\d+", c).group()) for i, c in cells.items()}
        bold = [i for i, c in cells.items() if c.startswith("**")]
        assert bold == [max(means, key=means.get)]


def test_png_written_and_linked(tmp_path):
    _write(tmp_path / "runs", _records())
    out = write_report(tmp_path / "runs", tmp_path / "out" / "bench.md")
    png = tmp_path / "out" / "bench_siim_label_efficiency.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "](bench_siim_label_efficiency.png)" in out.read_text()


def test_synthetic_warning_only_when_flagged(tmp_path):
    real, synth = tmp_path / "real", tmp_path / "synth"
    _write(real, _records(synthetic=False))
    _write(synth, _records(synthetic=True))
    md_real = write_report(real, tmp_path / "real.md").read_text()
    md_synth = write_report(synth, tmp_path / "synth.md").read_text()
    assert "SYNTHETIC" not in md_real
    head = md_synth.split("## siim", 1)[0]
    assert "SYNTHETIC DATA — these numbers are not the benchmark" in head
    captions = [ln for ln in md_synth.splitlines() if ln.startswith("**siim:")]
    assert len(captions) == 2 and all("SYNTHETIC DATA" in c for c in captions)


def test_failed_runs_listed_not_averaged(tmp_path):
    _write(tmp_path, _records())
    df = load_records(tmp_path)
    assert len(df) == 10 and set(df["status"]) == {"complete"}
    assert len(load_records(tmp_path, include_incomplete=True)) == 12
    md = write_report(tmp_path, tmp_path / "r.md").read_text()
    failed = md.split("## Runs that did not complete", 1)[1].split("##", 1)[0]
    assert "2 run(s) are not in any mean (failed: 1, nan_loss: 1)" in failed
    assert "siim-random-linear-f0.1-s7-failed" in failed and "OOM" in failed
    assert "siim-imagenet-linear-f0.1-s9-nan_loss" in failed
    appendix = md.split("## Appendix", 1)[1]
    assert "s7-failed" not in appendix and "siim-random-linear-f0.1-s0-complete" in appendix


def test_corrupt_and_foreign_json_skipped_with_warning(tmp_path):
    _write(tmp_path, _records())
    (tmp_path / "broken.json").write_text('{"run_id": "x", ')
    (tmp_path / "sweep.json").write_text('{"grid": [1, 2]}')
    with pytest.warns(UserWarning) as caught:
        md = write_report(tmp_path, tmp_path / "r.md").read_text()
    messages = [str(w.message) for w in caught]
    assert any("broken.json" in m and "not valid JSON" in m for m in messages)
    assert any("sweep.json" in m and "no run_id" in m for m in messages)
    assert "## Skipped files" in md and "broken.json" in md
    _, rows = _table_rows(md, "siim")
    assert rows["random"]["linear 10%"] == "0.600 ± 0.248 (n=3)"


def test_aggregate_and_make_table(tmp_path):
    _write(tmp_path, _records())
    with pytest.warns(UserWarning, match="duplicate run_id"):
        (tmp_path / "copy.json").write_text(json.dumps(_records()[0]))
        df = load_records(tmp_path)
    agg = aggregate(df)
    row = agg[(agg["init"] == "random") & (agg["protocol"] == "linear")].iloc[0]
    assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1)
    table = make_table(agg, "siim")
    assert table.startswith("**siim: test dice")
    assert "| random | 0.600 ± 0.248 (n=3) | 0.700 (n=1) |" in table
    assert make_table(agg, "rsna") == ""


def test_mixed_primary_metrics_and_empty_dir(tmp_path):
    recs = [
        _record("rsna", "random", "linear", 0.01, 0, 0.3),
        _record("rsna", "random", "finetune", 0.01, 0, 0.2, primary_metric="map"),
        _record("rsna", "imagenet", "finetune", 0.01, 0, 0.25, primary_metric="map"),
        _record("rsna", "moco", "finetune", 0.01, 0, 0.1, primary_metric="map",
                weights={"partial": True}, status="complete"),
    ]  # fmt: skip
    _write(tmp_path / "runs", recs)
    md = write_report(tmp_path / "runs", tmp_path / "r.md").read_text()
    header, rows = _table_rows(md, "rsna")
    assert header == ["init", "linear 1% (dice)", "finetune 1% (map)"]
    assert rows["imagenet"]["finetune 1% (map)"] == "**0.250 (n=1)**"
    assert rows["moco"]["finetune 1% (map)"] == "0.100 (n=1) ‡" and "‡ the checkpoint" in md
    assert (tmp_path / "r_rsna_label_efficiency.png").stat().st_size > 1000
    (tmp_path / "empty").mkdir()
    assert (
        "No run records found." in write_report(tmp_path / "empty", tmp_path / "e.md").read_text()
    )
