"""Bad input is one line and exit code 2, before any work (issue 11, sections 4 and 6).

Each case asserts the exit code, the message, and that nothing was prepared, loaded or
written before the error: `resolve_data_root`, `load_weights` and `TaskSpec.prepare`
are replaced by functions that fail the test when a check is expected to stop first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from bench.cli import main
from bench.engine import runner
from bench.experiments.sweep import SweepError, load_sweep
from bench.util import generate_once, writable_dir_problem
from tasks import get_task
from tasks.errors import DataError

RUN = ["run", "--task", "siim", "--protocol", "linear", "--arch", "resnet18", "--image-size", "64",
       "--epochs", "1", "--batch-size", "8", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim") / "data"
    get_task("siim").synth(root, n=24, seed=3, size=64, progress=False)
    return root, None


@pytest.fixture
def no_work(monkeypatch):
    """Any data resolution, weight loading or preparation fails the test."""

    def forbidden(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(runner, "resolve_data_root", forbidden)
    monkeypatch.setattr(runner, "load_weights", forbidden)


def _error(capsys) -> str:
    """The error output, checked to be one line naming the verb."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("bench")]
    assert len(errors) == 1, lines
    assert not errors[0].rstrip().endswith(":"), errors[0]  # never a blank reason
    return errors[0]


def deny_write(monkeypatch, folder: Path) -> None:
    """``folder`` (and everything below it) read-only, also for root, who ignores modes."""
    folder = Path(folder).resolve()
    real = os.access

    def access(path, mode, *a, **k):
        p = Path(path).resolve()
        if mode & os.W_OK and (p == folder or folder in p.parents):
            return False
        return real(path, mode, *a, **k)

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    monkeypatch.setattr(os, "access", access)


@pytest.fixture
def restore_modes():
    made = []
    yield made.append
    for p in made:
        p.chmod(0o755)


# ------------------------------------------------------------------ --out


def test_out_that_is_a_file_or_under_one(tmp_path, capsys, no_work):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([*RUN, "--init", "random", "--out", str(afile)]) == 2
    assert f"--out {afile}: {afile} is a file, not a folder" in _error(capsys)
    assert main([*RUN, "--init", "random", "--out", str(afile / "sub" / "runs")]) == 2
    err = _error(capsys)
    assert "cannot be created" in err and f"{afile} is a file" in err


def test_out_read_only_or_without_permission(tmp_path, capsys, monkeypatch, no_work, restore_modes):
    ro = tmp_path / "ro"
    deny_write(monkeypatch, ro)
    restore_modes(ro)
    assert main([*RUN, "--init", "random", "--out", str(ro)]) == 2
    assert f"--out {ro}: {ro} is not writable: permission denied" in _error(capsys)
    # a folder to be created inside it
    assert main([*RUN, "--init", "random", "--out", str(ro / "runs")]) == 2
    assert f"{ro} is not writable (needed to create {ro / 'runs'})" in _error(capsys)
    assert not (ro / "runs").exists()


def test_writable_dir_problem_leaves_nothing(tmp_path):
    assert writable_dir_problem(tmp_path / "a" / "b") is None
    assert writable_dir_problem(tmp_path) is None
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert "broken symbolic link" in writable_dir_problem(tmp_path / "link" / "runs")


def test_report_and_evaluate_and_synth_outputs(tmp_path, capsys, synth_data):
    afile = tmp_path / "afile"
    afile.write_text("x")
    runs = tmp_path / "runs"
    runs.mkdir()
    assert main(["report", "--runs", str(runs), "--out", str(afile / "r.md")]) == 2
    assert f"{afile} is a file" in _error(capsys)
    assert main(["report", "--runs", str(runs), "--out", str(runs)]) == 2
    assert "is a folder; give the markdown file" in _error(capsys)
    assert main(["evaluate", "--task", "siim", "--data-root", str(synth_data[0]), "--predictions",
                 str(afile), "--json", str(afile / "m.json")]) == 2  # fmt: skip
    assert f"--json {afile / 'm.json'}: " in _error(capsys)
    assert main(["synth", "--task", "siim", "--out", str(afile), "--n", "4", "--size", "64", "--quiet"]) == 2
    assert f"--out {afile}: {afile} is a file, not a folder" in _error(capsys)


