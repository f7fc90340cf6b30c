"""Tests for tasks.rsna: the official layout, label checks, box clipping, prepare + cache, splits."""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from bench.cli import main
from bench.util import sha256_file
from tasks import cache as tcache
from tasks import imageio, rsna, siim, splits, synthetic
from tasks.errors import DataError
from tasks.rsna.generator import Opacities

SIZE, N, SEED = 96, 48, 5
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
HEADER = "patientId,x,y,width,height,Target"


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna") / "data"
    summary = rsna.synth(root, n=N, seed=SEED, size=SIZE, progress=False)
    records = {r["patient_id"]: r for r in rsna.synth_records(N, SEED, SIZE)}
    return root, summary, records


def _lines(root, name=rsna.LABELS_CSV):
    return (root / name).read_text().splitlines()


def _write(root, lines, name=rsna.LABELS_CSV):
    (root / name).write_text("\n".join(lines) + "\n")


def _prepare(root, size=SIZE, **kw):
    return rsna.prepare(root, size, progress=False, **kw)


def _xyxy(box):
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _filled(boxes_xywh, size):
    mask = np.zeros((size, size), np.uint8)
    for x, y, w, h in boxes_xywh:
        mask[y : y + h, x : x + w] = 1
    return mask


def _first_line(root, target):
    """(line number, patientId, fields) of the first label row with this Target."""
    for n, line in enumerate(_lines(root)[1:], start=2):
        fields = line.split(",")
        if fields[5] == str(target):
            return n, fields[0], fields
    raise AssertionError(f"no Target={target} row")


# --------------------------------------------------------------------------- synthetic layout


def test_synth_writes_official_layout(synth_data):
    root, summary, records = synth_data
    assert synthetic.is_synthetic(root) and "NOT REAL" in (root / "SYNTHETIC_DATA.txt").read_text()
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [rsna.IMAGE_DIR, rsna.LABELS_CSV, rsna.CLASS_CSV, synthetic.SYNTHETIC_MARKER]
    )
    files = sorted((root / rsna.IMAGE_DIR).iterdir())
    assert len(files) == N and all(f.suffix == ".dcm" and f.is_file() for f in files)
    syntaxes, photometrics, rescaled = set(), set(), 0
    for f in files:
        assert UUID_RE.fullmatch(f.stem)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.PatientID == f.stem and ds.Rows == ds.Columns == SIZE
        assert ds.SOPInstanceUID == records[f.stem]["sop_uid"]
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        photometrics.add(ds.PhotometricInterpretation)
        rescaled += "RescaleSlope" in ds
    assert syntaxes == {ExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit}
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"} and rescaled >= 1

    lines = _lines(root)
    assert lines[0] == HEADER
    rows = [ln.split(",") for ln in lines[1:]]
    assert all(len(r) == 6 for r in rows)
    negatives = {r[0] for r in rows if r[5] == "0"}
    assert all(r[1:] == ["", "", "", "", "0"] for r in rows if r[5] == "0")
    positives = [r for r in rows if r[5] == "1"]
    assert all(re.fullmatch(r"\d+\.0", v) for r in positives for v in r[1:5])
    ids = [r[0] for r in rows]
    two = {i for i in ids if ids.count(i) == 2}
    assert two and not two & negatives and max(ids.count(i) for i in ids) == 2
    assert set(ids) == {f.stem for f in files}
    assert abs(len(negatives) - 2 * N / 3) <= 1 and summary["n_negative"] == len(negatives)
    assert summary["n_two_boxes"] == len(two) and summary["n_boxes"] == len(positives)
    for pid in set(ids):  # CSV rows are the generated boxes, in order
        mine = [[float(v) for v in r[1:5]] for r in positives if r[0] == pid]
        assert mine == [list(map(float, b)) for b in records[pid]["boxes"]]
    st = summary["storage"]
    assert st["rle"] >= 1 and st["jpeg"] >= 1 and st["mono1"] >= 1 and st["rescale"] >= 1

    cls_lines = _lines(root, rsna.CLASS_CSV)
    assert cls_lines[0] == "patientId,class" and len(cls_lines) == len(lines)
    cls = [ln.split(",", 1) for ln in cls_lines[1:]]
    assert [c[0] for c in cls] == ids  # one class row per label row, as on Kaggle
    assert all((c == rsna.OPACITY) == (pid not in negatives) for pid, c in cls)
    assert {c for _, c in cls} == set(rsna.CLASSES)


