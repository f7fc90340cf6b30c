"""`bench demo` (the README's first command) end to end, in its --quick size."""

import json

from bench.cli import main


def test_quick_demo_pretrains_every_method_evaluates_and_resumes(tmp_path, capsys, monkeypatch):
    out, report = tmp_path / "demo", tmp_path / "reports" / "demo.md"
    assert main(["demo", "--quick", "--quiet", "--out", str(out), "--report", str(report)]) == 0
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    methods = ["moco", "convirt"]  # the quick demo's two methods
    # (random + 2 pretrained) x 3 protocols x 1 fraction x 1 seed, all complete, all flagged synthetic
    assert len(records) == 9 and {r["status"] for r in records} == {"complete"}
    assert {r["init"] for r in records} == {"random", *methods}
    assert all(r["data"]["synthetic"] for r in records)
    for method in methods:
        pre = json.loads((out / "pretrained" / method / "pretrain.json").read_text())
        assert pre["status"] == "done" and pre["method"] == method
        run = next(r for r in records if r["init"] == method)
        # the downstream run loaded exactly the encoder that pretraining wrote
        assert run["weights"]["sha256"] == pre["sha256"]
        assert run["weights"]["tensors_loaded"] == run["weights"]["tensors_expected"] > 0
    moco = json.loads((out / "pretrained" / "moco" / "pretrain.json").read_text())
    assert moco["settings"]["positives"] == "same-study"

    probe = json.loads((out / "probe.json").read_text())
    assert set(probe["results"]) == {"random", *methods} and probe["labels"]
    for res in probe["results"].values():
        assert all(a is None or 0 <= a <= 1 for a in res["auc"].values())

    text = report.read_text()
    assert "SYNTHETIC DATA" in text and "## Pretraining" in text and "Linear probe" in text
    for name in ("demo_siim_label_efficiency.png", "demo_siim_examples.png", "demo_pretraining_loss.png"):
        assert (report.parent / name).exists(), name
    assert "demo: 9/9 runs complete" in capsys.readouterr().err

    # a second call finds every pretraining and run complete and trains nothing
    watched = [*(out / "records").glob("*.json"), *(out / "pretrained").glob("*/encoder.safetensors")]
    before = {p: p.stat().st_mtime_ns for p in watched}
    assert main(["demo", "--quick", "--quiet", "--out", str(out), "--report", str(report)]) == 0
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert "9/9 runs complete" in capsys.readouterr().err

    # demo.yaml changed for moco: moco is pretrained again and its runs run again (their
    # records were of the old encoder); convirt's and random's are left as they are
    from bench.experiments import demo

    quick = demo.demo_settings(quick=True)
    pre = quick["pretrain"]
    moco_settings = {**pre["method_settings"]["moco"], "queue_size": 32}
    changed = {**quick, "pretrain": {**pre, "method_settings": {**pre["method_settings"], "moco": moco_settings}}}
    monkeypatch.setattr(demo, "demo_settings", lambda quick=False: changed)
    old_sha = json.loads((out / "pretrained" / "moco" / "pretrain.json").read_text())["sha256"]
    assert main(["demo", "--quick", "--quiet", "--out", str(out), "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert "was pretrained with other settings (queue_size: 64 -> 32); pretraining it again" in err
    moco = json.loads((out / "pretrained" / "moco" / "pretrain.json").read_text())
    assert moco["settings"]["queue_size"] == 32 and moco["sha256"] != old_sha
    after = {p: p.stat().st_mtime_ns for p in watched}
    rewritten = {p.relative_to(out).as_posix() for p in watched if after[p] != before[p]}
    moco_records = {p.relative_to(out).as_posix() for p in (out / "records").glob("siim-moco-*.json")}
    assert rewritten == moco_records | {"pretrained/moco/encoder.safetensors"} and len(moco_records) == 3
    assert all(json.loads((out / n).read_text())["weights"]["sha256"] == moco["sha256"]
               for n in moco_records)  # fmt: skip


def test_demo_workers_pretrain_beside_the_runs_and_a_failed_pretraining_skips_only_its_runs(
    tmp_path, monkeypatch, capsys
):
    """With workers, the pretrainings and the runs share the local executor's processes; a
    pretraining that fails (here: batch size 0 for convirt) is reported, its runs are not
    started, every other pretraining and run completes, the report is written, exit 1."""
    from bench.experiments import demo

    quick = demo.demo_settings(quick=True)
    pre = quick["pretrain"]
    s = {**quick, "workers": 2,
         "pretrain": {**pre, "method_settings": {**pre["method_settings"], "convirt": {"batch_size": 0}}}}  # fmt: skip
    monkeypatch.setattr(demo, "demo_settings", lambda quick=False: s)
    out, report = tmp_path / "demo", tmp_path / "demo.md"
    assert main(["demo", "--quick", "--quiet", "--out", str(out), "--report", str(report)]) == 1
    err = capsys.readouterr().err
    assert "demo: pretraining convirt failed: ValueError: --batch-size must be at least 1" in err
    assert "demo: 6/9 runs complete" in err and "pretraining failed for convirt" in err
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert sorted(r["init"] for r in records) == ["moco"] * 3 + ["random"] * 3
    assert {r["status"] for r in records} == {"complete"}
    assert {r["env"]["threads"] for r in records} == {1}  # in the workers, one thread each
    assert json.loads((out / "pretrained" / "moco" / "pretrain.json").read_text())["status"] == "done"
    assert not (out / "pretrained" / "convirt" / "encoder.safetensors").exists()
    assert report.exists() and set(json.loads((out / "probe.json").read_text())["results"]) == {"random", "moco"}