def test_sweep_out_checked_before_the_lock(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "out": str(afile), "grid": {"seed": [0]},
                                   "settings": {"task": "siim", "init": "random"}}))  # fmt: skip
    assert main(["sweep", str(cfg)]) == 2
    assert f"out {afile}: {afile} is a file, not a folder" in _error(capsys)


# ------------------------------------------------------------------ device


def test_device_that_is_not_one(tmp_path, capsys, no_work):
    assert main([*RUN, "--init", "random", "--out", str(tmp_path / "r"), "--device", "banana"]) == 2
    assert "--device 'banana' is not a device; use auto, cpu, cuda, cuda:N or mps" in _error(capsys)
    assert main([*RUN, "--init", "random", "--out", str(tmp_path / "r"), "--device", "meta"]) == 2
    assert "device type 'meta' is not supported" in _error(capsys)
    assert not (tmp_path / "r").exists()


def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        assert main([*RUN, "--init", "random", "--out", str(tmp_path / "r"), "--device", device]) == 2
        assert f"--device {device} asked for, but CUDA is not available here" in _error(capsys)


def test_cuda_index_beyond_the_gpus(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([*RUN, "--init", "random", "--out", str(tmp_path / "r"), "--device", "cuda:3"]) == 2
    assert "this machine has 1 visible GPU(s)" in _error(capsys)


# ------------------------------------------------------------------ --lr


@pytest.mark.parametrize("lr", ["0", "-1e-3", "nan", "inf"])
def test_lr_zero_negative_or_nan(tmp_path, capsys, no_work, lr):
    assert main([*RUN, "--init", "random", "--out", str(tmp_path / "r"), f"--lr={lr}"]) == 2
    assert f"--lr must be a positive, finite number, got {float(lr)!r}" in _error(capsys)
    assert not (tmp_path / "r").exists()


def test_weight_decay_negative(tmp_path, capsys, no_work):
    assert main([*RUN, "--init", "random", "--out", str(tmp_path / "r"), "--weight-decay", "-1"]) == 2
    assert "--weight-decay must be a finite number >= 0, got -1.0" in _error(capsys)


@pytest.mark.parametrize("where", ["settings", "grid"])
@pytest.mark.parametrize("lr", [0, -0.001])
def test_lr_in_sweep_yaml(tmp_path, capsys, where, lr):
    data = {"name": "t", "out": str(tmp_path / "runs"), "grid": {"seed": [0]},
            "settings": {"task": "siim", "init": "random"}}  # fmt: skip
    if where == "grid":
        data["grid"]["lr"] = [1e-3, lr]
    else:
        data["settings"]["lr"] = lr
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(SweepError, match=r"--lr must be a positive, finite number, got -?0"):
        load_sweep(cfg)
    assert main(["sweep", str(cfg), "--dry-run"]) == 2
    assert "--lr must be a positive, finite number" in _error(capsys)
    assert not (tmp_path / "runs").exists()


def test_lr_nan_or_negative_lr_search_candidate_in_sweep_yaml(tmp_path, capsys):
    for cands in ("[.nan, 0.001]", "[-0.001, 0.001]", "[0, 0.001]"):
        cfg = tmp_path / "s.yaml"
        cfg.write_text(f"name: t\nout: {tmp_path / 'runs'}\ngrid: {{seed: [0]}}\n"
                       f"settings: {{task: siim, init: random}}\nlr_search: {{candidates: {cands}}}\n")  # fmt: skip
        assert main(["sweep", str(cfg), "--dry-run"]) == 2
        err = _error(capsys)
        assert "lr_search" in err and ("not a valid" in err or "positive" in err), err


def test_lr_checked_by_the_runner_too(tmp_path, no_work):
    """A config changed after it was made (the lr of a sweep's chosen candidate, say)."""
    from bench.engine.config import RunConfig

    cfg = RunConfig(task="siim", init="random", out=str(tmp_path / "r"))
    cfg.lr = float("nan")
    with pytest.raises(ValueError, match="--lr must be a positive, finite number, got nan"):
        runner.execute(cfg)


# ------------------------------------------------------------------ checkpoints


def test_missing_init_path_says_file_not_found(tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*RUN, "--init", "./missing.pth", "--out", str(tmp_path / "r")]) == 2
    err = _error(capsys)
    assert f"--init ./missing.pth: checkpoint file not found: {tmp_path / 'missing.pth'}" in err
    assert "unknown initialization" not in err
    (tmp_path / "folder").mkdir()
    assert main([*RUN, "--init", "./folder", "--out", str(tmp_path / "r")]) == 2
    assert "is a folder, not a checkpoint file" in _error(capsys)
    # a name that is not a path is looked up in the catalogue, also before any work
    assert main([*RUN, "--init", "no-such-init", "--out", str(tmp_path / "r")]) == 2
    err = _error(capsys)
    assert "unknown initialization 'no-such-init'. Known names: random, imagenet" in err


