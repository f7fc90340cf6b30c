"""`bench compare`: baseline file, regression verdicts, exit codes, job summary."""

import json
import math

import pytest

from bench.cli import main
from bench.experiments.compare import (
    BASELINE_FORMAT,
    build_baseline,
    compare,
    format_summary,
    load_baseline,
)

T975_N3 = 4.302653  # scipy.stats.t.ppf(0.975, 2)
OFFSETS = (-0.01, 0.0, 0.01)  # per-seed spread: CI half-width = T975_N3 * 0.01 / sqrt(3)
HALF = T975_N3 * 0.01 / math.sqrt(3)  # 0.02484
# (task, init, protocol, fraction, primary metric) -> mean over the three seeds
CELLS = {
    ("siim", "random", "linear", 0.1, "dice"): 0.40,
    ("siim", "imagenet", "linear", 0.1, "dice"): 0.60,
    ("siim", "imagenet", "finetune", 1.0, "dice"): 0.80,
    ("rsna", "imagenet", "finetune", 1.0, "map"): 0.30,
}
BROKEN = "siim imagenet linear 10% dice"


def _record(task, init, protocol, fraction, metric, seed, value, status="complete"):
    return {
        "run_id": f"{task}-{init}-{protocol}-f{fraction:g}-s{seed}",
        "task": task,
        "init": init,
        "protocol": protocol,
        "fraction": fraction,
        "seed": seed,
        "arch": "resnet18",
        "image_size": 64,
        "status": status,
        "primary_metric": metric,
        "metrics": {"val": {metric: value}, "test": {metric: value}},
        "hparams": {"lr": 0.001, "epochs": 3, "batch_size": 4},
        "split": {"name": "cxrbench-hash-v1 70/15/15 by patient"},
        "data": {"synthetic": True},
        "weights": {"partial": False, "leakage": False},
        "env": {"torch": "2.15.0", "device": "cpu", "git_commit": "abc123"},
        "sweep": {"name": "ci"},
    }


