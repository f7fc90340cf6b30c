"""`bench compare RUNS --self-test`: each deliberately broken component makes the comparison fail.

A tiny sweep (the built-in synthetic SIIM set, random init, frozen, 4 seeds: the fewest
with which a two-sided exact permutation test can reject at 0.05) is the clean run
set; the self-test re-runs it with the RLE decoded without the transpose and must
report it caught (exit 0), and a mutation that breaks nothing is reported as not
caught. The other mutations are checked on their component here (on this tiny sweep
the per-batch Dice, +0.10, and BatchNorm updating, +0.07, are within the seeds' spread
at 4 seeds: not caught), and end to end on the CI cells by the benchmark workflow
(`bench compare runs/ci --self-test`).
"""

import contextlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.experiments import selftest


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("selftest")
    config = root / "tiny.yaml"
    config.write_text(textwrap.dedent(f"""\
        name: selftest-tiny
        out: {root / "runs"}
        grid:
          task: siim
          init: random
          protocol: frozen
          seed: [0, 1, 2, 3]
        settings:
          arch: resnet18
          image_size: 64
          epochs: 3
          batch_size: 16
          lr: 1.0e-3
          device: cpu
          progress: false
        executor:
          local: {{threads: 2}}
        """))
    assert main(["sweep", str(config)]) == 0
    return root / "runs"