def test_missing_checkpoint_and_split_file(tmp_path, capsys, no_work):
    assert main([*RUN, "--init", "simclr", "--checkpoint", str(tmp_path / "no.pth"),
                 "--out", str(tmp_path / "r")]) == 2  # fmt: skip
    assert f"--checkpoint {tmp_path / 'no.pth'}: file not found" in _error(capsys)
    assert main([*RUN, "--init", "random", "--split-file", str(tmp_path / "split.csv"),
                 "--out", str(tmp_path / "r")]) == 2  # fmt: skip
    assert f"--split-file {tmp_path / 'split.csv'}: file not found" in _error(capsys)


@pytest.mark.parametrize("name, content, reason", [
    ("empty.safetensors", b"", "the file is empty (0 bytes)"),
    ("corrupt.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", "not a valid .safetensors file"),
    ("huge-header.safetensors", b"garbage!", "not a valid .safetensors file"),
    ("empty.pth", b"", "the file is empty (0 bytes)"),
    ("garbage.pth", b"this is not a checkpoint", "not a PyTorch checkpoint"),
])  # fmt: skip
def test_empty_or_corrupt_checkpoint(tmp_path, capsys, synth_data, cache, name, content, reason):
    ckpt = tmp_path / name
    ckpt.write_bytes(content)
    out = tmp_path / "r"
    assert main([*RUN, "--init", str(ckpt), "--data-root", str(synth_data[0]), "--out", str(out)]) == 2
    err = _error(capsys)
    assert f"could not read checkpoint {ckpt}: {reason}" in err
    assert not (cache / "prepared").exists() and not (out.exists() and list(out.iterdir()))


def test_truncated_checkpoint_reason_is_one_short_line(tmp_path):
    import torchvision

    from weights_registry import WeightsError
    from weights_registry.loader import read_checkpoint

    full = tmp_path / "full.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(WeightsError) as e:
        read_checkpoint(cut)
    msg = str(e.value)
    reason = msg.removeprefix(f"could not read checkpoint {cut}: ")
    assert reason != msg and reason.split(":")[0].endswith("Error") and "\n" not in msg
    assert len(msg) < 400 and msg.endswith("(5000 bytes)")


# ------------------------------------------------------------------ $CXRBENCH_CACHE


def test_read_only_cache(tmp_path, capsys, monkeypatch, synth_data, restore_modes):
    ro = tmp_path / "ro-cache"
    monkeypatch.setenv("CXRBENCH_CACHE", str(ro))
    deny_write(monkeypatch, ro)
    restore_modes(ro)

    def forbidden(*a, **k):
        raise AssertionError("weights loaded before the cache was checked")

    monkeypatch.setattr(runner, "load_weights", forbidden)
    out = tmp_path / "r"
    assert main([*RUN, "--init", "random", "--data-root", str(synth_data[0]), "--out", str(out)]) == 2
    err = _error(capsys)
    assert f"the preprocessing cache ($CXRBENCH_CACHE) cannot be written: {ro} is not writable" in err
    assert "set CXRBENCH_CACHE to a writable folder" in err
    assert not out.exists()