def _runs(path, shift=None, drop=(), extra=(), failed=()):
    """Write 3 seeds per cell of CELLS; ``shift`` {cell label: delta} moves a cell's
    values, ``drop`` leaves cells out, ``failed`` turns seed 2 of a cell into a failed
    run, ``extra`` adds cells (key, mean)."""
    shift = shift or {}
    path.mkdir(parents=True, exist_ok=True)
    for key, mean in [*CELLS.items(), *extra]:
        label = f"{key[0]} {key[1]} {key[2]} {key[3] * 100:g}% {key[4]}"
        if label in drop:
            continue
        for seed, off in enumerate(OFFSETS):
            value = mean + off + shift.get(label, 0.0)
            status = "failed" if label in failed and seed == 2 else "complete"
            rec = _record(*key, seed, None if status == "failed" else value, status)
            (path / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return path


@pytest.fixture
def baseline(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    runs = _runs(tmp_path / "base_runs")
    path = tmp_path / "baselines" / "ci.json"
    assert main(["compare", str(runs), "--baseline", str(path), "--update-baseline"]) == 0
    assert "baseline updated" in capsys.readouterr().out
    return path


def _compare(tmp_path, baseline, capsys, *args, **runs_kw):
    runs = _runs(tmp_path / "new_runs", **runs_kw)
    summary = tmp_path / "summary.md"
    code = main(["compare", str(runs), "--baseline", str(baseline), "--summary", str(summary),
                 *args])  # fmt: skip
    out = capsys.readouterr().out
    assert summary.read_text() == out
    return code, out


def _row(summary, label):
    lines = [ln for ln in summary.splitlines() if ln.startswith(f"| {label} |")]
    assert len(lines) == 1, summary
    return [c.strip() for c in lines[0].strip("|").split(" | ")]


def test_update_baseline_writes_the_cells(baseline):
    data = json.loads(baseline.read_text())
    assert data["format"] == BASELINE_FORMAT and data["version"] == 1
    assert data["git_commit"] == "abc123" and data["config"] == "ci" and data["n_runs"] == 12
    assert data["created"].endswith("+00:00")
    assert data["settings"]["arch"] == ["resnet18"] and data["settings"]["hparams.epochs"] == [3]
    cell = data["cells"]["siim/imagenet/linear/0.1/dice"]
    assert {k: cell[k] for k in ("task", "init", "protocol", "fraction", "metric")} == {
        "task": "siim", "init": "imagenet", "protocol": "linear", "fraction": 0.1,
        "metric": "dice"}  # fmt: skip
    assert cell["mean"] == pytest.approx(0.60) and cell["std"] == pytest.approx(0.01)
    assert cell["ci_half"] == pytest.approx(HALF, rel=1e-6)
    assert cell["ci_low"] == pytest.approx(0.60 - HALF) and cell["ci_high"] == pytest.approx(
        0.60 + HALF
    )
    assert cell["n"] == 3 and cell["seeds"] == [0, 1, 2]
    assert data["cells"]["rsna/imagenet/finetune/1/map"]["metric"] == "map"
    assert len(data["cells"]) == 4
    assert not [p for p in baseline.parent.iterdir() if p.name != "ci.json"]  # no temp files
    assert load_baseline(baseline)["cells"] == data["cells"]


def test_same_runs_compare_clean(tmp_path, baseline, capsys):
    code, out = _compare(tmp_path, baseline, capsys)
    assert code == 0
    assert out.startswith("## cxrbench compare: ✅ passed — 4 ok")
    row = _row(out, BROKEN)
    assert row[:6] == ["siim imagenet linear 10% dice", "0.6000 ± 0.0248 (n=3)",
                       "0.6000 ± 0.0248 (n=3)", "+0.0000", "", "identical"]  # fmt: skip
    assert row[6] == "" and row[-1] == "✅ ok"


def test_broken_init_is_a_regression(tmp_path, baseline, capsys):
    # a deliberately broken init: its numbers fall far below the baseline
    code, out = _compare(tmp_path, baseline, capsys, shift={BROKEN: -0.3})
    assert code == 1
    assert out.startswith("## cxrbench compare: ❌ FAILED — 1 regression(s), 3 ok")
    assert f"- ❌ `{BROKEN}`: regression (Δ -0.3000, permutation p=0.05)" in out
    assert _row(out, BROKEN)[-1] == "❌ regression"
    assert _row(out, "siim random linear 10% dice")[-1] == "✅ ok"


def test_drop_within_ci_passes_and_improvement_is_marked(tmp_path, baseline, capsys):
    code, out = _compare(tmp_path, baseline, capsys, shift={BROKEN: -0.02, "rsna imagenet finetune 100% map": 0.05})  # fmt: skip
    assert code == 0
    row = _row(out, BROKEN)
    assert row[3] == "-0.0200" and row[5] == "permutation" and float(row[6]) > 0.05
    assert row[-1] == "✅ ok"
    assert _row(out, "rsna imagenet finetune 100% map")[-1] == "✅ improved"


def test_tolerance_replaces_the_ci(tmp_path, baseline, capsys):
    code, out = _compare(tmp_path, baseline, capsys, "--tolerance", "0.01", shift={BROKEN: -0.02})
    row = _row(out, BROKEN)
    assert code == 1 and row[3:5] == ["-0.0200", "0.0100"] and row[-1] == "❌ regression"
    assert float(row[6]) > 0.05  # the tolerance, not the test, caught it
    assert "by more than the tolerance 0.01" in out
    code, out = _compare(tmp_path, baseline, capsys, "--tolerance", "0.5", shift={BROKEN: -0.3})
    assert code == 1 and _row(out, BROKEN)[-1] == "❌ regression"  # the test still fails it
    assert main(["compare", str(tmp_path / "new_runs"), "--baseline", str(baseline),
                 "--tolerance", "-1"]) == 2  # fmt: skip


def test_missing_cell_fails_new_cell_is_info(tmp_path, baseline, capsys):
    new = (("siim", "moco", "linear", 0.1, "dice"), 0.5)
    code, out = _compare(tmp_path, baseline, capsys, drop={BROKEN}, extra=[new])
    assert code == 1
    assert "1 missing" in out and f"- ⚠ `{BROKEN}`: missing" in out
    row = _row(out, BROKEN)
    assert row[2:5] == ["–", "", ""] and row[-1] == "⚠ missing"
    assert _row(out, "siim moco linear 10% dice")[-1] == "🆕 new"
    code, out = _compare(tmp_path, baseline, capsys, extra=[new])
    assert code == 0 and "1 new" in out


def test_failed_seed_makes_the_cell_incomplete(tmp_path, baseline, capsys):
    code, out = _compare(tmp_path, baseline, capsys, failed={BROKEN})
    assert code == 1 and _row(out, BROKEN)[-1] == "⚠ incomplete"
    assert "- `siim-imagenet-linear-f0.1-s2`: failed" in out


def test_github_step_summary_appended(tmp_path, baseline, capsys, monkeypatch):
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    runs = _runs(tmp_path / "new_runs", shift={BROKEN: -0.3})
    assert main(["compare", str(runs), "--baseline", str(baseline)]) == 1
    text = step.read_text()
    assert text.startswith("earlier step\n## cxrbench compare: ❌ FAILED")
    assert BROKEN in text and text.rstrip("\n") == (
        "earlier step\n" + capsys.readouterr().out
    ).rstrip("\n")


def test_settings_difference_is_a_note(tmp_path, baseline):
    runs = _runs(tmp_path / "new_runs")
    for path in runs.glob("*.json"):
        rec = json.loads(path.read_text())
        rec["hparams"]["epochs"] = 10
        path.write_text(json.dumps(rec))
    result = compare(runs, baseline)
    cells = ", ".join(f"`{c}`" for c in sorted(r["cell"] for r in result["rows"]))
    assert not result["failed"] and result["notes"][0] == (
        "`hparams.epochs` differs: baseline [3], runs [10]"
    )
    # the baseline cells keep their settings: each cell says which of them differ
    assert len(result["notes"]) == 2 and result["notes"][1].startswith(
        "epochs: baseline 3, runs 10 in 4 cell(s): "
    )
    assert sorted(result["notes"][1].split(": ", 3)[-1].split(", ")) == cells.split(", ")


def test_bad_baseline_and_runs_are_input_errors(tmp_path, baseline, capsys):
    runs = _runs(tmp_path / "new_runs")
    missing = tmp_path / "nope.json"
    assert main(["compare", str(runs), "--baseline", str(missing)]) == 2
    assert "--update-baseline" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cells": {}}))
    assert main(["compare", str(runs), "--baseline", str(bad)]) == 2
    assert "not a cxrbench baseline" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "no_runs"), "--baseline", str(baseline)]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty baseline"):
        build_baseline(tmp_path / "empty")
    # an empty runs folder against a baseline: every cell missing
    assert main(["compare", str(tmp_path / "empty"), "--baseline", str(baseline)]) == 1


