"""The GPU path, tested on the CPU: device-resident batches, --compile, --runs-per-gpu,
loader workers and pinned memory.

``DeviceBatches`` takes any device, so here it runs on the CPU and is compared batch by
batch with ``make_loader`` (torch.equal on every tensor, two epochs); the runner's choice
of the device path is forced with a monkeypatch to check that a whole run gives the same
numbers either way. GPUs are pretended (monkeypatched ``torch.cuda``) only for planning:
nothing here touches CUDA.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import shutil
import warnings

import numpy as np
import pytest
import torch

from bench.engine import config as config_mod
from bench.engine import runner
from bench.engine.config import RunConfig
from bench.experiments import executors
from bench.models import datasets
from bench.models.datasets import (
    DetectionDataset,
    DeviceBatches,
    DeviceCache,
    SegmentationDataset,
    device_cache_bytes,
    device_cache_plan,
    make_loader,
)
from bench.models.detection import detection_collate
from bench.models.device import compile_model, compile_target, loader_workers

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only ever a name here: no CUDA call is made with it


def _arrays(n=23, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    masks = (rng.random((n, size, size)) > 0.6).astype(np.uint8)
    boxes = [rng.random((int(rng.integers(0, 4)), 4)) * size for _ in range(n)]  # float64, some empty
    return images, masks, boxes


INDICES = [3, 5, 7, 1, 2, 9, 11, 12, 13, 20, 21, 22, 0]  # 13 of 23 cache rows, not sorted


def _assert_same_batch(a, b):
    assert type(a) is type(b) and len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor)
            assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device
            assert torch.equal(x, y)
        else:  # detection targets: a list of {"boxes": float32 (M, 4)}
            assert isinstance(x, list) and isinstance(y, list) and len(x) == len(y)
            for t, u in zip(x, y, strict=True):
                assert set(t) == set(u) == {"boxes"}
                assert t["boxes"].dtype == u["boxes"].dtype == torch.float32
                assert t["boxes"].shape == u["boxes"].shape and torch.equal(t["boxes"], u["boxes"])


def _assert_same_epochs(reference, other, epochs=2):
    assert len(reference) == len(other)
    for _ in range(epochs):
        batches = list(other)
        ref = list(reference)
        assert len(batches) == len(ref) == len(reference)
        for a, b in zip(ref, batches, strict=True):
            _assert_same_batch(a, b)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("batch_size", [1, 4, 13, 16])  # a short last batch, one batch, bigger than the set
def test_device_batches_match_loader_segmentation(train, batch_size):
    images, masks, _ = _arrays()
    ds = SegmentationDataset(images, masks, INDICES)
    cache = DeviceCache.of(ds, CPU)
    loader = make_loader(ds, batch_size, train=train, seed=7)
    device = DeviceBatches(ds, batch_size, train=train, seed=7, cache=cache)
    _assert_same_epochs(loader, device)
    first = next(iter(DeviceBatches(ds, batch_size, train=train, seed=7, cache=cache)))
    assert first[0].dtype == first[1].dtype == torch.uint8 and first[2].dtype == torch.int64
    seen = torch.cat([b[2] for b in device]).tolist()
    assert sorted(seen) == sorted(INDICES)  # every image once, the last batch never dropped
    assert len(device) == -(-len(INDICES) // batch_size)


@pytest.mark.parametrize("train", [True, False])
def test_device_batches_match_loader_detection(train):
    images, _, boxes = _arrays()
    ds = DetectionDataset(images, boxes, INDICES)
    loader = make_loader(ds, 4, train=train, seed=3, collate_fn=detection_collate)
    device = DeviceBatches(ds, 4, train=train, seed=3, cache=DeviceCache.of(ds, CPU))
    _assert_same_epochs(loader, device)
    a, b = next(iter(device)), next(iter(device))
    assert a[1][0]["boxes"] is not b[1][0]["boxes"]  # fresh target tensors per batch, as from the loader


def test_device_batches_other_seed_other_order_and_epochs_differ():
    images, masks, _ = _arrays()
    ds = SegmentationDataset(images, masks, INDICES)
    cache = DeviceCache.of(ds, CPU)
    one = DeviceBatches(ds, 4, train=True, seed=0, cache=cache)
    e1, e2 = ([b[2].tolist() for b in one] for _ in range(2))
    assert e1 != e2  # a new shuffle each epoch
    other = [b[2].tolist() for b in DeviceBatches(ds, 4, train=True, seed=1, cache=cache)]
    assert other != e1


def test_loader_shuffle_does_not_depend_on_workers():
    """Persistent workers: torch draws the base seed only in the first epoch; make_loader
    draws it in the later ones too, so epoch 2 is the one of num_workers=0 (and of the
    device batches)."""
    images, masks, _ = _arrays()
    ds = SegmentationDataset(images, masks, INDICES)
    _assert_same_epochs(make_loader(ds, 4, train=True, seed=5),
                        make_loader(ds, 4, train=True, seed=5, num_workers=1), epochs=3)  # fmt: skip


class _PerItem(SegmentationDataset):
    __getitems__ = None  # torch's fetcher then reads item by item (``dataset[i]``)


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_batched_reads_give_the_items_of_per_item_reads(tmp_path, batch_size):
    """SegmentationDataset.__getitems__ (one indexed read per array and batch) gives the
    loader the batches that reading each item does, from a read-only memmap too."""
    images, masks, _ = _arrays()
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    mm = np.load(tmp_path / "images.npy", mmap_mode="r"), np.load(tmp_path / "masks.npy", mmap_mode="r")
    for arrays in ((images, masks), mm):
        batched, per_item = SegmentationDataset(*arrays, INDICES), _PerItem(*arrays, INDICES)
        items = batched.__getitems__([3, 0, 3])
        assert [j for _, _, j in items] == [INDICES[3], INDICES[0], INDICES[3]]
        for got, want in zip(items, (per_item[3], per_item[0], per_item[3]), strict=True):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "non-writable array" warning from torch
            _assert_same_epochs(make_loader(per_item, batch_size, train=True, seed=2),
                                make_loader(batched, batch_size, train=True, seed=2))  # fmt: skip

    class Decoded:  # an image source that is not an array (bench perf's per-sample DICOM reader)
        def __init__(self, a):
            self.a = a

        def __getitem__(self, j):
            return self.a[int(j)]

    lazy = SegmentationDataset(Decoded(images), masks, INDICES)
    _assert_same_epochs(make_loader(_PerItem(images, masks, INDICES), batch_size, train=True, seed=2),
                        make_loader(lazy, batch_size, train=True, seed=2))  # fmt: skip


def test_device_cache_from_read_only_memmap(tmp_path):
    images, masks, _ = _arrays(n=600, size=4)  # more than one copy chunk
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    mm_images = np.load(tmp_path / "images.npy", mmap_mode="r")
    mm_masks = np.load(tmp_path / "masks.npy", mmap_mode="r")
    ds = SegmentationDataset(mm_images, mm_masks, range(600))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning
        cache = DeviceCache.of(ds, CPU)
    assert torch.equal(cache.images, torch.from_numpy(images)) and torch.equal(cache.masks, torch.from_numpy(masks))
    assert cache.nbytes == device_cache_bytes(ds) == images.nbytes + masks.nbytes
    det = DetectionDataset(mm_images, [np.zeros((0, 4))] * 600, range(600))
    assert device_cache_bytes(det) == images.nbytes  # boxes stay on the host


def test_device_batches_check_their_input():
    images, masks, _ = _arrays(n=5)
    cache = DeviceCache.of(SegmentationDataset(images, masks, range(5)), CPU)
    with pytest.raises(IndexError, match="outside the device cache"):
        DeviceBatches(SegmentationDataset(images, masks, [0, 5]), 2, train=False, seed=0, cache=cache)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(SegmentationDataset(images, masks, [0]), 0, train=False, seed=0, cache=cache)


def test_device_cache_plan(monkeypatch):
    images, masks, _ = _arrays(n=10, size=32)  # 20 KiB
    ds = SegmentationDataset(images, masks, range(10))
    need = images.nbytes + masks.nbytes
    assert device_cache_plan("off", ds, CUDA) == (False, "turned off (--device-cache off)")
    use, why = device_cache_plan("auto", ds, CPU)
    assert not use and "only on CUDA" in why
    with pytest.raises(ValueError, match="--device-cache"):
        device_cache_plan("on", ds, CUDA)
    assert datasets.DEVICE_CACHE_CHOICES == config_mod.DEVICE_CACHE_CHOICES

    asked = []

    def fake_mem(free):
        def mem_get_info(device=None):
            asked.append(device)
            return free, 8 * free
        return mem_get_info

    monkeypatch.setattr(torch.cuda, "mem_get_info", fake_mem(2 * need))  # exactly half of free
    use, why = device_cache_plan("auto", ds, CUDA)
    assert use and "fits in 50%" in why and asked == [CUDA]
    monkeypatch.setattr(torch.cuda, "mem_get_info", fake_mem(2 * need - 2))
    use, why = device_cache_plan("auto", ds, CUDA)
    assert not use and "does not fit" in why

    class Other(torch.utils.data.Dataset):
        def __len__(self):
            return 1

    use, why = device_cache_plan("auto", Other(), CUDA)
    assert not use and "no device batches for a Other" in why


def test_replay_loader_wraps_device_batches():
    from bench.models.reuse import ReplayLoader

    images, masks, _ = _arrays()
    ds = SegmentationDataset(images, masks, INDICES)
    device = DeviceBatches(ds, 4, train=True, seed=0, cache=DeviceCache.of(ds, CPU))

    class Replay:
        selected: list = []

        def select(self, indices):
            self.selected.append(torch.as_tensor(indices).tolist())

    replay = Replay()
    wrapped = ReplayLoader(device, replay)
    assert wrapped.dataset is ds and len(wrapped) == len(device) == 4
    batches = [b[2].tolist() for b in wrapped]
    assert replay.selected == batches
    assert batches == [b[2].tolist() for b in make_loader(ds, 4, train=True, seed=0)]


def test_loader_workers_default():
    assert loader_workers(None, CPU) == 0
    assert 1 <= loader_workers(None, CUDA) <= 4
    assert loader_workers(3, CPU) == 3 and loader_workers(0, CUDA) == 0


def test_new_settings_keep_run_ids_and_are_checked():
    # run ids computed before these settings existed (num_workers then defaulted to 0)
    assert RunConfig(task="siim", init="imagenet").run_id == "siim-imagenet-finetune-f1-s0-afc90aa6"
    kw = dict(task="rsna", init="random", protocol="frozen", arch="resnet18", image_size=64, epochs=1, seed=2)
    base = RunConfig(**kw)
    assert base.run_id == "rsna-random-frozen-f1-s2-b9650878"
    assert base.num_workers is None and base.device_cache == "auto" and base.compile is False
    for change in ({"num_workers": 0}, {"num_workers": 2}, {"device_cache": "off"}, {"compile": True}):
        assert dataclasses.replace(base, **change).run_id == base.run_id, change
    assert not {"num_workers", "device_cache", "compile"} & set(base.identity())
    with pytest.raises(ValueError, match="--device-cache"):
        RunConfig(**kw, device_cache="on")
    with pytest.raises(ValueError, match="--num-workers"):
        RunConfig(**kw, num_workers=-1)


def test_compile_keeps_the_protocol_model():
    from torchvision.models import resnet18

    from bench.models.detection import build_detector
    from bench.models.protocols import ProtocolModel
    from bench.models.segmentation import build_segmenter

    seg = build_segmenter(resnet18(), "resnet18", "finetune", 3)
    keys = list(seg.state_dict())
    assert compile_model(seg, False) == {"enabled": False}
    info = compile_model(seg, True)  # lazy: nothing compiles until the first forward
    assert info["enabled"] and info["target"] == "model"
    assert isinstance(seg, ProtocolModel) and list(seg.state_dict()) == keys
    seg.load_state_dict(seg.state_dict())  # fit's best-weights reload
    det = build_detector(resnet18(), "resnet18", "frozen", 3, [0.5] * 3, [0.25] * 3, image_size=64)
    assert compile_target(det)[0] == "model.backbone"
    assert compile_target(det)[1] is det.model.backbone


# ---------------------------------------------------------------- whole runs (CPU)


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    from tasks.rsna import synth as rsna_synth
    from tasks.siim import synth as siim_synth

    base = tmp_path_factory.mktemp("gpupath")
    siim_synth(base / "siim", n=40, seed=0, size=64, progress=False)
    rsna_synth(base / "rsna", n=40, seed=0, size=64, progress=False)
    return base


def _run(tmp_path, data_roots, task, protocol, out, **kw):
    cfg = RunConfig(task=task, init="random", protocol=protocol, arch="resnet18", image_size=64, epochs=2,
                    batch_size=8, data_root=str(data_roots / task), out=str(tmp_path / out), device="cpu",
                    progress=False, **kw)  # fmt: skip
    return runner.execute(cfg)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("task,protocol", [("siim", "finetune"), ("siim", "linear"), ("rsna", "frozen")])
def test_run_on_device_batches_matches_the_loader(tmp_path, data_roots, monkeypatch, one_thread, task,
                                                   protocol):
    """A whole run (feature reuse included under linear/frozen) gives the same numbers from
    device batches as from the DataLoader; the record says which path ran."""
    ref = _run(tmp_path, data_roots, task, protocol, "loader")
    assert ref["data_path"]["kind"] == "loader" and "only on CUDA" in ref["data_path"]["reason"]
    assert ref["data_path"]["num_workers"] == 0 and ref["data_path"]["pin_memory"] is False
    assert ref["compile"] == {"enabled": False}
    calls = []

    def forced(setting, dataset, device):
        calls.append(setting)
        return True, "forced by the test"

    monkeypatch.setattr(runner, "device_cache_plan", forced)
    dev = _run(tmp_path, data_roots, task, protocol, "device")
    assert calls == ["auto"]  # decided once per run
    assert dev["data_path"]["kind"] == "device" and dev["data_path"]["bytes"] > 0
    assert dev["run_id"] == ref["run_id"]
    assert dev["feature_reuse"]["used"] == ref["feature_reuse"]["used"] == (protocol != "finetune")
    assert dev["metrics"] == ref["metrics"]
    assert [h["train_loss"] for h in dev["history"]] == [h["train_loss"] for h in ref["history"]]
    json.dumps(dev)  # the record holds no tensor


def _inductor_problem() -> str | None:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        compiler = get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any reason inductor cannot build here
        return f"torch inductor has no C++ compiler here ({type(e).__name__}: {e})"
    if not shutil.which(compiler):
        return f"torch inductor's C++ compiler {compiler!r} is not on PATH"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_inductor_problem() is not None, reason=str(_inductor_problem()))
def test_cli_run_compile(tmp_path, data_roots, capsys):
    """`bench run --compile` end to end (linear: with feature reuse, the compiled head
    around the replayed encoder features)."""
    from bench.cli import main

    out = tmp_path / "runs"
    args = ["run", "--task", "siim", "--init", "random", "--protocol", "linear", "--data-root",
            str(data_roots / "siim"), "--out", str(out), "--arch", "resnet18", "--image-size", "64",
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet", "--compile"]  # fmt: skip
    assert main(args) == 0
    (path,) = out.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "complete" and rec["config"]["compile"] is True
    assert rec["compile"] == {"enabled": True, "target": "model", "backend": "inductor"}
    assert rec["run_id"] == json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    plain = RunConfig(task="siim", init="random", protocol="linear", data_root=str(data_roots / "siim"),
                      out=str(out), arch="resnet18", image_size=64, epochs=1, batch_size=8, device="cpu")  # fmt: skip
    assert rec["run_id"] == plain.run_id  # --compile is not part of the run id


# ---------------------------------------------------------------- --runs-per-gpu


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_runs_per_gpu_plans_workers_per_gpu(two_gpus, monkeypatch):
    assert executors.local_workers({"runs_per_gpu": 3}) == 6
    assert executors.local_workers({"workers": 3}) == 3 and executors.local_workers({}) == 1
    assert [executors.worker_device(i, 2) for i in range(6)] == ["cuda:0", "cuda:1"] * 3  # 3 runs per GPU

    seen = {}

    def fake_run_local(jobs, *, workers, threads):
        seen.update(workers=workers, threads=threads)
        return iter(())

    monkeypatch.setattr(executors, "run_local", fake_run_local)
    list(executors.get_executor("local", {"runs_per_gpu": 3, "threads": 2})([]))
    assert seen == {"workers": 6, "threads": 2}

    # each worker process takes a slot and pins itself to its GPU
    slots = queue.Queue()
    for i in range(6):
        slots.put(i)
    before = torch.get_num_threads()
    try:
        devices = []
        for _ in range(6):
            executors._init_worker(slots, 1, executors.visible_gpus())
            devices.append(executors._WORKER["device"])
    finally:
        executors._WORKER.clear()
        torch.set_num_threads(before)
    assert sorted(devices) == ["cuda:0"] * 3 + ["cuda:1"] * 3


def test_runs_per_gpu_errors(no_gpu):
    with pytest.raises(ValueError, match=r"^--runs-per-gpu needs GPUs; use --workers on CPU$"):
        executors.get_executor("local", {"runs_per_gpu": 2})
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="--runs-per-gpu must be an integer >= 1"):
            executors.local_workers({"runs_per_gpu": bad})
    with pytest.raises(ValueError, match="give one of them"):
        executors.local_workers({"runs_per_gpu": 1, "workers": 2})


def _sweep_file(tmp_path, executor=None):
    text = {"name": "rpg", "out": str(tmp_path / "runs"),
            "settings": {"task": "siim", "init": "random", "arch": "resnet18", "image_size": 64, "epochs": 1}}  # fmt: skip
    if executor is not None:
        text["executor"] = executor
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return path


def test_sweep_file_takes_runs_per_gpu(tmp_path):
    from bench.experiments.sweep import SweepError, load_sweep

    sweep = load_sweep(_sweep_file(tmp_path, {"local": {"runs_per_gpu": 2}}))
    assert sweep.executor["local"] == {"runs_per_gpu": 2}
    with pytest.raises(SweepError, match="runs_per_gpu"):  # the error lists it among the allowed keys
        load_sweep(_sweep_file(tmp_path, {"local": {"runs_per_gpus": 2}}))


def test_cli_runs_per_gpu(tmp_path, capsys, monkeypatch, no_gpu):
    from bench.cli import main

    path = _sweep_file(tmp_path, {"local": {"workers": 1}})
    assert main(["sweep", str(path), "--runs-per-gpu", "2"]) == 2
    assert "--runs-per-gpu needs GPUs; use --workers on CPU" in capsys.readouterr().err
    assert main(["sweep", str(path), "--runs-per-gpu", "2", "--executor", "ray"]) == 2
    assert "--runs-per-gpu is for --executor local, not ray" in capsys.readouterr().err
    assert main(["sweep", str(path), "--runs-per-gpu", "2", "--workers", "2"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("*.json"))  # nothing ran

    # with (pretended) GPUs the flag replaces the file's workers: 2 per GPU x 2 GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    seen = {}

    def fake_run_local(jobs, *, workers, threads):
        seen["workers"] = workers
        return iter(())

    monkeypatch.setattr(executors, "run_local", fake_run_local)
    main(["sweep", str(path), "--runs-per-gpu", "2"])
    assert seen == {"workers": 4}