def test_self_test_catches_each_mutation(clean_runs, capsys, tmp_path):
    summary = tmp_path / "selftest.md"
    # two worker processes: each applies the mutation in its own process
    rc = main(["compare", str(clean_runs), "--self-test", "--mutations", "rle-no-transpose",
               "--workers", "2", "--summary", str(summary)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    text = summary.read_text()
    assert "every mutation caught" in text
    for name in ("rle-no-transpose",):
        (row,) = [ln for ln in text.splitlines() if ln.startswith(f"| {name} |")]
        assert row.rstrip().endswith("✅ yes |"), row
    # the mutated runs are kept beside the clean ones, the clean records untouched
    work = clean_runs.parent / "runs-selftest"
    assert len(list((work / "rle-no-transpose" / "runs" / "siim-random-frozen-f1").glob("*.json"))) == 4
    assert len(list(clean_runs.glob("*.json"))) == 4


def test_a_mutation_that_changes_nothing_is_not_caught(clean_runs, monkeypatch):
    """The self-test can fail: a 'mutation' that breaks nothing is reported as not caught."""
    noop = selftest.Mutation("noop", "nothing", lambda c: c.protocol == "frozen",
                             lambda work: contextlib.nullcontext())  # fmt: skip
    monkeypatch.setattr(selftest, "MUTATIONS", (noop,))
    monkeypatch.setattr(selftest, "MUTATION_NAMES", ("noop",))
    # the re-runs use the clean runs' thread count (the sweep's executor set 2), whatever
    # this machine's default: else a different count alone could move the values
    assert selftest.record_threads(clean_runs) == 2
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = selftest.self_test(clean_runs, log=lambda s: None)
    finally:
        torch.set_num_threads(before)
    (m,) = result["mutations"]
    assert m["caught"] is False and not result["ok"]
    assert all(r["verdict"] == "ok" for r in m["rows"])  # identical per-seed values


def test_dice_batch_mutation_scores_per_batch_and_drops_the_last(tmp_path):
    from bench.models import segmentation

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x[:, :1] * 100 - 50  # logits: the (normalized) image itself, thresholded

    images = torch.zeros(5, 4, 4, dtype=torch.uint8)
    images[0, :2] = 255  # image 0 predicts 8 pixels; images 1..4 predict nothing
    masks = torch.zeros(5, 4, 4, dtype=torch.uint8)
    masks[0, :1] = 1  # 4 of them right
    batches = [(images[:2], masks[:2], torch.arange(2)), (images[2:4], masks[2:4], torch.arange(2, 4)),
               (images[4:], masks[4:], torch.arange(4, 5))]  # fmt: skip
    norm = segmentation.Normalize([0.0], [1.0], 1)
    ids = [str(i) for i in range(5)]
    good = segmentation.make_evaluate(norm, torch.device("cpu"), ids)(Identity(), batches)
    with selftest._dice_batch(tmp_path):
        bad = segmentation.make_evaluate(norm, torch.device("cpu"), ids)(Identity(), batches)
    assert good["n_images"] == 5 and good["dice"] == pytest.approx((2 * 4 / 12 + 4) / 5)
    assert bad["dice"] == pytest.approx((2 * 4 / 12 + 1) / 2)  # two batches, the short third dropped


def test_bn_mutation_lets_frozen_statistics_move(tmp_path):
    from bench.models.protocols import ProtocolModel

    def model():
        torch.manual_seed(0)
        inner = torch.nn.Module()
        inner.encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
        return ProtocolModel(inner, "frozen")

    x = torch.randn(4, 1, 8, 8) * 3 + 1
    for broken in (False, True):
        m = model()
        with selftest._bn_frozen(tmp_path) if broken else contextlib.nullcontext():
            m.train()
            m.model.encoder(x)
        moved = not torch.equal(m.model.encoder[1].running_mean, torch.zeros(2))
        assert moved is broken


def test_random_weights_mutation_replaces_the_loaded_weights(tmp_path):
    import torchvision

    from bench.engine import runner
    from bench.engine.config import RunConfig

    torch.manual_seed(0)
    ckpt = tmp_path / "mine.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    cfg = RunConfig(task="siim", init=str(ckpt), arch="resnet18", image_size=64, device="cpu")
    good, _ = runner.load_weights(cfg, synthetic=True)
    with selftest._random_weights(tmp_path):
        broken, _ = runner.load_weights(cfg, synthetic=True)
    convs = [k for k, v in good.state_dict().items() if v.ndim == 4]
    assert len(convs) == 20 and all(not torch.equal(good.state_dict()[k], broken.state_dict()[k]) for k in convs)
    again, _ = runner.load_weights(cfg, synthetic=True)  # restored after the block
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in good.state_dict().items())


def test_boxes_shift_mutation_moves_every_predicted_box(tmp_path):
    from bench.models import detection

    out = {"boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([detection.FOREGROUND_LABEL])}  # fmt: skip
    with selftest._boxes_shift(tmp_path):
        shifted = detection._foreground(out)
    assert torch.equal(shifted["boxes"], out["boxes"] + selftest.BOX_SHIFT)
    assert torch.equal(detection._foreground(out)["boxes"], out["boxes"])


def test_rle_mutation_transposes_and_is_undone(tmp_path):
    from tasks.siim import rle

    mask = np.zeros((4, 4), np.uint8)
    mask[0, 1:3] = 1
    code = rle.rle_encode(mask)
    with selftest._rle_no_transpose(tmp_path):
        assert np.array_equal(rle.rle_decode(code, 4, 4), mask.T)
    assert np.array_equal(rle.rle_decode(code, 4, 4), mask)


def _fake_self_test(monkeypatch, tmp_path, caught_cells, **kw):
    """selftest.self_test on fake clean runs of three cells (seconds 30, 10, 20 a run) whose
    mutated runs 'fail the comparison' in ``caught_cells``: (result, the runs in order)."""
    from bench.engine.config import RunConfig

    cells = {("linear", 0.1): 30.0, ("frozen", 1.0): 10.0, ("finetune", 1.0): 20.0}
    configs = [RunConfig(task="siim", init="supervised", protocol=p, fraction=f, seed=s)
               for (p, f) in cells for s in range(3)]  # fmt: skip
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(selftest, "clean_configs", lambda d: configs)
    monkeypatch.setattr(selftest, "build_baseline", lambda d: {"cells": {}})
    monkeypatch.setattr(selftest, "record_threads", lambda d: None)
    monkeypatch.setattr(selftest, "run_seconds",
                        lambda d: {c.run_id: cells[(c.protocol, c.fraction)] for c in configs})  # fmt: skip
    order = []

    def execute(m, cfg, work, out):
        order.append((cfg.protocol, cfg.seed))
        Path(out).mkdir(parents=True, exist_ok=True)
        return "boom" if (cfg.protocol, cfg.seed) == ("finetune", 2) else None

    def compare(out, baseline, **_):
        protocol = Path(out).name.split("-")[2]
        return {"failed": protocol in caught_cells,
                "rows": [{"cell": protocol, "verdict": "regressed" if protocol in caught_cells else "ok",
                          "delta": -0.1 if protocol in caught_cells else 0.0}]}  # fmt: skip

    monkeypatch.setattr(selftest, "_execute_mutated", execute)
    monkeypatch.setattr(selftest, "compare", compare)
    result = selftest.self_test(runs, mutations=("random-weights",), log=lambda s: None, **kw)
    return result, order


def test_self_test_runs_cells_cheapest_first_and_stops_when_caught(monkeypatch, tmp_path):
    result, order = _fake_self_test(monkeypatch, tmp_path, {"finetune"})
    # frozen (10 s a run) first, then finetune (20 s), caught there: linear (30 s) never runs
    assert order == [("frozen", 0), ("frozen", 1), ("frozen", 2), ("finetune", 0), ("finetune", 1), ("finetune", 2)]
    (m,) = result["mutations"]
    assert m["caught"] and m["caught_on"] == "siim supervised finetune 100%" and result["ok"]
    assert m["runs"] == 6 and m["cells_not_run"] == ["siim supervised linear 10%"]
    assert m["failed_runs"] == ["boom"] and [r["cell"] for r in m["rows"]] == ["frozen", "finetune"]
    text = selftest.format_self_test(result)
    assert "not run (caught before): siim supervised linear 10%" in text and "1 run(s) failed" in text


def test_self_test_all_cells_runs_every_cell_and_an_uncaught_mutation_fails(monkeypatch, tmp_path):
    result, order = _fake_self_test(monkeypatch, tmp_path, {"frozen"}, all_cells=True)
    assert [p for p, _ in order] == ["frozen"] * 3 + ["finetune"] * 3 + ["linear"] * 3
    (m,) = result["mutations"]
    assert m["caught"] and m["cells_not_run"] == [] and m["runs"] == 9
    assert [r["verdict"] for r in m["rows"]] == ["regressed", "ok", "ok"]


def test_self_test_not_caught_on_any_cell(monkeypatch, tmp_path):
    result, order = _fake_self_test(monkeypatch, tmp_path, set())
    assert len(order) == 9
    (m,) = result["mutations"]
    assert m["caught"] is False and not result["ok"] and m["caught_on"] is None


def test_next_run_starts_a_later_cell_only_when_nothing_else_waits():
    from bench.engine.config import RunConfig

    def state(name, protocols):
        m = selftest.Mutation(name, name, lambda c: True, lambda w: contextlib.nullcontext())
        return selftest._State(m, [((p,), [RunConfig(task="siim", init="random", protocol=p, seed=s)
                                           for s in range(2)]) for p in protocols])  # fmt: skip

    a, b = state("a", ["frozen", "finetune"]), state("b", ["linear"])
    picks = []
    for _ in range(5):
        st, cell, cfg = selftest._next_run([a, b])
        st.submitted.add(cfg.run_id)
        picks.append((st.m.name, cell[0]))
    # a's first cell, then b's (non-speculative), only then a's second cell ahead of its turn
    assert picks == [("a", "frozen"), ("a", "frozen"), ("b", "linear"), ("b", "linear"), ("a", "finetune")]
    a.decided = True
    assert selftest._next_run([a, b]) is None


def test_self_test_flags_need_self_test(clean_runs, capsys):
    for extra in (["--workers", "2"], ["--all-cells"], ["--mutations", "bn-frozen"]):
        assert main(["compare", str(clean_runs), "--baseline", "x.json", *extra]) == 2
        assert "goes with --self-test" in capsys.readouterr().err


def test_self_test_needs_finished_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--self-test"]) == 2
    assert "run the sweep first" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "empty"), "--self-test", "--mutations", "banana"]) == 2
    assert json.dumps(selftest.MUTATION_NAMES)


def test_stop_workers_abandons_the_running_calls_at_once():
    import time

    from bench.experiments.executors import local_pool, stop_workers

    start = time.monotonic()
    with local_pool(2, 1) as pool:
        quick, slow = pool.submit(time.sleep, 0.1), pool.submit(time.sleep, 120)
        quick.result()
        procs = list(pool._processes.values())
        stop_workers(pool)
    assert time.monotonic() - start < 60
    assert all(not p.is_alive() for p in procs) and slow.done()
