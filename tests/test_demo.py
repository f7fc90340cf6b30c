"""`bench demo` (the README's first command) end to end, in its --quick size."""

import json

from bench.cli import main


def test_quick_demo_compares_two_real_inits_and_resumes(tmp_path, capsys):
    out, report = tmp_path / "demo", tmp_path / "reports" / "demo.md"
    assert main(["demo", "--quick", "--quiet", "--out", str(out), "--report", str(report)]) == 0
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    # 2 inits x 3 protocols x 2 fractions x 1 seed, all complete, all flagged synthetic
    assert len(records) == 12 and {r["status"] for r in records} == {"complete"}
    assert {r["init"] for r in records} == {"random", "supervised-synth"}
    assert all(r["data"]["synthetic"] for r in records)
    sup = next(r for r in records if r["init"] == "supervised-synth")
    assert sup["weights"]["tensors_loaded"] == sup["weights"]["tensors_expected"] > 0
    assert (out / "supervised-synth-resnet18.pth").exists()
    # the pretraining set is separate from the evaluation set
    pre = {p.stem for p in (out / "data" / "siim-pretrain").rglob("*.dcm")}
    ev = {p.stem for p in (out / "data" / "siim").rglob("*.dcm")}
    assert pre and ev and not pre & ev

    text = report.read_text()
    assert "SYNTHETIC DATA" in text and "supervised-synth" in text
    assert (report.parent / "demo_siim_label_efficiency.png").exists()
    assert (report.parent / "demo_siim_examples.png").exists()
    assert "demo: 12/12 runs complete" in capsys.readouterr().err

    # a second call finds every run complete and trains nothing
    before = {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    assert main(["demo", "--quick", "--quiet", "--out", str(out), "--report", str(report)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")} == before
    assert "12/12 runs complete" in capsys.readouterr().err