def test_update_over_an_old_baseline_shows_the_change(tmp_path, baseline, capsys):
    runs = _runs(tmp_path / "new_runs", shift={BROKEN: -0.3})
    assert main(["compare", str(runs), "--baseline", str(baseline), "--update-baseline",
                 "--config-name", "configs/ci.yaml"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "baseline updated" in out and "against the previous baseline" in out
    assert _row(out, BROKEN)[-1] == "❌ regression"
    data = load_baseline(baseline)
    assert data["config"] == "configs/ci.yaml"
    assert data["cells"]["siim/imagenet/linear/0.1/dice"]["mean"] == pytest.approx(0.30)
    assert main(["compare", str(runs), "--baseline", str(baseline)]) == 0


# ---------------------------------------------------------------- the statistical rule


def _seed_runs(path, values, torch="2.15.0"):
    """One cell (siim imagenet linear 10% dice) with the given per-seed values."""
    path.mkdir(parents=True, exist_ok=True)
    for seed, v in enumerate(values):
        rec = _record("siim", "imagenet", "linear", 0.1, "dice", seed, v)
        rec["env"]["torch"] = torch
        (path / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return path


BASE5 = [0.60, 0.62, 0.61, 0.59, 0.63]


def _against(tmp_path, base_values, new_values, *args, torch="2.15.0"):
    base = build_baseline(_seed_runs(tmp_path / "b", base_values))
    runs = _seed_runs(tmp_path / "n", new_values, torch=torch)
    return compare(runs, base, *args), runs, base


def test_baseline_stores_per_seed_values_and_machine(tmp_path):
    base = build_baseline(_seed_runs(tmp_path / "b", BASE5))
    cell = base["cells"]["siim/imagenet/linear/0.1/dice"]
    assert cell["values"] == BASE5 and cell["seeds"] == [0, 1, 2, 3, 4]
    assert base["machine"]["torch"] == ["2.15.0"] and base["machine"]["cpu"]


def test_identical_values_pass_without_a_test(tmp_path):
    result, _, _ = _against(tmp_path, BASE5, BASE5)
    (row,) = result["rows"]
    assert row["verdict"] == "ok" and row["test"] == "identical" and row["p"] is None
    assert not result["failed"] and result["machine_notes"] == []


def test_clear_drop_with_five_seeds_fails_the_welch_test(tmp_path):
    new = [v - 0.05 for v in BASE5]
    result, _, _ = _against(tmp_path, BASE5, new)
    (row,) = result["rows"]
    assert row["test"] == "welch" and row["p"] < 0.05 and row["verdict"] == "regression"
    assert result["failed"]
    # the minimum detectable drop: (t_.95,8 + t_.8,8) * s * sqrt(2/5)
    from scipy import stats

    s = float(__import__("numpy").std(BASE5, ddof=1))
    want = (stats.t.ppf(0.95, 8) + stats.t.ppf(0.8, 8)) * s * math.sqrt(2 / 5)
    assert row["mdd"] == pytest.approx(want)
    # a stricter alpha from the CLI still fails a drop this clear, with p shown
    out = format_summary(result)
    assert "| welch |" in out and "min. detectable drop" in out


def test_noise_within_the_seeds_passes(tmp_path):
    new = [0.61, 0.60, 0.63, 0.62, 0.59]  # the same values, other seeds
    result, _, _ = _against(tmp_path, BASE5, new)
    (row,) = result["rows"]
    assert row["test"] == "welch" and row["p"] > 0.05 and row["verdict"] == "ok"
    assert not result["failed"]


def test_two_seeds_have_no_power(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    result, runs, _ = _against(tmp_path, [0.60, 0.62], [0.30, 0.32])
    (row,) = result["rows"]
    assert row["verdict"] == "no power" and result["failed"]
    path = tmp_path / "base.json"
    assert main(["compare", str(tmp_path / "b"), "--baseline", str(path), "--update-baseline"]) == 0
    capsys.readouterr()
    assert main(["compare", str(runs), "--baseline", str(path)]) == 1
    out = capsys.readouterr().out
    assert "no power" in out and _row(out, BROKEN)[-1] == "⚠ no power"
    assert main(["compare", str(runs), "--baseline", str(path), "--allow-low-power"]) == 0
    capsys.readouterr()
    # a tolerance still catches a large drop with two seeds
    assert main(["compare", str(runs), "--baseline", str(path), "--allow-low-power",
                 "--tolerance", "0.1"]) == 1  # fmt: skip
    assert _row(capsys.readouterr().out, BROKEN)[-1] == "❌ regression"


def test_torch_build_difference_is_warned(tmp_path):
    result, _, _ = _against(tmp_path, BASE5, BASE5, torch="2.16.0")
    assert result["machine_notes"] == ["torch build differs: baseline 2.15.0, runs 2.16.0"]
    assert "⚠ torch build differs: baseline 2.15.0, runs 2.16.0" in format_summary(result)


def test_old_baseline_without_per_seed_values(tmp_path):
    base = build_baseline(_seed_runs(tmp_path / "b", BASE5))
    base.pop("machine")
    for cell in base["cells"].values():
        cell.pop("values")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(base))
    runs = _seed_runs(tmp_path / "n", BASE5)
    result = compare(runs, load_baseline(path))
    (row,) = result["rows"]
    assert row["verdict"] == "ok" and row["test"] == "no per-seed values"
    assert row["margin_from"] == "ci_half" and not result["per_seed"]
    out = format_summary(result)
    assert "stores no per-seed values" in out and "only the allowed drop" in out
    assert "records no torch build or CPU" in out
    drop = _seed_runs(tmp_path / "d", [v - 0.1 for v in BASE5])
    assert compare(drop, load_baseline(path))["rows"][0]["verdict"] == "regression"


def test_two_sided_fails_a_clear_rise_and_one_sided_marks_it_improved(tmp_path):
    new = [v + 0.05 for v in BASE5]  # e.g. a metric that counts the wrong thing and inflates
    one, _, base = _against(tmp_path, BASE5, new)
    assert one["rows"][0]["verdict"] == "improved" and not one["failed"]
    runs = _seed_runs(tmp_path / "n2", new)
    two = compare(runs, base, None, 0.05, False, True)
    (row,) = two["rows"]
    assert row["verdict"] == "changed" and two["failed"] and row["p_up"] < 0.025
    text = format_summary(two)
    assert "❌ changed" in text and "(rise)" in text and "--two-sided" in text
    # noise stays ok two-sided; a clear drop is still a regression
    assert not compare(_seed_runs(tmp_path / "n3", [0.61, 0.60, 0.63, 0.62, 0.59]), base, None, 0.05, False,
                       True)["failed"]  # fmt: skip
    drop = compare(_seed_runs(tmp_path / "n4", [v - 0.05 for v in BASE5]), base, None, 0.05, False, True)
    assert drop["rows"][0]["verdict"] == "regression"


def test_two_sided_flag_on_the_cli(tmp_path, capsys):
    base_file = tmp_path / "base.json"
    _seed_runs(tmp_path / "b", BASE5)
    assert main(["compare", str(tmp_path / "b"), "--baseline", str(base_file), "--update-baseline"]) == 0
    runs = _seed_runs(tmp_path / "n", [v + 0.05 for v in BASE5])
    assert main(["compare", str(runs), "--baseline", str(base_file)]) == 0
    assert main(["compare", str(runs), "--baseline", str(base_file), "--two-sided"]) == 1
    assert main(["compare", str(runs)]) == 2  # no --baseline
    assert "--baseline FILE is required" in capsys.readouterr().err
