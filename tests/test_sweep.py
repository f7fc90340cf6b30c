"""`bench sweep` / `bench status`: YAML expansion, lr search, resume, and real killed sweeps."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.engine import runner
from bench.engine.config import RunConfig
from bench.engine.records import read_record, record_path, write_json_atomic
from bench.experiments.lock import lock_holder, sweep_lock
from bench.experiments.run import run_sweep
from bench.experiments.sweep import SweepError, load_sweep, parse_sweep

REPO = Path(__file__).resolve().parents[1]


def sweep_file(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


BASE = {
    "name": "t",
    "grid": {"task": ["siim", "rsna"], "protocol": ["linear", "frozen"], "seed": [0, 1, 2]},
    "settings": {"init": "random", "arch": "resnet18", "image_size": 64, "epochs": 1},
}


# ---------------------------------------------------------------- expansion


def test_expansion_counts_order_and_types():
    s = parse_sweep(BASE)
    assert len(s.runs) == 12 and s.out == "runs/t"
    assert [(c.task, c.protocol, c.seed) for c in s.runs[:4]] == [
        ("siim", "linear", 0),
        ("siim", "linear", 1),
        ("siim", "linear", 2),
        ("siim", "frozen", 0),
    ]
    assert [c.run_id for c in parse_sweep(BASE).runs] == [c.run_id for c in s.runs]
    assert all(c.out == "runs/t" and c.progress is False and c.arch == "resnet18" for c in s.runs)

    # YAML reads 1e-3 as a string and 1 as an int: both become the floats `bench run` uses
    d = {
        "name": "t",
        "grid": {"seed": 0},
        "settings": {"task": "siim", "lr": "1e-3", "fraction": 1, "init": "random"},
    }
    (cfg,) = parse_sweep(d).runs
    assert cfg.lr == 0.001 and isinstance(cfg.fraction, float)
    assert cfg.run_id == RunConfig(task="siim", init="random", lr=1e-3, fraction=1.0, out="x").run_id


def test_per_task_overrides_and_init_labels():
    d = BASE | {
        "grid": BASE["grid"] | {"init": ["random", "mine"]},
        "settings": {k: v for k, v in BASE["settings"].items() if k != "init"},
        "per_task": {"rsna": {"protocol": ["linear"], "batch_size": 4, "seed": 7}},
        "inits": {"mine": {"init": "simclr", "checkpoint": "ck/simclr.pth", "prefix": "enc."}},
    }
    s = parse_sweep(d)
    siim = [c for c in s.runs if c.task == "siim"]
    rsna = [c for c in s.runs if c.task == "rsna"]
    assert len(siim) == 2 * 2 * 3 and len(rsna) == 2 * 1 * 1
    assert {c.protocol for c in rsna} == {"linear"} and {c.seed for c in rsna} == {7}
    assert {c.batch_size for c in rsna} == {4} and {c.batch_size for c in siim} == {16}
    mine = [c for c in s.runs if c.init_label == "mine"]
    assert len(mine) == 2 * 3 + 1
    assert all(
        c.init == "simclr" and c.checkpoint == "ck/simclr.pth" and c.prefix == "enc." for c in mine
    )
    assert all(c.checkpoint is None for c in s.runs if c.init_label == "random")


def test_per_protocol_settings_and_lr_candidates():
    d = BASE | {
        "per_protocol": {"linear": {"image_size": 256, "epochs": [5, 9]}},
        "lr_search": {"candidates": {"linear": [1e-2, 1e-3], "frozen": ["1e-3", 1e-4]}},
    }
    s = parse_sweep(d)
    linear = [c for c in s.runs if c.protocol == "linear"]
    frozen = [c for c in s.runs if c.protocol == "frozen"]
    # the list replaces the axis for linear runs: 2 tasks x 2 epochs x 3 seeds
    assert len(linear) == 2 * 2 * 3 and len(frozen) == 2 * 3
    assert {c.image_size for c in linear} == {256} and {c.epochs for c in linear} == {5, 9}
    assert {c.image_size for c in frozen} == {64} and {c.epochs for c in frozen} == {1}
    cells = s.cells()
    assert len(cells) == 2 * 2 + 2  # linear cells per task and epochs, frozen per task
    for cell in cells:
        want = [1e-2, 1e-3] if cell.runs[0].protocol == "linear" else [1e-3, 1e-4]
        assert [c.lr for c in cell.candidates] == want
        assert all(c.epochs == cell.runs[0].epochs for c in cell.candidates)


def test_per_task_per_protocol_sets_one_tasks_protocol():
    """per_task.T.per_protocol.P applies to task T's protocol-P runs only, after per_protocol."""
    d = BASE | {
        "per_protocol": {"frozen": {"epochs": 3}},
        "per_task": {"rsna": {"image_size": 128,
                              "per_protocol": {"frozen": {"init": ["supervised"], "epochs": 5}}}},
    }  # fmt: skip
    s = parse_sweep(d)
    by = {(t, p): [c for c in s.runs if (c.task, c.protocol) == (t, p)] for t in ("siim", "rsna")
          for p in ("linear", "frozen")}  # fmt: skip
    assert len(s.runs) == 12 and all(len(v) == 3 for v in by.values())
    assert {(c.init, c.epochs, c.image_size) for c in by["rsna", "frozen"]} == {("supervised", 5, 128)}
    assert {(c.init, c.epochs, c.image_size) for c in by["siim", "frozen"]} == {("random", 3, 64)}
    assert {(c.init, c.epochs, c.image_size) for c in by["rsna", "linear"]} == {("random", 1, 128)}
    assert {(c.init, c.epochs, c.image_size) for c in by["siim", "linear"]} == {("random", 1, 64)}


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"per_task": {"rsna": {"per_protocol": {"frozn": {}}}}}, "per_task.rsna.per_protocol: unknown key 'frozn'"),
        ({"per_task": {"rsna": {"per_protocol": {"frozen": {"protocol": "linear"}}}}},
         "per_task.rsna.per_protocol.frozen may not set protocol"),
        ({"per_task": {"rsna": {"per_protocol": {"frozen": {"lr": 0.1}}}}, "lr_search": {"candidates": [0.1]}},
         "per_task.rsna.per_protocol.frozen sets lr"),
        ({"per_task": {"rsna": {"per_protocol": {"frozen": {"epoch": 2}}}}},
         "per_task.rsna.per_protocol.frozen: unknown key 'epoch'"),
    ],
)
def test_bad_per_task_per_protocol_entries_name_the_key(change, needle):
    with pytest.raises(SweepError) as e:
        parse_sweep(json.loads(json.dumps(BASE)) | change, source="x.yaml")
    assert needle in str(e.value) and str(e.value).startswith("x.yaml")


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"per_protocol": {"lineer": {}}}, "'lineer'"),
        ({"per_protocol": {"linear": {"protocol": "frozen"}}}, "may not set protocol"),
        ({"per_protocol": {"linear": {"lr": 0.1}}, "lr_search": {"candidates": [0.1]}},
         "per_protocol.linear sets lr"),
        ({"lr_search": {"candidates": {"linear": [0.1]}}}, "no list for protocol frozen"),
        ({"lr_search": {"candidates": {"linear": [0.1], "frozen": []}}}, "candidates.frozen"),
        ({"lr_search": {"candidates": {"linear": [0.1], "frozn": [1]}}}, "'frozn'"),
    ],
)
def test_bad_per_protocol_entries_name_the_key(change, needle):
    with pytest.raises(SweepError) as e:
        parse_sweep(json.loads(json.dumps(BASE)) | change, source="x.yaml")
    assert needle in str(e.value) and str(e.value).startswith("x.yaml")


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"grdi": {}}, "'grdi'"),
        ({"grid": {"protocl": ["linear"]}}, "'protocl'"),
        ({"settings": {"epoch": 3}}, "'epoch'"),
        ({"settings": {"out": "x"}}, "'out'"),
        ({"per_task": {"siim-acr": {}}}, "'siim-acr'"),
        ({"per_task": {"rsna": {"batchsize": 2}}}, "'batchsize'"),
        ({"inits": {"m": {"init": "x", "ckpt": "y"}}}, "'ckpt'"),
        ({"inits": {"m": {"checkpoint": "y"}}}, "inits.m: needs `init`"),
        ({"lr_search": {"candidates": [0.1], "seeds": 0}}, "'seeds'"),
        ({"lr_search": {"candidates": []}}, "non-empty list"),
        ({"lr_search": {"candidates": [0.1]}, "settings": {"lr": 0.1}}, "lr_search chooses it"),
        ({"executor": {"rey": {}}}, "'rey'"),
        ({"executor": {"ray": {"num_cpu": 1}}}, "'num_cpu'"),
        ({"executor": {"slurm": {"partiton": "gpu"}}}, "'partiton'"),
        ({"settings": {"epochs": "three"}}, "epochs = 'three'"),
        ({"settings": {"protocol": "linear"}}, "both a grid axis and a setting"),
        ({"grid": {"task": "siim", "protocol": ["linear", "frozn"]}}, "unknown protocol 'frozn'"),
        ({"grid": {"protocol": ["linear"]}}, "no task: set grid.task or settings.task"),
    ],
)
def test_bad_sweep_files_name_the_key(tmp_path, monkeypatch, capsys, change, needle):
    d = json.loads(json.dumps(BASE)) | change
    with pytest.raises(SweepError, match=None) as e:
        parse_sweep(d, source="x.yaml")
    assert needle in str(e.value) and str(e.value).startswith("x.yaml")
    # the CLI: one line naming the file and key, exit 2, nothing written
    path = sweep_file(tmp_path, d)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(path)]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_shipped_sweep_files_parse():
    ci = load_sweep(REPO / "configs" / "ci.yaml")
    assert {c.task for c in ci.runs} == {"siim", "rsna"} and len({c.seed for c in ci.runs}) >= 3
    assert ci.lr_search is not None and all(c.arch == "resnet18" for c in ci.runs)
    # the committed baseline covers exactly the cells of the CI sweep, each with every seed
    baseline = json.loads((REPO / "baselines" / "ci.json").read_text())
    cells = {f"{c.task}/{c.init_label}/{c.protocol}/{c.fraction:g}" for c in ci.runs}
    assert {k.rsplit("/", 1)[0] for k in baseline["cells"]} == cells
    seeds = sorted({c.seed for c in ci.runs})
    assert all(cell["seeds"] == seeds for cell in baseline["cells"].values())
    example = load_sweep(REPO / "configs" / "example.yaml")
    assert len(example.runs) == 2 * 3 * 3 * 3 * 3 and set(example.executor) == {
        "local",
        "ray",
        "slurm",
    }


