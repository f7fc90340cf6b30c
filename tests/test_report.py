"""Markdown report from hand-made run records (design §6 aggregates, §8.7, §8.8)."""

import json
import math

import pandas as pd
import pytest

from bench.cli import main
from bench.reporting import write_report
from bench.reporting.exports import make_latex, table_frame
from bench.reporting.frame import aggregate, load_records
from bench.reporting.tables import cell_marks, make_table

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
        "split": {"name": "cxrbench-hash-v1 70/15/15 by patient", "counts": {"test": 30}},
        "history": [{"epoch": e} for e in range(1, 5)],
        "env": {"python": "3.11.7", "torch": "2.15.0", "torchvision": "0.30.0", "smp": "0.5.0",
                "pycocotools": "2.0.10", "device": "cpu", "git_commit": "abc"},
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
# moco/finetune 100%: 0.5, 0.55, 0.6 -> 0.550 ± 0.124 (n=3)
# supervised/linear 10%: 0.95 (leakage, n=1): highest mean but never bold
# By hand: best linear 10% = imagenet 0.700, CI [-0.571, 1.971] -> random 0.600 inside
# (underlined); best finetune 100% = imagenet 0.900, CI [0.652, 1.148] -> random 0.700
# inside (underlined), moco 0.550 below (plain).
SEEDS = {
    ("random", "linear", 0.1): [0.5, 0.6, 0.7],
    ("imagenet", "linear", 0.1): [0.6, 0.8],
    ("random", "finetune", 1.0): [0.7],
    ("imagenet", "finetune", 1.0): [0.8, 0.9, 1.0],
    ("moco", "finetune", 1.0): [0.5, 0.55, 0.6],
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


def _split(line):
    return [c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split(" | ")]


def _table_rows(md, task):
    """The main table of a task: combined column names ("linear 10%", from the protocol
    header row carried over blank cells and the fraction row) and rows by init."""
    section = md.split(f"## {task}\n", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    groups, fractions = _split(lines[0]), _split(lines[2])
    assert fractions[0] == "*label fraction*"
    header, current = ["init"], None
    for g, f in zip(groups[1:], fractions[1:]):
        current = g or current
        header.append(f"{current} {f.strip('*')}")
    rows = {}
    for ln in lines[3:]:
        cells = _split(ln)
        if cells[0] in {"random", "imagenet", "supervised", "moco"} and cells[0] not in rows:
            rows[cells[0]] = dict(zip(header, cells))
        else:
            break
    return header, rows


def _report(tmp_path, records, name="r.md", **kw):
    _write(tmp_path / "runs", records)
    kw.setdefault("figures", False)  # the PNG has its own test; keeps the suite fast
    return write_report(tmp_path / "runs", tmp_path / "out" / name, **kw).read_text()


def test_hand_numbers_are_the_cells(tmp_path):
    assert f"{_half([0.5, 0.6, 0.7]):.3f}" == "0.248"
    assert f"{_half([0.6, 0.8]):.3f}" == "1.271"
    md = _report(tmp_path, _records())
    header, rows = _table_rows(md, "siim")
    assert header == ["init", "linear 10%", "finetune 100%"]
    # failed (0.01) and nan_loss runs are not in the means
    assert rows["random"]["linear 10%"] == "<u>0.600 ± 0.248 (n=3)</u>"
    assert rows["imagenet"]["linear 10%"] == "**0.700 ± 1.271 (n=2)**"
    assert rows["random"]["finetune 100%"] == "<u>0.700 (n=1)</u>"
    assert rows["imagenet"]["finetune 100%"] == "**0.900 ± 0.248 (n=3)**"
    assert rows["moco"]["finetune 100%"] == "0.550 ± 0.124 (n=3)"
    assert rows["supervised"]["linear 10%"] == "0.950 (n=1) †"  # leakage: never marked
    assert rows["supervised"]["finetune 100%"] == "–"
    assert "† the initialization was pretrained on data that includes" in md
    assert "Kaggle SIIM-ACR metric" in md
    # secondary metrics: dice_pooled = dice - 0.1
    assert "| random | linear | 10% | 0.500 ± 0.248 (n=3) | 0.400 ± 0.248 (n=3) |" in md


def _grid_agg():
    """Two protocols x two fractions, by hand:
    linear 1%:    random 0.40 ± 0.248, imagenet 0.50 ± 0.248 (best, CI low 0.252) -> random in
    linear 100%:  random 0.60 ± 0.248, imagenet 0.90 ± 0.248 (best, CI low 0.652) -> random out
    finetune 1%:  random 0.30 (n=1, best, no CI) -> imagenet 0.29 ± 1.271 plain
    finetune 100%: imagenet only (one cell: nothing marked)."""
    vals = {
        ("random", "linear", 0.01): [0.3, 0.4, 0.5],
        ("imagenet", "linear", 0.01): [0.4, 0.5, 0.6],
        ("random", "linear", 1.0): [0.5, 0.6, 0.7],
        ("imagenet", "linear", 1.0): [0.8, 0.9, 1.0],
        ("random", "finetune", 0.01): [0.3],
        ("imagenet", "finetune", 0.01): [0.19, 0.39],
        ("imagenet", "finetune", 1.0): [0.8, 0.9],
    }
    recs = [
        _record("siim", i, p, f, seed, v)
        for (i, p, f), vs in vals.items()
        for seed, v in enumerate(vs)
    ]
    from bench.reporting.frame import records_to_frame

    return aggregate(records_to_frame(recs))


def test_two_level_header_and_marks():
    table = make_table(_grid_agg(), "siim")
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    # protocol above the first column of its group, blank over the rest (pandas-style)
    assert lines[0] == "| init | linear |  | finetune |  |"
    assert lines[1] == "| --- | :--- | :--- | :--- | :--- |"
    assert lines[2] == "| *label fraction* | *1%* | *100%* | *1%* | *100%* |"
    assert lines[3] == (
        "| random | <u>0.400 ± 0.248 (n=3)</u> | 0.600 ± 0.248 (n=3) | **0.300 (n=1)** | – |"
    )
    assert lines[4] == (
        "| imagenet | **0.500 ± 0.248 (n=3)** | **0.900 ± 0.248 (n=3)** "
        "| 0.290 ± 1.271 (n=2) | 0.850 ± 0.635 (n=2) |"
    )
    assert "Bold: best mean of the column; underlined:" in table
    marks = cell_marks(_grid_agg())
    assert marks == {
        ("siim", "random", "linear", 0.01, "dice"): "within_ci",
        ("siim", "imagenet", "linear", 0.01, "dice"): "best",
        ("siim", "imagenet", "linear", 1.0, "dice"): "best",
        ("siim", "random", "finetune", 0.01, "dice"): "best",
    }


def test_marks_follow_the_best_ci(tmp_path):
    md = _report(tmp_path, _records())
    header, rows = _table_rows(md, "siim")
    agg = aggregate(load_records(tmp_path / "runs"))
    for col in header[1:]:
        proto, pct = col.split()
        a = agg[(agg["protocol"] == proto) & (agg["fraction"] == float(pct[:-1]) / 100)]
        a = a[~a["leakage"]]
        best = a.loc[a["mean"].idxmax()]
        for _, r in a.iterrows():
            cell = rows[r["init"]][col]
            if r["init"] == best["init"]:
                assert cell.startswith("**")
            elif r["mean"] >= best["ci_low"]:
                assert cell.startswith("<u>") and cell.endswith("</u>")
            else:
                assert not cell.startswith(("**", "<u>"))


def test_csv_and_latex_exports(tmp_path):
    md = _report(tmp_path, _records(), name="paper.md")
    out = tmp_path / "out"
    assert "[CSV](paper_siim.csv)" in md and "[LaTeX](paper_siim.tex)" in md
    df = pd.read_csv(out / "paper_siim.csv")
    assert list(df.columns[:11]) == ["task", "init", "protocol", "fraction", "metric", "mean",
                                     "std", "ci_low", "ci_high", "ci_half", "n"]  # fmt: skip
    r = df[(df["init"] == "random") & (df["protocol"] == "linear")].iloc[0]
    half = _half([0.5, 0.6, 0.7])
    assert (r["task"], r["fraction"], r["metric"], r["n"]) == ("siim", 0.1, "dice", 3)
    assert r["mean"] == pytest.approx(0.6) and r["std"] == pytest.approx(0.1)
    assert r["ci_half"] == pytest.approx(half, abs=1e-6)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert r["mark"] == "within_ci"
    one = df[(df["init"] == "random") & (df["protocol"] == "finetune")].iloc[0]
    assert one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci_half"])
    assert len(df) == 6 and set(df["mark"].fillna("")) == {"best", "within_ci", ""}

    tex = (out / "paper_siim.tex").read_text()
    assert "\\begin{tabular}{l r r}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert " & \\multicolumn{1}{c}{linear} & \\multicolumn{1}{c}{finetune} \\\\" in tex
    assert "\\cmidrule(lr){2-2} \\cmidrule(lr){3-3}" in tex
    assert "init & 10\\% & 100\\% \\\\" in tex
    assert "\\textbf{0.700 $\\pm$ 1.271}" in tex  # imagenet linear 10%
    assert "\\textbf{0.900 $\\pm$ 0.248}" in tex  # imagenet finetune 100%
    assert "\\underline{0.600 $\\pm$ 0.248}" in tex  # random linear 10%
    assert "supervised & 0.950 {\\scriptsize ($n{=}1$)}$^\\dagger$ & -- \\\\" in tex
    assert tex.count("\\textbf{") == 2 and tex.count("\\underline{") == 2


def test_latex_groups_and_uniform_n():
    tex = make_latex(_grid_agg().query("init == 'random' or protocol == 'linear'"), "siim")
    assert " & \\multicolumn{2}{c}{linear} & \\multicolumn{1}{c}{finetune} \\\\" in tex
    assert "\\begin{tabular}{l rr r}" in tex and "\\cmidrule(lr){2-3} \\cmidrule(lr){4-4}" in tex
    tex = make_latex(_grid_agg().query("protocol == 'linear'"), "siim")
    assert "n = 3 seed(s) per cell" in tex and "scriptsize" not in tex
    assert "imagenet & \\textbf{0.500 $\\pm$ 0.248} & \\textbf{0.900 $\\pm$ 0.248} \\\\" in tex
    assert table_frame(_grid_agg(), "rsna").empty and make_latex(_grid_agg(), "rsna") == ""


def test_png_written_and_linked(tmp_path):
    _write(tmp_path / "runs", _records())
    out = write_report(tmp_path / "runs", tmp_path / "out" / "bench.md")
    png = tmp_path / "out" / "bench_siim_label_efficiency.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "](bench_siim_label_efficiency.png)" in out.read_text()


def test_synthetic_warning_only_when_flagged(tmp_path):
    md_real = _report(tmp_path / "real", _records(synthetic=False))
    md_synth = _report(tmp_path / "synth", _records(synthetic=True))
    assert "SYNTHETIC" not in md_real
    head = md_synth.split("## siim", 1)[0]
    assert "SYNTHETIC DATA — these numbers are not the benchmark" in head
    captions = [ln for ln in md_synth.splitlines() if ln.startswith("**siim:")]
    assert len(captions) == 3 and all("SYNTHETIC DATA" in c for c in captions)
    tex = (tmp_path / "synth" / "out" / "r_siim.tex").read_text()
    assert "% SYNTHETIC DATA" in tex


def test_failed_runs_listed_not_averaged(tmp_path):
    md = _report(tmp_path, _records())
    runs = tmp_path / "runs"
    df = load_records(runs)
    assert len(df) == 13 and set(df["status"]) == {"complete"}
    assert len(load_records(runs, include_incomplete=True)) == 15
    failed = md.split("## Runs that did not complete", 1)[1].split("##", 1)[0]
    assert "2 run(s) are not in any mean (failed: 1, nan_loss: 1)" in failed
    assert "siim-random-linear-f0.1-s7-failed" in failed and "OOM" in failed
    assert "siim-imagenet-linear-f0.1-s9-nan_loss" in failed


def test_appendix_lists_every_run(tmp_path):
    recs = _records()
    recs[0]["history"] = [{"epoch": e} for e in range(1, 3)]  # stopped early: 2 of 5
    recs[0]["timing"]["wall_s"] = 61.25
    md = _report(tmp_path, recs)
    appendix = md.split("## Appendix: per-run results", 1)[1]
    lines = [ln for ln in appendix.splitlines() if ln.startswith("| ")]
    header = _split(lines[0])
    assert header == ["run_id", "task", "init", "protocol", "fraction", "seed", "status", "lr",
                      "lr from", "epochs run/max", "best epoch", "wall s", "metric", "test",
                      "val", "flags"]  # fmt: skip
    rows = {r[0]: dict(zip(header, r)) for r in map(_split, lines[2:])}
    assert len(rows) == 15  # failed and nan_loss runs too, with their status
    first = rows["siim-random-linear-f0.1-s0-complete"]
    assert (first["status"], first["lr"], first["lr from"]) == ("complete", "0.001", "fixed")
    assert (first["epochs run/max"], first["best epoch"], first["wall s"]) == ("2/5", "3", "61.2")
    assert (first["test"], first["val"]) == ("0.5000", "0.5000")
    assert rows["siim-random-linear-f0.1-s7-failed"]["status"] == "failed"
    assert rows["siim-imagenet-linear-f0.1-s9-nan_loss"]["test"] == ""
    assert rows["siim-supervised-linear-f0.1-s0-complete"]["flags"] == "leakage †"


def _selection(chosen, scores):
    # the shape bench.sweep.select_lr writes: repr(lr) keys, None for a failed candidate
    return {"candidates": [1e-4, 1e-3, 1e-2], "chosen": chosen, "metric": "dice",
            "val_scores": {repr(k): v for k, v in scores.items()}, "seed": 0,
            "selection_run_ids": ["a", "b", "c"]}  # fmt: skip


def test_lr_selection_table(tmp_path):
    recs = [
        _record("siim", "random", "linear", 0.1, s, 0.5, hparams={"lr": 1e-2},
                lr_selection=_selection(1e-2, {1e-4: 0.2, 1e-3: 0.3, 1e-2: 0.4}))
        for s in range(3)
    ] + [
        _record("siim", "imagenet", "linear", 0.1, s, 0.6, hparams={"lr": 1e-3},
                lr_selection=_selection(1e-3, {1e-4: 0.5, 1e-3: 0.7, 1e-2: None}))
        for s in range(2)
    ] + [_record("siim", "imagenet", "finetune", 1.0, 0, 0.7, hparams={"lr": 1e-4})]  # fmt: skip
    md = _report(tmp_path, recs)
    section = md.split("**siim: learning rate chosen per cell**", 1)[1]
    assert "| init | linear 10% | finetune 100% |" in section
    assert "| random | 0.01 | – |" in section
    assert "| imagenet | 0.001 | 0.0001 (fixed) |" in section
    assert (
        "| init | protocol | fraction | seeds | selected at seed | val metric | lr 0.0001 | lr 0.001 "
        "| lr 0.01 |" in section
    )
    assert "| random | linear | 10% | 0 1 2 | 0 | dice | 0.2000 | 0.3000 | 0.4000 ✓ |" in section
    assert "| imagenet | linear | 10% | 0 1 | 0 | dice | 0.5000 | 0.7000 ✓ | n/a |" in section
    appendix = md.split("## Appendix", 1)[1]
    assert (
        "| siim-random-linear-f0.1-s0-complete | siim | random | linear | 10% | 0 | complete | 0.01 | search (3) |"
        in appendix
    )


def test_lr_table_without_search_and_runs_of_different_lrs(tmp_path):
    # seeds run at different lrs are different cells (design §8.10): never one mean
    recs = [_record("siim", "random", "linear", 0.1, s, v, hparams={"lr": lr})
            for s, (lr, v) in enumerate([(1e-3, 0.5), (1e-3, 0.6), (1e-2, 0.9)])]  # fmt: skip
    md = _report(tmp_path, recs)
    assert "**siim: learning rate per cell (fixed, no lr search recorded)**" in md
    assert "| random [lr=0.001] | 0.001 |" in md and "| random [lr=0.01] | 0.01 |" in md
    assert f"| random [lr=0.001] | 0.550 ± {_half([0.5, 0.6]):.3f} (n=2) |" in md
    assert "| random [lr=0.01] | **0.900 (n=1)** |" in md
    assert "Validation score of each candidate" not in md
    assert (
        "- `siim` random linear 10%: the runs differ in settings that change the result "
        "(lr: 0.001, 0.01); each setting is its own row (`random [lr=0.001]`, "
        "`random [lr=0.01]`), never averaged together." in md
    )


def test_settings_section(tmp_path):
    recs = _records()
    recs[1]["env"] = {**recs[1]["env"], "git_commit": "def-dirty"}
    md = _report(tmp_path, recs)
    settings = md.split("## Software and settings", 1)[1].split("\n## ", 1)[0]
    for line in (
        "| git commit | `env.git_commit` | `abc` (14), `def-dirty` (1) — differs between runs |",
        "| torch | `env.torch` | `2.15.0` |",
        "| torchvision | `env.torchvision` | `0.30.0` |",
        "| segmentation-models-pytorch | `env.smp` | `0.5.0` |",
        "| pycocotools | `env.pycocotools` | `2.0.10` |",
        "| device | `env.device` | `cpu` |",
        "| arch | `arch` | `resnet18` |",
        "| image size | `image_size` | `64` |",
        "| max epochs | `hparams.epochs` | `5` |",
        "| batch size | `hparams.batch_size` | `8` |",
        "| split | `split.name` | `cxrbench-hash-v1 70/15/15 by patient` |",
        "| cxrbench | `env.cxrbench` | not recorded |",
    ):
        assert line in settings
    assert "| GPU |" not in settings  # optional, absent on CPU
    assert "`data.root`" in settings  # everything else in the collapsed table


def test_paths_under_the_current_folder_are_named_relative(tmp_path, monkeypatch):
    recs = _records()
    for r in recs:
        r["data"] = {**r["data"], "root": str(tmp_path / "runs" / "data" / "siim")}
    monkeypatch.chdir(tmp_path)
    md = _report(tmp_path, recs)
    assert "`runs/data/siim`" in md and str(tmp_path) not in md
    monkeypatch.chdir(tmp_path / "runs")  # elsewhere: a path outside it stays absolute
    md = _report(tmp_path, recs, name="r2.md")
    assert "`data/siim`" in md and str(tmp_path / "runs" / "data") not in md
    recs[0]["data"]["root"] = "/data/elsewhere/siim"
    assert "/data/elsewhere/siim" in _report(tmp_path, recs, name="r3.md")


def test_extra_sections_hook_and_cli(tmp_path):
    section = "## Example predictions\n\n![best](ex.png)"
    md = _report(tmp_path, _records(), extra_sections=[section, ""])
    assert md.index("## siim") < md.index("## Example predictions") < md.index("## Appendix")
    assert md.count("## Example predictions") == 1
    extra = tmp_path / "extra.md"
    extra.write_text(section + "\n")
    out = tmp_path / "cli" / "r.md"
    argv = ["report", "--runs", str(tmp_path / "runs"), "--out", str(out), "--no-figures"]
    assert main([*argv, "--extra-section", str(extra)]) == 0
    assert "## Example predictions" in out.read_text()
    assert not list(out.parent.glob("*.png")) and (out.parent / "r_siim.tex").is_file()


def test_corrupt_and_foreign_json_skipped_with_warning(tmp_path):
    _write(tmp_path, _records())
    (tmp_path / "broken.json").write_text('{"run_id": "x", ')
    (tmp_path / "sweep.json").write_text('{"grid": [1, 2]}')
    with pytest.warns(UserWarning) as caught:
        md = write_report(tmp_path, tmp_path / "r.md", figures=False).read_text()
    messages = [str(w.message) for w in caught]
    assert any("broken.json" in m and "not valid JSON" in m for m in messages)
    assert any("sweep.json" in m and "no run_id" in m for m in messages)
    assert "## Skipped files" in md and "broken.json" in md
    _, rows = _table_rows(md, "siim")
    assert rows["random"]["linear 10%"] == "<u>0.600 ± 0.248 (n=3)</u>"


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
    assert "| random | <u>0.600 ± 0.248 (n=3)</u> | <u>0.700 (n=1)</u> |" in table
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
    assert header == ["init", "linear (dice) 1%", "finetune (map) 1%"]
    assert rows["imagenet"]["finetune (map) 1%"] == "**0.250 (n=1)**"
    assert rows["moco"]["finetune (map) 1%"] == "0.100 (n=1) ‡" and "‡ the checkpoint" in md
    tex = (tmp_path / "r_rsna.tex").read_text()
    assert "\\multicolumn{1}{c}{linear (dice)} & \\multicolumn{1}{c}{finetune (map)}" in tex
    assert "0.100$^\\ddagger$" in tex
    assert (tmp_path / "r_rsna_label_efficiency.png").stat().st_size > 1000
    (tmp_path / "empty").mkdir()
    assert (
        "No run records found." in write_report(tmp_path / "empty", tmp_path / "e.md").read_text()
    )


def test_figure_interval_is_clipped_to_the_metric_range():
    from bench.metrics.stats import summarize
    from bench.reporting.figures import _t_interval

    wide = [0.05, 0.95]  # n=2: the t-interval reaches far outside [0, 1]
    s = summarize(wide)
    assert s["ci_low"] < 0 and s["ci_high"] > 1
    assert _t_interval(wide) == (0.0, 1.0)
    narrow = [0.5, 0.52, 0.54]
    s = summarize(narrow)
    assert _t_interval(narrow) == pytest.approx((s["ci_low"], s["ci_high"]))


def test_metric_order_and_notes_come_from_the_task_registry(tmp_path):
    """A registered task's metrics set the column order (not alphabetical) and its
    ``metric_notes`` are printed; nothing in bench.reporting names them."""
    import dataclasses

    from tasks import all_tasks, get_task, register, unregister

    base = next(s for s in all_tasks() if set(s.outputs.values()) == {"mask"})
    spec = dataclasses.replace(
        base,
        name="toy_registry_task",
        metrics={"mask": ("zeta", "beta", "alpha")},
        metric_notes={"zeta": "the toy primary note", "beta": "the toy beta note"},
    )
    register(spec)
    try:
        assert get_task("toy_registry_task") is spec
        recs = [
            _record("toy_registry_task", init, "linear", 0.1, seed, v, primary_metric="zeta",
                    metrics={"test": {"zeta": v, "beta": v / 2, "alpha": v / 4}})
            for init, vs in (("random", [0.5, 0.6]), ("imagenet", [0.7, 0.8]))
            for seed, v in enumerate(vs)
        ]  # fmt: skip
        md = _report(tmp_path, recs)
    finally:
        unregister("toy_registry_task")
    assert "- `zeta` (primary): the toy primary note" in md
    assert "- `beta`: the toy beta note" in md
    assert "| init | protocol | fraction | beta | alpha |" in md