def test_read_only_cache_already_built_is_used(tmp_path, capsys, monkeypatch, synth_data, restore_modes):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CXRBENCH_CACHE", str(cache))
    get_task("siim").prepare(synth_data[0], 64, progress=False)
    deny_write(monkeypatch, cache)
    restore_modes(cache)
    out = tmp_path / "r"
    assert main([*RUN, "--init", "random", "--data-root", str(synth_data[0]), "--out", str(out)]) == 0
    assert len(list(out.glob("*.json"))) == 1


def test_cache_build_and_synthetic_generation_name_the_folder(tmp_path, monkeypatch, synth_data, restore_modes):
    ro = tmp_path / "ro"
    monkeypatch.setenv("CXRBENCH_CACHE", str(ro))
    deny_write(monkeypatch, ro)
    restore_modes(ro)
    with pytest.raises(DataError, match=r"cannot write the preprocessing cache of .*: .*ro is not writable "
                                        r"\(needed to create .*prepared/siim\).*set CXRBENCH_CACHE"):  # fmt: skip
        get_task("siim").prepare(synth_data[0], 64, progress=False)
    with pytest.raises(PermissionError, match=r"cannot generate data into .*ro/synthetic/x: .*not writable"):
        generate_once(ro / "synthetic" / "x", lambda tmp: None)


def test_permission_error_is_exit_2(tmp_path, capsys, monkeypatch, restore_modes):
    """The built-in synthetic data generated into a read-only cache (no --data-root)."""
    ro = tmp_path / "ro"
    monkeypatch.setenv("CXRBENCH_CACHE", str(ro))
    deny_write(monkeypatch, ro)
    restore_modes(ro)
    monkeypatch.setattr(runner, "_check_cache", lambda cfg: None)  # past the preflight
    assert main([*RUN, "--init", "random", "--out", str(tmp_path / "r")]) == 2
    assert "cannot generate a synthetic siim dataset" in _error(capsys)


# ------------------------------------------------------------------ bench report / evaluate input


def test_report_runs_folder_missing_or_a_file(tmp_path, capsys):
    assert main(["report", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "r.md")]) == 2
    assert f"--runs {tmp_path / 'nope'}: folder not found" in _error(capsys)
    (tmp_path / "f.json").write_text("{}")
    assert main(["report", "--runs", str(tmp_path / "f.json"), "--out", str(tmp_path / "r.md")]) == 2
    assert "not a folder" in _error(capsys)
    assert not (tmp_path / "r.md").exists()


def _labels(root: Path) -> list[str]:
    return (root / "train-rle.csv").read_text().splitlines()