# ---------------------------------------------------------------- fake runs

VAL = {1e-2: 0.70, 1e-3: 0.80, 1e-4: 0.20}  # by lr; seed adds a little


class FakeExecute:
    """Writes a record like the runner's, instantly; val/test dice depend on lr and seed."""

    def __init__(self, fail: dict | None = None):
        self.calls: list[str] = []
        self.fail = fail or {}  # run_id or lr -> status

    def __call__(self, cfg: RunConfig) -> dict:
        self.calls.append(cfg.run_id)
        rec = runner.base_record(cfg)
        score = VAL.get(cfg.resolved_lr, 0.5) + cfg.seed / 100
        rec |= {
            "metrics": {"val": {"dice": score}, "test": {"dice": score - 0.1}},
            "timing": {"wall_s": 0.01},
            "status": "complete",
        }
        status = self.fail.get(cfg.run_id) or self.fail.get(cfg.resolved_lr)
        if status == "input":
            raise FileNotFoundError("no such data root: /nope")
        if status:
            rec |= {"status": status, "error": f"fake {status}"}
        write_json_atomic(record_path(cfg.out, cfg.run_id), rec)
        if status:
            raise runner.RunFailed(f"run {cfg.run_id} {status}", rec)
        return rec


@pytest.fixture
def fake(monkeypatch):
    f = FakeExecute()
    monkeypatch.setattr(runner, "execute", f)
    return f


