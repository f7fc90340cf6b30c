"""The cache build in worker processes (issue 12): the same cache as in-process, bad input
handled the same way, warnings and errors from the workers reach the caller, no orphans."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
import time
import warnings

import numpy as np
import pytest

from tasks import cache as tcache
from tasks import imageio, rsna, siim
from tasks.cache import workers
from tasks.errors import DataError, DicomReadError

N, SIZE, PREP = 24, 48, 32  # images, synthetic size, cache size
FILES = ("images.npy", "masks.npy", "boxes.npz")
TIMING = ("created", "build")  # the manifest fields a rebuild may change


@pytest.fixture(scope="module")
def siim_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim-workers") / "data"
    siim.synth(root, n=N, seed=3, size=SIZE, progress=False)
    return root


@pytest.fixture(scope="module")
def rsna_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna-workers") / "data"
    rsna.synth(root, n=N, seed=3, size=SIZE, progress=False)
    return root


def _build(task, root, cache_root, monkeypatch, **kw):
    monkeypatch.setenv("CXRBENCH_CACHE", str(cache_root))
    return task.prepare(root, PREP, progress=False, **kw)


def _same_cache(a, b) -> None:
    for name in FILES:
        fa, fb = a.cache_dir / name, b.cache_dir / name
        assert fa.is_file() == fb.is_file(), name
        if fa.is_file():
            assert fa.read_bytes() == fb.read_bytes(), name
    ma = {k: v for k, v in a.manifest.items() if k not in TIMING}
    mb = {k: v for k, v in b.manifest.items() if k not in TIMING}
    assert ma == mb and a.manifest["counts"] == b.manifest["counts"]
    assert a.ids == b.ids


@pytest.mark.parametrize("task", [siim, rsna], ids=["siim", "rsna"])
def test_two_workers_build_the_same_cache(task, siim_data, rsna_data, tmp_path, monkeypatch):
    root = siim_data if task is siim else rsna_data
    one = _build(task, root, tmp_path / "c1", monkeypatch, workers=1)
    two = _build(task, root, tmp_path / "c2", monkeypatch, workers=2)
    assert one.cache_dir.name == two.cache_dir.name  # the worker count is not in the key
    _same_cache(one, two)
    assert len(two) == N
    for prep, w in ((one, 1), (two, 2)):
        b = prep.manifest["build"]
        assert b["workers"] == w and b["seconds"] > 0 and b["images_per_s"] > 0
    if task is rsna:
        assert all(np.array_equal(x, y) for x, y in zip(one.boxes, two.boxes))
    assert multiprocessing.active_children() == []  # the workers are gone after the build


def test_env_var_sets_the_workers_and_is_checked(siim_data, tmp_path, monkeypatch):
    monkeypatch.setenv(workers.WORKERS_ENV, "2")
    assert _build(siim, siim_data, tmp_path / "c2", monkeypatch).manifest["build"]["workers"] == 2
    monkeypatch.setenv(workers.WORKERS_ENV, " 1 ")
    assert _build(siim, siim_data, tmp_path / "c1", monkeypatch).manifest["build"]["workers"] == 1
    for bad in ("banana", "0", "-2", "1.5"):
        monkeypatch.setenv(workers.WORKERS_ENV, bad)
        with pytest.raises(ValueError) as e:  # also on a cache hit: checked before anything
            _build(siim, siim_data, tmp_path / "c1", monkeypatch)
        msg = str(e.value)
        assert "\n" not in msg and f"CXRBENCH_CACHE_WORKERS={bad!r}" in msg and ">= 1" in msg
    monkeypatch.setenv(workers.WORKERS_ENV, "banana")
    with pytest.raises(ValueError, match="CXRBENCH_CACHE_WORKERS='banana'"):
        _build(rsna, tmp_path / "nowhere", tmp_path / "c3", monkeypatch)
    with pytest.raises(ValueError, match="workers must be a whole number"):
        workers.requested_workers(0)


def test_cli_reports_a_bad_worker_count_in_one_line(siim_data, tmp_path, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setenv("CXRBENCH_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv(workers.WORKERS_ENV, "banana")
    code = main(["run", "--task", "siim", "--data-root", str(siim_data), "--init", "random",
                 "--protocol", "linear", "--device", "cpu", "--image-size", "32",
                 "--out", str(tmp_path / "runs")])  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith("bench run: error: CXRBENCH_CACHE_WORKERS='banana'")


def test_plan():
    assert workers.plan(1, 100) == (1, 100)
    assert workers.plan(2, 100) == (2, 7)  # 8 chunks per worker at least
    assert workers.plan(2, 10_000)[1] == workers.MAX_CHUNK
    assert workers.plan(8, 3) == (3, 1)  # never more workers than items
    assert workers.plan(None, 6)[0] == 1  # a handful of images: in-process


@pytest.mark.parametrize("task", [siim, rsna], ids=["siim", "rsna"])
def test_corrupt_dicom_in_workers_is_skipped_by_name(
    task, siim_data, rsna_data, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    shutil.copytree(siim_data if task is siim else rsna_data, data)
    victim = sorted(data.rglob("*.dcm"))[5]
    blob = victim.read_bytes()
    victim.write_bytes(blob[: len(blob) // 2])
    preps = {}
    for w in (1, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            preps[w] = _build(task, data, tmp_path / f"c{w}", monkeypatch, workers=w)
        corrupt = [c for c in caught if "corrupt DICOM" in str(c.message)]
        assert len(corrupt) == 1 and victim.name in str(corrupt[0].message), (w, corrupt)
        assert corrupt[0].filename.endswith(f"tasks/{task.TASK}/data.py")  # prepare's caller line
    one, two = preps[1], preps[2]
    _same_cache(one, two)
    assert len(two) == N - 1 and victim.stem not in two.ids
    assert two.manifest["counts"]["n_skipped_corrupt"] == 1
    assert two.manifest["skipped_corrupt"] == one.manifest["skipped_corrupt"]
    shutil.rmtree(tmp_path / "c2")
    with pytest.raises(DicomReadError, match=victim.stem):
        _build(task, data, tmp_path / "c2", monkeypatch, workers=2, strict=True)
    assert not list((tmp_path / "c2" / "prepared" / task.TASK).iterdir())


# --------------------------------------------------------------------------- build_cache itself


def _items(tmp_path, n):
    src = tmp_path / "src"
    src.mkdir()
    items = []
    for i in range(n):
        p = src / f"im{i}.dcm"
        img = ((np.arange(24 * 24).reshape(24, 24) * (i + 1)) % 251).astype(np.uint8)
        imageio.write_dicom(p, img, patient_id=f"p{i}", sop_uid=f"1.2.{i + 1}")
        items.append({"id": f"im{i}", "path": p})
    return src, items


def _load(item):
    image, header = imageio.read_dicom_with_header(item["path"])
    return {"image": image, "mask": (image > 100).astype(np.uint8),
            "patient_id": header["patient_id"], "meta": {}}  # fmt: skip


def _toy(src, items, load, key="k", **kw):
    return tcache.build_cache(
        tcache.cache_dir_for("toy", key), task="toy", root=src, items=items, image_size=16,
        load_item=load, has_masks=True, progress=False, **kw,
    )  # fmt: skip


def _warns_per_item(item):
    warnings.warn(f"odd header in {item['id']}", UserWarning, stacklevel=1)
    if item["id"] == "im3":
        warnings.warn("im3 twice", RuntimeWarning, stacklevel=1)
    return _load(item)


def test_worker_warnings_reach_the_caller_in_item_order(tmp_path, cache):
    src, items = _items(tmp_path, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prep = _toy(src, items, _warns_per_item, workers=3)
    assert prep.manifest["build"]["workers"] == 3
    expected = [f"odd header in im{i}" for i in range(4)] + ["im3 twice"]
    expected += [f"odd header in im{i}" for i in range(4, 10)]
    assert [str(w.message) for w in caught] == expected
    assert {w.filename for w in caught} == {__file__}  # where load_item warned
    assert caught[4].category is RuntimeWarning
    with warnings.catch_warnings():  # the parent's filters decide
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="odd header")
        with pytest.raises(RuntimeWarning, match="im3 twice"):
            _toy(src, items, _warns_per_item, key="k2", workers=2)
    assert not (cache / "prepared" / "toy" / "k2").exists()


def test_an_error_in_a_worker_stops_the_build_there(tmp_path, cache):
    src, items = _items(tmp_path, 12)

    def bad_label(item):
        if item["id"] == "im7":
            raise DataError("labels.csv: line 8: im7: not an RLE")
        return _load(item)

    with pytest.raises(DataError, match="line 8: im7") as e:
        _toy(src, items, bad_label, workers=2)
    assert "bad_label" in str(e.value.__cause__)  # the worker's traceback
    assert list((cache / "prepared" / "toy").iterdir()) == []
    assert multiprocessing.active_children() == []


def test_a_dead_worker_is_an_error_not_a_hang(tmp_path, cache):
    src, items = _items(tmp_path, 8)

    def dies(item):
        if item["id"] == "im5":
            os._exit(3)  # as the OOM killer would
        return _load(item)

    with pytest.raises(RuntimeError, match="worker process of the preprocessing cache build died"):
        _toy(src, items, dies, workers=2)
    assert list((cache / "prepared" / "toy").iterdir()) == []
    assert multiprocessing.active_children() == []


def test_ctrl_c_leaves_no_cache_and_no_workers(tmp_path, cache):
    src, items = _items(tmp_path, 16)
    pids, finished = tmp_path / "pids", tmp_path / "finished"
    pids.mkdir()
    finished.mkdir()

    def slow(item):
        (pids / str(os.getpid())).touch()
        time.sleep(5)  # far longer than terminating takes, even on a loaded machine
        (finished / str(os.getpid())).touch()
        return _load(item)

    sent = []

    def ctrl_c_once_both_workers_run():
        deadline = time.monotonic() + 20
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=ctrl_c_once_both_workers_run, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        _toy(src, items, slow, workers=2)
    # workers terminated, not waited for: waiting would take the rest of the 5 s sleep at
    # least, and the items they were loading would finish
    assert time.monotonic() - sent[0] < 4.5
    assert list(finished.iterdir()) == []
    watcher.join()
    assert list((cache / "prepared" / "toy").iterdir()) == []  # no cache, no temporary folder
    assert multiprocessing.active_children() == []
    worker_pids = [int(p.name) for p in pids.iterdir()]
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    for pid in worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