def test_synth_deterministic_separate_and_learnable():
    a = list(rsna.synth_records(8, 3, 64))
    b = list(rsna.synth_records(8, 3, 64))
    c = list(rsna.synth_records(8, 4, 64))
    assert [r["patient_id"] for r in a] == [r["patient_id"] for r in b]
    assert all(
        np.array_equal(x["image"], y["image"]) and x["boxes"] == y["boxes"] for x, y in zip(a, b)
    )
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    siim_ids = {
        v
        for r in siim.synth_records(8, 3, 32)
        for v in (r["image_id"], r["patient_id"], r["study_uid"], r["series_uid"])
    }
    assert not siim_ids & {v for r in a for v in (r["patient_id"], r["sop_uid"])}

    size = 128
    for r in rsna.synth_records(30, 0, size):
        assert len(r["boxes"]) == len(r["regions"]) <= 2
        for (x, y, w, h), region in zip(r["boxes"], r["regions"]):
            # the box is the tight bounding box of the opacity, 10-30% of the image side
            rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
            assert (x, y, x + w, y + h) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
            assert 0.1 * size <= min(w, h) and max(w, h) <= 0.3 * size
    # the same scene rendered with and without the opacities (same random stream): the
    # difference is zero outside the boxes and large in their cores
    for k, sides in enumerate([[-1], [1], [-1, 1], [1], [-1]]):
        lesion, ghost = Opacities(sides), Opacities(sides)
        with_op, _ = synthetic.render_chest(np.random.default_rng(k), size, [], lesion=lesion)
        without, _ = synthetic.render_chest(
            np.random.default_rng(k),
            size,
            [],
            lesion=lambda rng, img, sc, g=ghost: (g(rng, img, sc), img)[1],
        )
        assert ghost.boxes == lesion.boxes and len(lesion.boxes) == len(sides)
        diff = with_op.astype(int) - without
        inside = np.zeros((size, size), bool)
        for x, y, w, h in lesion.boxes:
            inside[y : y + h, x : x + w] = True
            core = diff[y + h // 4 : y + h - h // 4, x + w // 4 : x + w - w // 4]
            assert core.mean() > 25
        assert (diff[~inside] == 0).all() and (diff >= 0).all()


# --------------------------------------------------------------------------- prepare


def test_prepare_full_resolution_exact(synth_data, cache):
    root, summary, records = synth_data
    prep = _prepare(root)
    assert prep.task == "rsna" and prep.synthetic and prep.image_size == SIZE
    assert prep.ids == sorted(records) and len(prep) == len(prep.boxes) == N
    assert prep.images.shape == prep.masks.shape == (N, SIZE, SIZE)
    labels = rsna.read_labels(root / rsna.LABELS_CSV)
    for k, pid in enumerate(prep.ids):
        rec = records[pid]
        csv_boxes = [_xyxy(row[1:]) for row in labels[pid]]
        assert prep.boxes[k].dtype == np.float32 and prep.boxes[k].shape == (len(csv_boxes), 4)
        np.testing.assert_array_equal(prep.boxes[k], np.array(csv_boxes, np.float32).reshape(-1, 4))
        np.testing.assert_array_equal(prep.masks[k], _filled(rec["boxes"], SIZE))
        if rec["storage"] == "jpeg":
            assert np.abs(prep.images[k].astype(int) - rec["image"]).mean() < 2
        else:
            np.testing.assert_array_equal(prep.images[k], rec["image"])
        assert prep.groups[k] == pid and prep.orig_sizes[k] == (SIZE, SIZE)
        item = prep.manifest["items"][k]
        assert item["class"] == rec["class"] and item["n_boxes"] == len(rec["boxes"])
        assert item["positive"] == bool(rec["boxes"]) == bool(item["target"])
    m = prep.manifest
    c = m["counts"]
    assert (c["n_images"], c["n_positive"], c["n_skipped_corrupt"]) == (N, summary["n_positive"], 0)
    assert (c["n_boxes"], c["n_multi_box"]) == (summary["n_boxes"], summary["n_two_boxes"])
    assert c["n_label_rows"] == summary["n_label_rows"] and c["by_class"] == summary["classes"]
    assert (c["n_boxes_clipped"], c["n_boxes_dropped"]) == (0, 0)
    assert m["boxes_clipped"] == m["boxes_dropped"] == []
    assert m["label_sha256"] == sha256_file(root / rsna.LABELS_CSV)
    assert m["class_sha256"] == sha256_file(root / rsna.CLASS_CSV)
    assert m["box_format"] == "xyxy" and m["has_boxes"]
    assert (prep.cache_dir / tcache.BOXES_FILE).is_file()
    assert m["items"][0]["path"] == f"{rsna.IMAGE_DIR}/{prep.ids[0]}.dcm"


@pytest.mark.parametrize("size", [SIZE // 2, 80])
def test_prepare_downsized_scales_boxes(synth_data, cache, size):
    root, _, records = synth_data
    prep = _prepare(root, size)
    assert prep.images.shape == (N, size, size) and prep.orig_sizes[0] == (SIZE, SIZE)
    for k, pid in enumerate(prep.ids):
        expected = np.array([_xyxy(b) for b in records[pid]["boxes"]], np.float64).reshape(-1, 4)
        np.testing.assert_allclose(prep.boxes[k], expected * size / SIZE, rtol=1e-6)
        if size * 2 == SIZE:  # exact
            np.testing.assert_array_equal(prep.boxes[k], (expected / 2).astype(np.float32))
        np.testing.assert_array_equal(prep.masks[k], rsna.boxes_to_mask(prep.boxes[k], size, size))
        assert bool(prep.masks[k].any()) == bool(records[pid]["boxes"])


def test_boxes_to_mask_rules():
    m = rsna.boxes_to_mask([[1, 2, 4, 3]], 5, 6)
    assert m.shape == (5, 6) and m.sum() == 3 and m[2, 1:4].all()
    np.testing.assert_array_equal(
        rsna.boxes_to_mask([[0, 0, 2, 2], [1, 1, 3, 3]], 4, 4),
        np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.uint8),
    )
    assert rsna.boxes_to_mask([[0.6, 0.6, 2.4, 1.6]], 3, 3).tolist() == [
        [0, 0, 0],
        [0, 1, 0],
        [0, 0, 0],
    ]  # pixel centres 1.5 inside, 0.5 and 2.5 outside
    tiny = rsna.boxes_to_mask([[2.1, 0.2, 2.3, 0.4]], 3, 4)  # no centre inside: centre pixel
    assert tiny.sum() == 1 and tiny[0, 2] == 1
    assert not rsna.boxes_to_mask(np.zeros((0, 4)), 3, 3).any()


def test_second_prepare_reads_only_the_cache(synth_data, cache, monkeypatch):
    root = synth_data[0]
    first = _prepare(root)

    def no_dicom_reads(*a, **k):
        raise AssertionError("DICOM read on a cache hit")

    monkeypatch.setattr(pydicom, "dcmread", no_dicom_reads)
    second = _prepare(root)
    assert second.cache_dir == first.cache_dir and second.ids == first.ids
    assert all(np.array_equal(a, b) for a, b in zip(first.boxes, second.boxes))
    assert np.array_equal(second.masks, first.masks)
    assert len(list((cache / "prepared" / "rsna").iterdir())) == 1


def test_cache_rebuilds_when_labels_change(data, cache):
    base = _prepare(data).cache_dir
    os.utime(data / rsna.LABELS_CSV, (1e9, 1e9))  # touching alone: same content, same cache
    assert _prepare(data).cache_dir == base
    n, pid, fields = _first_line(data, 1)
    lines = _lines(data)
    lines[n - 1] = ",".join([pid, fields[1], fields[2], "5.0", "5.0", "1"])
    _write(data, lines)
    changed = _prepare(data)
    assert changed.cache_dir != base
    k = changed.ids.index(pid)
    x, y = float(fields[1]), float(fields[2])
    assert [x, y, x + 5, y + 5] in changed.boxes[k].tolist()
    cls = _lines(data, rsna.CLASS_CSV)
    neg = next(i for i, ln in enumerate(cls) if ln.endswith(",Normal"))
    cls[neg] = cls[neg].replace(",Normal", ",No Lung Opacity / Not Normal")
    _write(data, cls, rsna.CLASS_CSV)
    again = _prepare(data)
    assert again.cache_dir not in (base, changed.cache_dir)
    (data / rsna.CLASS_CSV).unlink()  # optional file
    without = _prepare(data)
    assert without.cache_dir not in (base, changed.cache_dir, again.cache_dir)
    assert without.manifest["class_file"] is None and "by_class" not in without.manifest["counts"]
    assert {it["class"] for it in without.manifest["items"]} == {None}


def test_damaged_box_file_is_rebuilt(synth_data, cache):
    prep = _prepare(synth_data[0])
    (prep.cache_dir / tcache.BOXES_FILE).write_bytes(b"not a zip")
    assert tcache.load_prepared(prep.cache_dir) is None
    again = _prepare(synth_data[0])
    assert again.cache_dir == prep.cache_dir
    assert all(np.array_equal(a, b) for a, b in zip(prep.boxes, again.boxes))


def test_build_cache_boxes_optional(tmp_path, cache):
    path = imageio.write_dicom(
        tmp_path / "a.dcm", np.full((8, 8), 9, np.uint8), patient_id="p", sop_uid="1.2.3"
    )
    items = [{"id": "a", "path": path}, {"id": "b", "path": path}]

    def load(item, boxes):
        return {"image": imageio.read_dicom(item["path"]), "mask": None, "boxes": boxes[item["id"]]}

    plain = tcache.build_cache(
        cache / "x",
        task="t",
        root=tmp_path,
        items=items,
        image_size=4,
        load_item=lambda it: load(it, {"a": None, "b": None}),
        progress=False,
    )
    assert plain.boxes is None and "has_boxes" not in plain.manifest
    boxes = {"a": tcache.scale_boxes([[0, 0, 8, 4]], (8, 8), 4), "b": None}
    with_boxes = tcache.build_cache(
        cache / "y",
        task="t",
        root=tmp_path,
        items=items,
        image_size=4,
        load_item=lambda it: load(it, boxes),
        has_boxes=True,
        progress=False,
        finalize=lambda m: m.update(extra=len(m["items"])),
    )
    assert with_boxes.boxes[0].tolist() == [[0, 0, 4, 2]] and with_boxes.boxes[1].shape == (0, 4)
    assert with_boxes.manifest["extra"] == 2


# --------------------------------------------------------------------------- splits / ground truth


def test_splits_negatives_everywhere_and_match_ground_truth(synth_data, cache):
    root = synth_data[0]
    prep = _prepare(root)
    sp = splits.split_indices(prep)
    assert sorted(sum(sp.values(), [])) == list(range(N))
    for name, idx in sp.items():
        positive = [bool(len(prep.boxes[i])) for i in idx]
        assert idx and not all(positive), f"{name} has no negatives"
    by_id = {prep.ids[i]: s for s, idx in sp.items() for i in idx}
    assert by_id == splits.assign_splits(prep.ids)  # one image per patient: split by patientId
    subsets = [set(splits.fraction_indices(prep, sp["train"], f)) for f in (0.1, 0.5, 1.0)]
    assert subsets[0] <= subsets[1] <= subsets[2] == set(sp["train"])
    gt = rsna.load_ground_truth(root)
    assert rsna.ground_truth_splits(gt) == by_id
    split_csv = root.parent / "split.csv"
    split_csv.write_text(f"patientId,split\n{prep.ids[0]},test\n{prep.ids[1]},train\n")
    assert rsna.ground_truth_splits(gt, split_csv) == {prep.ids[0]: "test", prep.ids[1]: "train"}


def test_ground_truth_matches_prepare(synth_data, cache):
    root, _, records = synth_data
    prep = _prepare(root)
    gt = rsna.load_ground_truth(root)
    assert sorted(gt) == prep.ids
    for k, pid in enumerate(prep.ids):
        entry = gt[pid]
        assert (entry["height"], entry["width"]) == prep.orig_sizes[k] == (SIZE, SIZE)
        assert entry["patient_id"] == prep.groups[k] and entry["class"] == records[pid]["class"]
        assert entry["boxes"].shape == (len(records[pid]["boxes"]), 4)
        np.testing.assert_array_equal(entry["boxes"], prep.boxes[k])  # same frame at SIZE
        assert entry["path"].endswith(f"{pid}.dcm") and len(entry["lines"]) == len(entry["boxes"])


# --------------------------------------------------------------------------- boxes outside the image


def _assert_box_warnings(caught, n, pid):
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert re.search(
        rf"1 box\(es\) extend outside .* clipped .*line {n}, patientId {pid}", messages[0]
    )
    assert re.search(
        rf"1 box\(es\) lie entirely outside .* dropped .*line {n + 1}, patientId {pid}", messages[1]
    )


def test_boxes_outside_image_clipped_and_reported(data, cache):
    lines = _lines(data)
    n, pid, _ = _first_line(data, 1)
    lines[n - 1] = f"{pid},-8.0,{SIZE - 20}.0,30.0,40.0,1"  # sticks out left and bottom
    lines.insert(n, f"{pid},{SIZE + 5}.0,10.0,20.0,20.0,1")  # entirely right of the image
    _write(data, lines)
    kept = [b for b in rsna.read_labels(data / rsna.LABELS_CSV)[pid] if b[0] not in (n, n + 1)]
    with pytest.warns(UserWarning) as caught:
        prep = _prepare(data)
    _assert_box_warnings(caught, n, pid)
    m = prep.manifest
    assert m["boxes_clipped"] == [
        {
            "patientId": pid,
            "line": n,
            "box_xywh": [-8.0, SIZE - 20.0, 30.0, 40.0],
            "clipped_xywh": [0.0, SIZE - 20.0, 22.0, 20.0],
            "image_hw": [SIZE, SIZE],
        }
    ]
    assert m["boxes_dropped"] == [
        {
            "patientId": pid,
            "line": n + 1,
            "box_xywh": [SIZE + 5.0, 10.0, 20.0, 20.0],
            "image_hw": [SIZE, SIZE],
        }
    ]
    assert (m["counts"]["n_boxes_clipped"], m["counts"]["n_boxes_dropped"]) == (1, 1)
    k = prep.ids.index(pid)
    assert m["items"][k]["n_boxes_clipped"] == m["items"][k]["n_boxes_dropped"] == 1
    expected = [[0.0, SIZE - 20.0, 22.0, SIZE]] + [_xyxy(b[1:]) for b in kept]
    assert prep.boxes[k].tolist() == expected
    assert prep.masks[k][SIZE - 20 :, :22].all()
    with pytest.warns(UserWarning) as caught:
        assert _prepare(data).cache_dir == prep.cache_dir  # reported again from the cache
    _assert_box_warnings(caught, n, pid)
    with pytest.warns(UserWarning) as caught:
        gt = rsna.load_ground_truth(data)
    _assert_box_warnings(caught, n, pid)
    assert gt[pid]["boxes"].tolist() == expected and n + 1 not in gt[pid]["lines"]


def test_non_square_image_clip_and_scale(data, cache):
    pid = sorted(p.stem for p in (data / rsna.IMAGE_DIR).glob("*.dcm"))[0]
    narrow = np.full((SIZE, SIZE // 2), 100, np.uint8)  # Rows SIZE, Columns SIZE / 2
    imageio.write_dicom(
        data / rsna.IMAGE_DIR / f"{pid}.dcm", narrow, patient_id=pid, sop_uid="1.2.3"
    )
    lines = [ln for ln in _lines(data) if not ln.startswith(pid + ",")]
    _write(data, [*lines, f"{pid},40.0,10.0,20.0,30.0,1"])
    cls = [ln for ln in _lines(data, rsna.CLASS_CSV) if not ln.startswith(pid + ",")]
    _write(data, [*cls, f"{pid},Lung Opacity"], rsna.CLASS_CSV)
    with pytest.warns(UserWarning, match=r"x,y,w,h 40,10,20,30 -> 40,10,8,30 in a 96x48 image"):
        prep = _prepare(data)
    k = prep.ids.index(pid)
    assert prep.orig_sizes[k] == (SIZE, SIZE // 2)
    assert prep.boxes[k].tolist() == [[80.0, 10.0, 96.0, 40.0]]  # x * 2, y * 1
    np.testing.assert_array_equal(prep.masks[k], _filled([(80, 10, 16, 30)], SIZE))
    with pytest.warns(UserWarning, match="clipped"):
        gt = rsna.load_ground_truth(data)
    assert gt[pid]["boxes"].tolist() == [[40.0, 10.0, 48.0, 40.0]]
    assert (gt[pid]["height"], gt[pid]["width"]) == (SIZE, SIZE // 2)


# --------------------------------------------------------------------------- bad input


def test_missing_layout_messages(tmp_path, cache):
    with pytest.raises(DataError, match=r"nowhere[\s\S]*stage_2_train_images/<patientId>.dcm"):
        _prepare(tmp_path / "nowhere")
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match=r"image folder missing[\s\S]*stage_2_train_labels.csv"):
        _prepare(tmp_path / "root")
    (tmp_path / "root" / rsna.IMAGE_DIR).mkdir()
    with pytest.raises(
        DataError, match=r"label CSV missing[\s\S]*patientId,x,y,width,height,Target"
    ):
        _prepare(tmp_path / "root")


def test_wrong_columns(data, cache):
    lines = _lines(data)
    lines[0] = "patientId,x,y,w,h,Target"
    _write(data, lines)
    with pytest.raises(
        DataError, match=r"labels.csv: line 1: wrong columns: expected .*'width'.* found \[.*'w'"
    ):
        _prepare(data)


def _mutate(data, target, fields):
    """Rewrite the first Target=target row with fields {index: value}; -> (line, pid)."""
    n, pid, row = _first_line(data, target)
    lines = _lines(data)
    for i, v in fields.items():
        row[i] = v
    lines[n - 1] = ",".join(row)
    _write(data, lines)
    return n, pid


@pytest.mark.parametrize(
    "target, fields, message",
    [
        (1, {1: "abc"}, "x is not a number: 'abc'"),
        (1, {4: "inf"}, "height is not a finite number"),
        (1, {3: "0.0"}, "box width and height must be positive, got width=0"),
        (1, {4: "-12.0"}, "box width and height must be positive, got .*height=-12"),
        (1, {1: "", 2: "", 3: "", 4: ""}, "Target=1 but no box"),
        (1, {2: ""}, r"Target=1 with an incomplete box; empty: \['y'\]"),
        (1, {5: "0"}, "Target=0 but a box is given"),
        (0, {3: "10.0"}, "Target=0 but a box is given"),
        (0, {5: "1"}, "Target=1 but no box"),
        (0, {5: "2"}, "Target must be 0 or 1, got '2'"),
        (0, {5: ""}, "Target must be 0 or 1"),
    ],
)
def test_bad_label_rows(data, cache, target, fields, message):
    n, pid = _mutate(data, target, fields)
    pattern = rf"stage_2_train_labels.csv: line {n}: patientId {re.escape(pid)}: {message}"
    with pytest.raises(DataError, match=pattern):
        _prepare(data)
    with pytest.raises(DataError, match=pattern):  # strict does not change label errors
        _prepare(data, strict=True)
    assert not (cache / "prepared" / "rsna").exists() or not list(
        (cache / "prepared" / "rsna").iterdir()
    )


def test_patient_with_both_targets(data, cache):
    n, pid, _ = _first_line(data, 1)
    lines = _lines(data)
    lines.append(f"{pid},,,,,0")
    _write(data, lines)
    with pytest.raises(
        DataError,
        match=rf"line {len(lines)}: patientId {pid}: Target=0 but line {n} has Target=1 for the same patient",
    ):
        _prepare(data)
    with pytest.raises(DataError, match=f"patientId {pid}"):
        rsna.load_ground_truth(data)


@pytest.mark.parametrize(
    "old, new, message",
    [
        (",Normal", ",Abnormal", r"class 'Abnormal' is not one of"),
        (
            ",Normal",
            ",Lung Opacity",
            r"class 'Lung Opacity' contradicts stage_2_train_labels.csv \(Target=0\)",
        ),
        (
            ",Lung Opacity",
            ",Normal",
            r"class 'Normal' contradicts stage_2_train_labels.csv \(Target=1\)",
        ),
    ],
)
def test_bad_class_info(data, cache, old, new, message):
    lines = _lines(data, rsna.CLASS_CSV)
    i = next(i for i, ln in enumerate(lines) if ln.endswith(old))
    pid = lines[i].split(",")[0]
    lines = [ln.replace(old, new) if ln.startswith(pid + ",") else ln for ln in lines]
    _write(data, lines, rsna.CLASS_CSV)
    with pytest.raises(
        DataError, match=rf"detailed_class_info.csv: line {i + 1}: patientId {pid}: {message}"
    ):
        _prepare(data)


def test_label_and_dicom_mismatches_counted(data, cache):
    ghost = "00000000-0000-4000-8000-000000000000"
    orphan = sorted((data / rsna.IMAGE_DIR).glob("*.dcm"))[0]
    lines = [ln for ln in _lines(data) if not ln.startswith(orphan.stem + ",")]
    _write(data, [*lines, f"{ghost},,,,,0"])
    with pytest.warns(UserWarning, match=r"1 patientId\(s\) have no DICOM"):
        prep = _prepare(data)
    m = prep.manifest
    assert m["counts"]["n_label_ids_without_dicom"] == 1 and m["label_ids_without_dicom"] == [ghost]
    assert m["counts"]["n_dicoms_without_labels"] == 1
    assert m["dicoms_without_labels"] == [orphan.relative_to(data).as_posix()]
    assert len(prep) == len(prep.boxes) == N - 1 and orphan.stem not in prep.ids
    with pytest.raises(DataError, match=ghost):
        _prepare(data, strict=True)


def test_corrupt_dicom_skipped_boxes_stay_aligned(data, cache):
    labels = rsna.read_labels(data / rsna.LABELS_CSV)
    victim = sorted((data / rsna.IMAGE_DIR).glob("*.dcm"))[2]
    blob = victim.read_bytes()
    victim.write_bytes(blob[: len(blob) // 2])
    with pytest.warns(UserWarning, match="corrupt DICOM"):
        prep = _prepare(data)
    assert len(prep) == len(prep.boxes) == N - 1 and victim.stem not in prep.ids
    assert prep.images.shape[0] == prep.masks.shape[0] == N - 1
    for k, pid in enumerate(prep.ids):
        assert prep.boxes[k].tolist() == [_xyxy(b[1:]) for b in labels[pid]]
    with pytest.raises(DataError, match=victim.stem):
        _prepare(data, strict=True)


def test_no_matching_ids(data, cache):
    _write(data, [HEADER, "foo,,,,,0"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of its 1 patientIds"):
            _prepare(data)


def test_is_synthetic(synth_data, data, cache):
    assert synthetic.is_synthetic(synth_data[0]) and _prepare(synth_data[0]).synthetic
    (data / synthetic.SYNTHETIC_MARKER).unlink()
    assert not synthetic.is_synthetic(data)
    prep = _prepare(data)
    assert not prep.synthetic and not prep.manifest["synthetic"]


def test_duplicate_label_rows_count_once(data, cache, tmp_path, capsys):
    """A repeated box row is one ground-truth box (warned about, naming the lines); under
    strict it is an error. Before: a perfect submission scored mAP 0.911."""
    n, pid, fields = _first_line(data, 1)
    neg_n, neg_pid, neg_fields = _first_line(data, 0)
    original = rsna.read_labels(data / rsna.LABELS_CSV)
    lines = _lines(data)
    dup_box = ",".join([pid, *(f"{float(v)}" for v in fields[1:5]), "1"])  # 12 vs 12.0: same box
    _write(data, [*lines, dup_box, ",".join(neg_fields)])
    with pytest.warns(UserWarning) as caught:
        labels = rsna.read_labels(data / rsna.LABELS_CSV)
    message = next(str(w.message) for w in caught if "duplicate" in str(w.message))
    assert (
        f"{data / rsna.LABELS_CSV}: 2 duplicate label row(s): line {len(lines) + 1} repeats "
        f"line {n} (patientId {pid}); line {len(lines) + 2} repeats line {neg_n} "
        f"(patientId {neg_pid}); each is counted once"
    ) in message
    assert labels == original  # the first rows, with their line numbers
    with pytest.raises(DataError, match=rf"2 duplicate label row\(s\): line {len(lines) + 1} "):
        rsna.read_labels(data / rsna.LABELS_CSV, strict=True)

    # the cache and bench evaluate's ground truth hold the box once
    with pytest.warns(UserWarning, match="duplicate label row"):
        prep = _prepare(data)
    k = prep.ids.index(pid)
    assert len(prep.boxes[k]) == len(original[pid])
    with pytest.warns(UserWarning, match="duplicate label row"):
        gt = rsna.load_ground_truth(data)
    assert len(gt[pid]["boxes"]) == len(original[pid])
    # a perfect submission (each true box once) scores 1.0
    rows = ["patientId,PredictionString"]
    for p, boxes in original.items():
        rows.append(p + "," + " ".join(f"1.0 {x:g} {y:g} {w:g} {h:g}" for _, x, y, w, h in boxes))
    sub = tmp_path / "perfect.csv"
    sub.write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="duplicate label row"):
        code = main(["evaluate", "--task", "rsna", "--data-root", str(data), "--split", "all",
                     "--predictions", str(sub)])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["map"] == 1.0