def lr_sweep(tmp_path, **extra) -> dict:
    return {
        "name": "lr",
        "out": str(tmp_path / "runs"),
        "grid": {"protocol": ["linear", "frozen"], "seed": [0, 1, 2]},
        "settings": {"task": "siim", "init": "random", "arch": "resnet18", "image_size": 64},
        "lr_search": {"candidates": [1e-2, 1e-3, 1e-4], "seed": 0},
    } | extra


def test_lr_search_picks_best_val_and_reuses_the_selection_run(tmp_path, fake, capsys):
    path = sweep_file(tmp_path, lr_sweep(tmp_path))
    assert main(["sweep", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    # 2 cells x 3 candidates, then 2 cells x 2 seeds (seed 0 at 1e-3 is the winning candidate)
    assert len(fake.calls) == 6 + 4 and len(set(fake.calls)) == 10
    counts = {k: summary[k] for k in ("runs", "ran", "complete_now", "reused", "skipped", "failed")}
    assert counts == {
        "runs": 12,
        "ran": 10,
        "complete_now": 10,
        "reused": 2,
        "skipped": 0,
        "failed": 0,
    }
    assert [lr for _, lr in summary["lr_chosen"]] == [1e-3, 1e-3]

    finals = sorted((tmp_path / "runs").glob("*.json"))
    cands = sorted((tmp_path / "runs-lr-search").glob("*.json"))
    assert len(finals) == 6 and len(cands) == 6
    for f in finals:
        rec = read_record(f)
        sel = rec["lr_selection"]
        assert rec["status"] == "complete" and rec["hparams"]["lr"] == 1e-3 == sel["chosen"]
        assert sel["candidates"] == [1e-2, 1e-3, 1e-4] and sel["metric"] == "dice"
        assert {float(k): v for k, v in sel["val_scores"].items()} == {
            1e-2: 0.70,
            1e-3: 0.80,
            1e-4: 0.20,
        }
        assert len(sel["selection_run_ids"]) == 3
        assert all(
            (tmp_path / "runs-lr-search" / f"{r}.json").exists() for r in sel["selection_run_ids"]
        )
        if rec["seed"] == 0:
            src = read_record(rec["reused_from"])
            assert src["run_id"] == rec["run_id"] and src["metrics"] == rec["metrics"]
    # candidate records stay out of `out` (the report averages `out`), and are not annotated
    assert all("lr_selection" not in read_record(c) for c in cands)

    # again: nothing runs, nothing is rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in finals + cands}
    assert main(["sweep", str(path)]) == 0
    assert len(fake.calls) == 10
    assert {p: p.stat().st_mtime_ns for p in finals + cands} == mtimes


def test_lr_search_skips_diverged_candidates_and_blocks_when_none_completes(tmp_path, fake, capsys):
    fake.fail = {1e-3: "nan_loss"}
    path = sweep_file(tmp_path, lr_sweep(tmp_path))
    assert main(["sweep", str(path)]) == 0  # a diverged candidate is a result, not a failure
    rec = read_record(next((tmp_path / "runs").glob("*s1-*.json")))
    assert (
        rec["lr_selection"]["chosen"] == 1e-2 and rec["lr_selection"]["val_scores"]["0.001"] is None
    )

    fake.fail = {1e-2: "failed", 1e-3: "nan_loss", 1e-4: "nan_loss"}
    d = lr_sweep(tmp_path, out=str(tmp_path / "b"), grid={"seed": [0, 1]})
    assert main(["sweep", str(sweep_file(tmp_path, d))]) == 1
    captured = capsys.readouterr()
    assert (
        json.loads(captured.out.splitlines()[-1])["failed"] == 3
    )  # 1 failed candidate + 2 blocked runs
    assert "no lr candidate completed" in captured.err
    assert not list((tmp_path / "b").glob("*.json"))


def _write(cfg: RunConfig, status: str, error: str | None = None) -> Path:
    rec = runner.base_record(cfg) | {"status": status, "metrics": {"val": {}, "test": {}}}
    if error:
        rec["error"] = error
    return write_json_atomic(record_path(cfg.out, cfg.run_id), rec)


def test_resume_semantics(tmp_path, fake, capsys):
    d = {
        "name": "r",
        "out": str(tmp_path / "runs"),
        "grid": {"seed": [0, 1, 2, 3, 4, 5]},
        "settings": {"task": "siim", "init": "random", "arch": "resnet18", "image_size": 64},
    }
    path = sweep_file(tmp_path, d)
    cfgs = load_sweep(path).runs
    _write(cfgs[0], "complete")
    _write(cfgs[1], "failed", "RuntimeError: boom")
    _write(cfgs[2], "nan_loss", "loss became nan")
    _write(cfgs[3], "running")  # its process was killed
    _write(cfgs[4], "failed", "interrupted (KeyboardInterrupt)")
    ids = [c.run_id for c in cfgs]

    assert main(["sweep", str(path), "--skip-running"]) == 1  # failed/nan_loss left as they are
    assert fake.calls == [ids[4], ids[5]]
    assert "boom" in capsys.readouterr().err
    assert read_record(record_path(cfgs[3].out, ids[3]))["status"] == "running"

    fake.calls.clear()
    assert main(["sweep", str(path)]) == 1
    assert fake.calls == [ids[3]]

    fake.calls.clear()
    assert main(["sweep", str(path), "--retry-failed"]) == 0
    assert fake.calls == [ids[1], ids[2]]
    assert {read_record(record_path(c.out, c.run_id))["status"] for c in cfgs} == {"complete"}


def test_a_complete_run_whose_checkpoint_changed_runs_again(tmp_path, fake, capsys):
    """A complete record whose weights file (``weights.file``) now has other bytes than its
    ``weights.sha256`` runs again (the checkpoint was pretrained again at the same path);
    same bytes, no file any more, or no file at all (random) are skipped."""
    from bench.experiments.plan import checkpoint_change
    from bench.util import sha256_file

    ckpt = tmp_path / "encoder.pt"
    ckpt.write_bytes(b"first weights")
    d = {"name": "c", "out": str(tmp_path / "runs"), "grid": {"seed": [0, 1, 2]},
         "settings": {"task": "siim", "init": "random", "arch": "resnet18", "image_size": 64}}  # fmt: skip
    path = sweep_file(tmp_path, d)
    cfgs = load_sweep(path).runs
    gone = tmp_path / "gone.pt"
    for cfg, (file, sha) in zip(cfgs, [(ckpt, sha256_file(ckpt)), (gone, "ab" * 32), (None, None)], strict=True):
        rec = read_record(_write(cfg, "complete"))
        rec["weights"] = {"file": None if file is None else str(file), "sha256": sha}
        write_json_atomic(record_path(cfg.out, cfg.run_id), rec)
    assert main(["sweep", str(path)]) == 0
    assert fake.calls == []

    ckpt.write_bytes(b"weights pretrained again")
    rec = read_record(record_path(cfgs[0].out, cfgs[0].run_id))
    assert checkpoint_change(rec) == (f"{ckpt}: sha256 {rec['weights']['sha256'][:12]}... -> "
                                      f"{sha256_file(ckpt)[:12]}...")  # fmt: skip
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "checkpoint changed since the record" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 0
    assert fake.calls == [cfgs[0].run_id]


def test_input_error_is_reported_without_a_record(tmp_path, fake, capsys):
    fake.fail = {0.001: "input"}
    d = {
        "name": "e",
        "out": str(tmp_path / "runs"),
        "grid": {"seed": [0, 1]},
        "settings": {"task": "siim", "init": "random", "protocol": "linear"},
    }
    assert main(["sweep", str(sweep_file(tmp_path, d))]) == 1
    err = capsys.readouterr().err
    assert "error: FileNotFoundError: no such data root" in err
    assert not list((tmp_path / "runs").glob("*.json"))


def test_killed_between_run_and_annotation_is_repaired(tmp_path, fake):
    path = sweep_file(tmp_path, lr_sweep(tmp_path, grid={"seed": [0, 1]}))
    assert main(["sweep", str(path)]) == 0
    final = next((tmp_path / "runs").glob("*s1-*.json"))
    rec = read_record(final)
    del rec["lr_selection"]
    write_json_atomic(final, rec)
    n = len(fake.calls)
    assert main(["sweep", str(path)]) == 0
    assert len(fake.calls) == n and read_record(final)["lr_selection"]["chosen"] == 1e-3


def test_one_sweep_per_folder(tmp_path, fake):
    path = sweep_file(tmp_path, lr_sweep(tmp_path))
    sweep = load_sweep(path)
    with sweep_lock(sweep.out):
        assert lock_holder(sweep.out) == os.getpid()
        with pytest.raises(SweepError, match="another `bench sweep` is writing"):
            run_sweep(sweep)
    assert lock_holder(sweep.out) is None and fake.calls == []


def test_status(tmp_path, fake, capsys):
    d = lr_sweep(tmp_path, grid={"protocol": ["linear"], "seed": [0, 1, 2]})
    path = sweep_file(tmp_path, d)
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "missing 6" in out and out.count("(after lr search)") == 3

    fake.fail = {1e-4: "nan_loss"}
    assert main(["sweep", str(path)]) == 0
    cfgs = load_sweep(path).runs
    final1 = record_path(cfgs[1].out, RunConfig(**{**cfgs[1].to_dict(), "lr": 1e-3}).run_id)
    final1.unlink()
    _write(RunConfig(**{**cfgs[2].to_dict(), "lr": 1e-3}), "running")
    capsys.readouterr()
    assert main(["status", str(tmp_path / "runs"), "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "running 1, complete 3, failed 0, nan_loss 1, missing 1" in out
    for section in ("running (1)", "nan_loss (1)", "complete (3)", "missing (1)"):
        assert section in out
    assert final1.stem in out.split("missing (1)")[1]
    assert "fake nan_loss" in out  # the error column

    assert main(["status", str(tmp_path / "runs")]) == 0  # no --config: records only
    out = capsys.readouterr().out
    assert "running 1, complete 1," in out and "missing" not in out
    assert main(["status", str(tmp_path / "nope")]) == 2


# ---------------------------------------------------------------- real sweeps, killed


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tasks.siim import synth

    root = tmp_path_factory.mktemp("sweepdata") / "siim"
    synth(root, n=40, seed=0, size=64, progress=False)
    return root


N_KILL_RUNS = 6  # seeds of the sweep the kill test interrupts


def _kill_sweep_file(tmp_path: Path, data_root: Path) -> Path:
    text = f"""\
        name: kill
        out: runs
        grid:
          seed: [0, 1, 2, 3, 4, 5]
        settings:
          task: siim
          init: random
          protocol: frozen
          data_root: {data_root}
          arch: resnet18
          image_size: 64
          epochs: 3
          device: cpu
        executor:
          local: {{threads: 1}}
        """
    path = tmp_path / "kill.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _statuses(out: Path) -> dict[str, str]:
    found = {}
    for p in out.glob("*.json"):
        try:
            found[p.stem] = json.loads(p.read_text())["status"]
        except (OSError, ValueError):
            pass  # replaced under our feet; the next poll sees it
    return found


def _sweep_cmd(path: Path) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "sweep", str(path)]


def _live_children(pid: int) -> list[int]:
    """Linux: the pids of pid's child processes (zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_of_a_killed_sweep_stop_and_record_their_run(tmp_path, tiny_data):
    """SIGKILL of the sweep alone: its local workers notice, record their runs as
    interrupted and exit, so a resumed sweep is the only writer of the folder."""
    path = _kill_sweep_file(tmp_path, tiny_data)
    text = path.read_text().replace("local: {threads: 1}", "local: {threads: 1, workers: 2}")
    path.write_text(text.replace("epochs: 3", "epochs: 6"))
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"CXRBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": pythonpath}
    out = tmp_path / "runs"
    proc = subprocess.Popen(_sweep_cmd(path), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and list(_statuses(out).values()).count("running") < 2:
            assert proc.poll() is None, "the sweep ended before both workers ran"
            time.sleep(0.05)
        workers = [c for c in _live_children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
                   and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]  # fmt: skip
        assert len(workers) == 2, (workers, _statuses(out))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30  # a poll (1 s), the interrupt, the record
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "the workers outlived their sweep"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    records = {p.stem: read_record(p) for p in out.glob("*.json")}
    assert "running" not in {r["status"] for r in records.values()}, records
    interrupted = [r for r in records.values() if r["status"] == "failed"]
    assert all(r["error"].startswith("interrupted") for r in interrupted), interrupted
    assert interrupted or len(records) > 2  # the two running runs ended one way or the other

    again = subprocess.run(_sweep_cmd(path), cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    final = {p.stem: read_record(p) for p in out.glob("*.json")}
    assert len(final) == N_KILL_RUNS and {r["status"] for r in final.values()} == {"complete"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_sweep_loses_nothing_and_resumes(tmp_path, tiny_data, sig):
    path = _kill_sweep_file(tmp_path, tiny_data)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"CXRBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": pythonpath}
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        _sweep_cmd(path), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            s = _statuses(out)
            # the first finished run: 4+ runs (2+ rounds of the two workers) are still to go,
            # so the signal lands in the sweep, not after it on a slow, loaded machine
            if "complete" in s.values() and "running" in s.values():
                break
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail(f"no complete + running records in time: {_statuses(out)}")
        assert proc.poll() is None, "the sweep ended before the test could signal it"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), err.decode()[
        -2000:
    ]

    # every record is whole JSON; finished runs are intact; the interrupted one says so
    records = {p.stem: read_record(p) for p in out.glob("*.json")}
    complete = {k for k, r in records.items() if r["status"] == "complete"}
    assert complete and len(complete) < N_KILL_RUNS
    assert len(records) > len(complete)  # the interrupted run left its record
    for r in records.values():
        if r["status"] == "complete":
            assert r["metrics"]["test"]["dice"] is not None and r["history"]
        elif sig == signal.SIGKILL:
            assert r["status"] == "running"
        else:  # Ctrl-C: the runner marks it failed, or it had not yet replaced `running`
            assert r["status"] == "running" or r["error"].startswith("interrupted"), r
    mtimes = {k: (out / f"{k}.json").stat().st_mtime_ns for k in complete}

    again = subprocess.run(
        _sweep_cmd(path), cwd=tmp_path, env=env, capture_output=True, timeout=300
    )
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    summary = json.loads(again.stdout.decode().splitlines()[-1])
    assert summary["ran"] == N_KILL_RUNS - len(complete) and summary["skipped"] == len(complete)
    assert {k: (out / f"{k}.json").stat().st_mtime_ns for k in complete} == mtimes
    final = {p.stem: read_record(p) for p in out.glob("*.json")}
    assert len(final) == N_KILL_RUNS and {r["status"] for r in final.values()} == {"complete"}
    assert all(not math.isnan(r["metrics"]["test"]["dice"]) for r in final.values())