def test_submission_and_labels_with_a_utf8_bom_are_accepted(data, tmp_path, capsys):
    import json

    import pandas as pd

    labels = pd.read_csv(data / "train-rle.csv")
    labels.columns = [c.strip() for c in labels.columns]
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    labels.to_csv(plain, index=False)
    labels.to_csv(bom, index=False, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbfImageId,")
    results = []
    for sub in (plain, bom):
        assert main(["evaluate", "--task", "siim", "--data-root", str(data), "--predictions", str(sub),
                     "--split", "all"]) == 0  # fmt: skip
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[1]["metrics"]["dice"] == 1.0
    # the label file written the same way (Excel's "CSV UTF-8")
    text = (data / "train-rle.csv").read_text()
    (data / "train-rle.csv").write_text(text, encoding="utf-8-sig")
    assert main(["evaluate", "--task", "siim", "--data-root", str(data), "--predictions", str(bom),
                 "--split", "all"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == results[0]


def test_malformed_rle_outside_the_scored_split_is_an_error(data, tmp_path, capsys):
    from tasks.splits import ground_truth_splits

    gt = get_task("siim").load_ground_truth(data)
    splits = ground_truth_splits(gt, None)
    train_id = sorted(i for i, s in splits.items() if s == "train")[0]
    test_ids = sorted(i for i, s in splits.items() if s == "test")
    sub = tmp_path / "sub.csv"
    rows = [f"{i},-1" for i in test_ids] + [f"{train_id},5 3 2"]  # odd length: not an RLE
    sub.write_text("ImageId,EncodedPixels\n" + "\n".join(rows) + "\n")
    assert main(["evaluate", "--task", "siim", "--data-root", str(data), "--predictions", str(sub),
                 "--split", "test"]) == 2  # fmt: skip
    err = _error(capsys)
    assert f"line {len(rows) + 1}" in err and train_id in err


def test_dicom_without_a_label_row_warns_with_count_and_paths(data, cache):
    lines = _labels(data)
    ids = sorted({ln.split(",")[0] for ln in lines[1:]})
    dropped = ids[:2]
    kept = [lines[0]] + [ln for ln in lines[1:] if ln.split(",")[0] not in dropped]
    (data / "train-rle.csv").write_text("\n".join(kept) + "\n")
    with pytest.warns(UserWarning, match=r"2 DICOM file\(s\) have no row in .*train-rle.csv and are not used") as caught:
        prepared = get_task("siim").prepare(data, 64, progress=False)
    msg = next(str(w.message) for w in caught if "have no row" in str(w.message))
    for image_id in dropped:
        assert f"{image_id}.dcm" in msg and "dicom-images-train/" in msg
    assert prepared.manifest["counts"]["n_dicoms_without_labels"] == 2
    assert not set(dropped) & set(prepared.ids)


def test_generated_data_not_world_blocked(tmp_path):
    """`generate_once` publishes its folder with the umask's mode, not mkdtemp's 0700."""
    old = os.umask(0o022)
    try:
        root = generate_once(tmp_path / "gen", lambda tmp: (tmp / "f").write_text("x"))
    finally:
        os.umask(old)
    assert (root.stat().st_mode & 0o777) == 0o755
    shutil.rmtree(root)


def test_rsna_dicom_without_a_label_row_warns(tmp_path, cache):
    from tasks import rsna

    root = tmp_path / "rsna"
    get_task("rsna").synth(root, n=12, seed=1, size=64, progress=False)
    orphans = sorted((root / rsna.IMAGE_DIR).glob("*.dcm"))[:7]
    lines = (root / rsna.LABELS_CSV).read_text().splitlines()
    kept = [ln for ln in lines if not any(ln.startswith(p.stem + ",") for p in orphans)]
    (root / rsna.LABELS_CSV).write_text("\n".join(kept) + "\n")
    with pytest.warns(UserWarning, match=r"7 DICOM file\(s\) have no row in .*stage_2_train_labels.csv") as caught:
        prepared = get_task("rsna").prepare(root, 64, progress=False)
    msg = next(str(w.message) for w in caught if "have no row" in str(w.message))
    shown = [p for p in orphans if f"{rsna.IMAGE_DIR}/{p.name}" in msg]
    assert len(shown) == 5 and msg.endswith("(+2 more)")
    assert prepared.manifest["counts"]["n_dicoms_without_labels"] == 7


def test_full_disk_on_the_first_record_is_one_line(tmp_path, capsys, monkeypatch, synth_data):
    import errno

    def full(path, obj, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runner, "write_json_atomic", full)
    out = tmp_path / "r"
    assert main([*RUN, "--init", "random", "--data-root", str(synth_data[0]), "--out", str(out)]) == 2
    err = _error(capsys)
    assert f"cannot write the run record {out}" in err and "No space left on device" in err


def test_read_only_cache_for_a_pretraining_corpus(tmp_path, monkeypatch, restore_modes):
    from corpora import decode_images, read_corpus, synth
    from tasks.errors import DataError

    root = tmp_path / "corpus"
    synth(root, n_patients=3, seed=1, size=32, progress=False)
    corpus = read_corpus(root)
    ro = tmp_path / "ro-cache"
    monkeypatch.setenv("CXRBENCH_CACHE", str(ro))
    deny_write(monkeypatch, ro)
    restore_modes(ro)
    with pytest.raises(DataError, match="cannot be written.*set CXRBENCH_CACHE to a writable folder"):
        decode_images(corpus, 32, progress=False)
