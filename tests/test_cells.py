"""Numbers never mix (issue 11 §3): a report / compare cell is every setting that changes
the result (the run id's settings minus the seed), one seed counts once, and the lr
search never lets a diverged candidate win (ties: lower validation loss, else lower
final train loss, else the smaller lr; the rule that decided is recorded)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.engine import runner
from bench.engine.config import RunConfig
from bench.engine.divergence import diverged_epochs, loss_diverged, record_diverged, start_loss
from bench.engine.records import read_record, record_path, write_json_atomic
from bench.engine.train import fit
from bench.experiments.baseline import build_baseline
from bench.experiments.plan import plan_sweep, select_lr
from bench.experiments.run import run_sweep
from bench.experiments.sweep import parse_sweep
from bench.reporting import write_report
from bench.reporting.frame import (
    aggregate,
    cell_key,
    load_records,
    read_records,
    records_to_frame,
    result_settings,
)

T975 = {3: 4.302653}  # scipy.stats.t.ppf(0.975, 2)


def _half(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return T975[n] * std / math.sqrt(n)


# ---------------------------------------------------------------- what a cell is

BASE = RunConfig(task="siim", init="random", protocol="linear", arch="resnet18", image_size=64,
                 epochs=3, out="runs/x")  # fmt: skip
# one changed value per setting the run id hashes (RunConfig.identity), seed aside
CHANGED = {
    "task": None, "protocol": None, "fraction": None, "init": "imagenet",  # table axes
    "data_root": "/data/siim", "arch": "resnet34", "image_size": 96, "epochs": 4,
    "batch_size": 8, "weight_decay": 1e-5, "patience": 2, "checkpoint": "ck.pth",
    "prefix": "enc.", "allow_partial": True, "split_file": "lovt/", "rle_format": "absolute",
    "lr": 0.5,
}  # fmt: skip


def _rec(cfg: RunConfig, **extra) -> dict:
    return runner.base_record(cfg) | {"status": "complete"} | extra


def test_cell_is_the_run_id_settings_minus_the_seed():
    settings = result_settings(_rec(BASE))
    assert settings == {k: v for k, v in BASE.identity().items() if k != "seed"}
    assert settings["lr"] == 1e-3  # the resolved lr (DEFAULT_LR of linear), as in the run id
    # the seed and settings that do not change the result: the same cell
    for change in ({"seed": 7}, {"out": "elsewhere"}, {"device": "cpu"}, {"num_workers": 2},
                   {"progress": False}, {"save_predictions": True}, {"init_name": None}):  # fmt: skip
        assert cell_key(result_settings(_rec(dataclasses.replace(BASE, **change)))) == cell_key(
            settings
        ), change
    # every other setting of the run id: another cell (the list is config.py's)
    for key in BASE.identity():
        if key == "seed" or CHANGED[key] is None:
            continue
        other = dataclasses.replace(BASE, **{key: CHANGED[key]})
        assert cell_key(result_settings(_rec(other))) != cell_key(settings), key
    with_norm = dataclasses.replace(BASE, mean=[0.5], std=[0.25])
    assert result_settings(_rec(with_norm))["mean"] == [0.5]
    extra = dataclasses.replace(BASE, extra={"depth": 3})
    assert result_settings(_rec(extra))["extra.depth"] == 3
    # boxes runs: the detector is a setting (hparams.detector says the output kind)
    det = RunConfig(task="rsna", init="random", protocol="finetune", arch="resnet18")
    assert result_settings(_rec(det))["detector"] == "retinanet"
    assert cell_key(result_settings(_rec(dataclasses.replace(det, detector="fasterrcnn")))) != (
        cell_key(result_settings(_rec(det)))
    )
    assert "detector" not in settings


def test_record_without_config_uses_its_own_fields():
    rec = {"run_id": "r", "task": "siim", "init": "random", "protocol": "linear", "fraction": 1,
           "seed": 0, "arch": "resnet18", "image_size": 64, "hparams": {"lr": 0.01, "epochs": 5}}  # fmt: skip
    s = result_settings(rec)
    assert (s["arch"], s["image_size"], s["lr"], s["epochs"]) == ("resnet18", 64, 0.01, 5)
    assert cell_key(s) == cell_key(result_settings(rec | {"seed": 3, "fraction": 1.0}))


# ---------------------------------------------------------------- the hostile case

VAL = {1e-2: 0.70, 1e-3: 0.80, 1e-4: 0.20}  # validation dice by lr; the seed adds a little


class FakeExecute:
    """Writes a record the way the runner does (base_record, metrics, history, timing)."""

    def __init__(self, history: dict | None = None):
        self.history = history or {}  # lr -> list of epoch train losses (+ start)
        self.calls: list[str] = []

    def __call__(self, cfg: RunConfig) -> dict:
        self.calls.append(cfg.run_id)
        score = VAL.get(cfg.resolved_lr, 0.5) + cfg.seed / 100
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        losses, start = self.history.get(cfg.resolved_lr, ([0.5, 0.4], 0.7))
        history = [{"epoch": e, "train_loss": v, "val": {"dice": score}} for e, v in
                   enumerate(losses, 1)]  # fmt: skip
        history[0]["start_loss"] = start
        rec = runner.base_record(cfg) | {
            "metrics": {"val": {"dice": score}, "test": {"dice": round(score - 0.1, 6)}},
            "history": history, "best_epoch": len(history), "status": "complete",
            "timing": {"started": now, "ended": now, "wall_s": 0.01},
            "data": {"synthetic": True}, "split": {"name": "cxrbench-hash-v1"},
            "weights": {"source": "none", "partial": False, "leakage": False},
            "env": {"torch": "x", "device": "cpu", "git_commit": "abc"},
        }  # fmt: skip
        write_json_atomic(record_path(cfg.out, cfg.run_id), rec)
        return rec


@pytest.fixture
def fake(monkeypatch):
    f = FakeExecute()
    monkeypatch.setattr(runner, "execute", f)
    return f


def _sweep(tmp_path, candidates=(1e-2, 1e-3, 1e-4), seeds=(0, 1, 2), name="lr"):
    return parse_sweep({
        "name": name, "out": str(tmp_path / "runs" / name),
        "grid": {"protocol": ["linear"], "seed": list(seeds)},
        "settings": {"task": "siim", "init": "random", "arch": "resnet18", "image_size": 64},
        "lr_search": {"candidates": list(candidates), "seed": 0},
    })  # fmt: skip


def _rows(md: str, task: str = "siim") -> dict[str, str]:
    section = md.split(f"## {task}\n", 1)[1].split("\n\n", 2)[1]
    cells = [ln.strip("|").split(" | ") for ln in section.splitlines() if ln.startswith("| ")]
    return {c[0].strip(): c[1].strip() for c in cells[3:]}


def test_sweep_and_its_lr_search_reported_together(tmp_path, fake, capsys):
    sweep = _sweep(tmp_path)
    result = run_sweep(sweep, log=lambda m: None)
    assert not result.failed and [s["chosen"] for _, s in result.selections] == [1e-3]
    parent = tmp_path / "runs"  # holds lr/ and lr-lr-search/
    assert {p.parent.name for p in parent.rglob("*.json")} == {"lr", "lr-lr-search"}
    with pytest.warns(UserWarning, match="duplicate run_id"):
        md = write_report(parent, tmp_path / "r.md", figures=False).read_text()
    rows = _rows(md)
    # three cells, one per lr; the chosen lr's cell has its 3 seeds, counted once each
    # (seed 0's final run is the same run as its candidate: one record of two is used)
    assert rows == {
        "random [lr=0.0001]": "0.100 (n=1)",
        "random [lr=0.001]": f"**0.710 ± {_half([0.70, 0.71, 0.72]):.3f} (n=3)**",
        "random [lr=0.01]": "0.600 (n=1)",
    }
    assert "| random |" not in md.split("## Notes", 1)[0]  # no mixed cell
    assert "the runs differ in settings that change the result (lr: 0.0001, 0.001, 0.01)" in md
    assert "## Skipped files" in md and "duplicate run_id" in md and "is in 2 files" in md
    agg = aggregate(load_records(parent))
    assert sorted(agg["n"]) == [1, 1, 3] and sorted(map(tuple, agg["seeds"])) == [
        (0,),
        (0,),
        (0, 1, 2),
    ]

    # bench compare / a baseline: one set of seeds per cell, so the mix is an input error
    baseline = tmp_path / "b.json"
    assert main(["compare", str(parent), "--baseline", str(baseline), "--update-baseline"]) == 2
    err = capsys.readouterr().err
    assert "more than one set of settings" in err and "lr: 0.0001, 0.001, 0.01" in err
    assert "siim random linear 100%" in err and not baseline.exists()
    # the sweep's own folder is one cell of 3 seeds
    assert main(["compare", sweep.out, "--baseline", str(baseline), "--update-baseline"]) == 0
    cell = json.loads(baseline.read_text())["cells"]["siim/random/linear/1/dice"]
    assert (cell["n"], cell["seeds"], cell["settings"]["lr"]) == (3, [0, 1, 2], 0.001)
    assert cell["mean"] == pytest.approx(0.71)
    capsys.readouterr()
    assert main(["compare", str(parent), "--baseline", str(baseline)]) == 2
    assert "lr: 0.0001, 0.001, 0.01" in capsys.readouterr().err


def test_one_seed_counts_once_the_newest(tmp_path):
    cfg = dataclasses.replace(BASE, out=str(tmp_path))
    old = _rec(cfg, metrics={"val": {"dice": 0.1}, "test": {"dice": 0.1}},
               timing={"ended": "2025-01-01T00:00:00+00:00"})  # fmt: skip
    new = _rec(cfg, metrics={"val": {"dice": 0.9}, "test": {"dice": 0.9}},
               timing={"ended": "2025-02-01T00:00:00+00:00"})  # fmt: skip
    failed = _rec(cfg, status="failed", error="OOM", timing={"ended": "2025-03-01T00:00:00+00:00"})
    # same run id in three files: the newest *complete* one is used (not the later failure)
    for sub, rec in (("a", new), ("b", old), ("c", failed)):
        write_json_atomic(tmp_path / sub / f"{cfg.run_id}.json", rec)
    with pytest.warns(UserWarning, match="duplicate run_id"):
        records, skipped = read_records(tmp_path)
    assert [r["_path"] for r in records] == [f"a/{cfg.run_id}.json"]
    assert records[0]["_duplicates"] == [f"b/{cfg.run_id}.json", f"c/{cfg.run_id}.json"]
    assert [p for p, _ in skipped] == [f"b/{cfg.run_id}.json", f"c/{cfg.run_id}.json"]
    assert all(f"a/{cfg.run_id}.json is used instead" in why for _, why in skipped)
    # one seed of one cell under two run ids (an edited or older-version id): counted once
    renamed = old | {"run_id": "siim-random-linear-f1-s0-oldhash"}
    write_json_atomic(tmp_path / "d" / "renamed.json", renamed)
    with pytest.warns(UserWarning):
        df = load_records(tmp_path)
    agg = aggregate(df)
    assert len(agg) == 1 and agg.iloc[0]["n"] == 1 and agg.iloc[0]["mean"] == pytest.approx(0.9)
    assert agg.iloc[0]["n_runs"] == 2
    with pytest.warns(UserWarning):
        md = write_report(tmp_path, tmp_path / "out" / "r.md", figures=False).read_text()
    assert _rows(md) == {"random": "0.900 (n=1)"}
    assert (
        "seed 0 has 2 complete records of the same settings (siim-random-linear-f1-s0-oldhash "
        f"and {cfg.run_id}); the seed counts once, with the newest: {cfg.run_id}." in md
    )
    assert f"run `{cfg.run_id}` is in 3 files" in md


def test_a_cell_per_setting_never_averaged():
    # image size, epochs and data root each split a cell; the label names what differs
    recs = []
    for seed, (size, value) in enumerate([(64, 0.5), (64, 0.6), (96, 0.9)]):
        cfg = dataclasses.replace(BASE, seed=seed, image_size=size)
        recs.append(_rec(cfg, metrics={"val": {}, "test": {"dice": value}}))
    df = records_to_frame(recs)
    agg = aggregate(df).set_index("init")
    assert agg.loc["random [image_size=64]", "n"] == 2
    assert agg.loc["random [image_size=64]", "mean"] == pytest.approx(0.55)
    assert agg.loc["random [image_size=96]", "n"] == 1
    assert set(df["init_name"]) == {"random"} and set(df["variant"]) == {"image_size=64",
                                                                        "image_size=96"}  # fmt: skip
    two = [
        _rec(dataclasses.replace(BASE, data_root=r, epochs=e)) for r, e in (("/a", 3), ("/b", 5))
    ]
    labels = set(records_to_frame(two)["init"])
    assert labels == {"random [data_root=/a, epochs=3]", "random [data_root=/b, epochs=5]"}


# ---------------------------------------------------------------- divergence


def test_divergence_rule_on_histories():
    assert loss_diverged(7.1, 0.7) and not loss_diverged(6.9, 0.7)
    assert loss_diverged(float("inf"), 0.7) and not loss_diverged(None, 0.7)
    exploded = [{"epoch": 1, "train_loss": 4.8e17, "start_loss": 0.69},
                {"epoch": 2, "train_loss": 3.1e17}]  # fmt: skip
    assert start_loss(exploded) == 0.69 and diverged_epochs(exploded) == [1, 2]
    assert record_diverged({"history": exploded}) and not record_diverged({"history": []})
    # an older record (no start_loss): the first epoch's mean stands in
    older = [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.5},
             {"epoch": 3, "train_loss": 12.0}]  # fmt: skip
    assert diverged_epochs(older) == [3]
    # fit's own flags win over recomputing; a top-level flag wins over the history
    assert (
        diverged_epochs([{"epoch": 1, "train_loss": 99.0, "start_loss": 1.0, "diverged": False}])
        == []
    )
    assert record_diverged({"diverged": True, "history": []})


def _fit(lr: float):
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    batches = [(x[i : i + 2], 3 * x[i : i + 2] + 1) for i in range(0, 8, 2)]

    def loss_step(m, batch, device):
        inp, target = batch
        return ((m(inp) - target) ** 2).mean()

    with torch.no_grad():
        first = float(loss_step(model, batches[0], None))  # before any update
    out = fit(model, batches, batches, loss_step=loss_step, evaluate=lambda m, loader: {"dice": 0.5},
              metric="dice", lr=lr, weight_decay=0.0, epochs=3, patience=10,
              device=torch.device("cpu"), progress=False)  # fmt: skip
    return out, first


def test_fit_records_divergence_without_changing_training():
    out, first = _fit(1e9)
    h = out["history"]
    assert out["diverged"] and out["start_loss"] == pytest.approx(first)
    assert h[0]["start_loss"] == pytest.approx(first) and "start_loss" not in h[1]
    assert [e["diverged"] for e in h] == [True, True, True]
    assert all(math.isfinite(e["train_loss"]) and e["train_loss"] > 1e6 for e in h)
    good, first = _fit(1e-2)
    assert not good["diverged"] and [e["diverged"] for e in good["history"]] == [False] * 3
    assert good["start_loss"] == pytest.approx(first)
    assert good["history"][-1]["train_loss"] < first
    # the flags only record: the same run again gives the same losses
    again, _ = _fit(1e-2)
    assert [e["train_loss"] for e in again["history"]] == [e["train_loss"] for e in good["history"]]


# ---------------------------------------------------------------- the lr search


def _candidates(tmp_path, specs: dict) -> list:
    """Write one candidate record per lr: spec = (val dice, history, extra fields)."""
    sweep = _sweep(tmp_path, candidates=tuple(specs), seeds=(0, 1))
    (cell,) = sweep.cells()
    for cand in cell.candidates:
        score, history, extra = specs[cand.lr]
        rec = runner.base_record(cand) | {
            "status": "complete", "metrics": {"val": {"dice": score}, "test": {"dice": score}},
            "history": history, **extra,
        }  # fmt: skip
        write_json_atomic(record_path(cand.out, cand.run_id), rec)
    return cell


def _h(*losses, start=0.7):
    hist = [{"epoch": e, "train_loss": v, "val": {"dice": 0.742}} for e, v in enumerate(losses, 1)]
    if hist:
        hist[0]["start_loss"] = start
    return hist


def test_diverged_candidate_never_wins_a_tie(tmp_path):
    # the case: lr 1e9 ties on validation Dice (empty masks) and is listed first
    cell = _candidates(tmp_path, {1e9: (0.742, _h(4.8e17, 4.8e17, start=0.69), {}),
                                  1e-3: (0.742, _h(0.5, 0.3), {})})  # fmt: skip
    sel = select_lr(cell)
    assert sel["chosen"] == 1e-3
    assert sel["rule"] == "the only candidate that completed without diverging"
    assert sel["excluded"] == {"1000000000.0": "diverged"}
    assert sel["val_scores"] == {"1000000000.0": 0.742, "0.001": 0.742}  # still shown


@pytest.mark.parametrize(
    "specs, chosen, rule",
    [
        ({1e-2: (0.70, _h(0.5), {}), 1e-3: (0.80, _h(0.6), {})}, 1e-3, "best validation dice"),
        (
            {1e-2: (0.742, _h(0.5, 0.30), {}), 1e-3: (0.742, _h(0.5, 0.20), {})},
            1e-3,
            "tie on validation dice: lower final train loss (no validation loss recorded)",
        ),
        (
            {
                1e-2: (0.742, _h(0.5, 0.20), {"metrics": {"val": {"dice": 0.742, "loss": 0.10}}}),
                1e-3: (0.742, _h(0.5, 0.10), {"metrics": {"val": {"dice": 0.742, "loss": 0.25}}}),
            },
            1e-2,
            "tie on validation dice: lower validation loss",
        ),
        (
            {1e-2: (0.742, [], {}), 1e-3: (0.742, [], {})},
            1e-3,
            "tie on validation dice and loss: smaller lr",
        ),
        (
            {1e-2: (0.742 + 1e-13, _h(0.5, 0.40), {}), 1e-3: (0.742, _h(0.5, 0.20), {})},
            1e-3,
            "tie on validation dice: lower final train loss (no validation loss recorded)",
        ),
    ],
    ids=["best", "train-loss", "val-loss", "smaller-lr", "float-noise-is-a-tie"],
)
def test_tie_breaks(tmp_path, specs, chosen, rule):
    sel = select_lr(_candidates(tmp_path, specs))
    assert (sel["chosen"], sel["rule"], sel["excluded"]) == (chosen, rule, {})


def test_all_diverged_blocks_the_cell(tmp_path):
    cell = _candidates(tmp_path, {1e8: (0.742, _h(1e15), {}), 1e9: (0.742, _h(1e17), {})})
    sel = select_lr(cell)
    assert sel["chosen"] is None and sel["rule"] is None
    assert sel["excluded"] == {"100000000.0": "diverged", "1000000000.0": "diverged"}


def test_sweep_says_which_rule_decided(tmp_path, monkeypatch, capsys):
    VAL[1e9] = 0.80  # ties the good candidate on validation, yet exploded
    try:
        fake = FakeExecute(history={1e9: ([4.8e17, 4.8e17], 0.69)})
        monkeypatch.setattr(runner, "execute", fake)
        sweep = _sweep(tmp_path, candidates=(1e9, 1e-3), seeds=(0, 1))
        lines: list[str] = []
        result = run_sweep(sweep, log=lines.append)
    finally:
        del VAL[1e9]
    assert not result.failed
    summary = result.summary(sweep)
    assert summary["lr_chosen"] == [["siim/random/linear/f1", 1e-3]]
    assert summary["lr_rule"] == [["siim/random/linear/f1", "the only candidate that completed "
                                   "without diverging"]]  # fmt: skip
    assert (
        "lr search siim/random/linear/f1: lr 0.001 chosen by the only candidate that "
        "completed without diverging; left out: 1000000000.0 (diverged)"
    ) in lines
    finals = [read_record(p) for p in sorted((tmp_path / "runs" / "lr").glob("*.json"))]
    assert [r["hparams"]["lr"] for r in finals] == [1e-3, 1e-3]
    assert all(r["lr_selection"]["excluded"] == {"1000000000.0": "diverged"} for r in finals)
    md = write_report(sweep.out, tmp_path / "r.md", figures=False).read_text()
    assert "| decided by |" in md and "0.8000 ✗ diverged" in md
    assert (
        "| lr 0.001 | lr 1e+09 | decided by |" in md
        and "| 0.8000 ✓ | 0.8000 ✗ diverged | the only candidate that completed without diverging |"
        in md
    )
    # planning again changes nothing (the selection is stable, records are not rewritten)
    assert all(s.action == "skip" for s in plan_sweep(sweep).steps)


def test_report_flags_diverged_runs_in_the_appendix(tmp_path):
    cfg = dataclasses.replace(BASE, out=str(tmp_path))
    rec = _rec(
        cfg, metrics={"val": {"dice": 0.7}, "test": {"dice": 0.7}}, history=_h(9.0, start=0.5)
    )
    write_json_atomic(record_path(tmp_path, cfg.run_id), rec)
    md = write_report(tmp_path, tmp_path / "out" / "r.md", figures=False).read_text()
    row = next(ln for ln in md.split("## Appendix", 1)[1].splitlines() if cfg.run_id in ln)
    assert row.rstrip().endswith("| diverged |")


def test_baseline_refuses_mixed_settings(tmp_path):
    for seed, lr in enumerate([1e-3, 1e-2]):
        cfg = dataclasses.replace(BASE, seed=seed, lr=lr, out=str(tmp_path))
        write_json_atomic(record_path(tmp_path, cfg.run_id),
                          _rec(cfg, metrics={"val": {}, "test": {"dice": 0.5}}))  # fmt: skip
    with pytest.raises(ValueError, match=r"siim random linear 100% \(lr: 0.001, 0.01\)"):
        build_baseline(tmp_path)
