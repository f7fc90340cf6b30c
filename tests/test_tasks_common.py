"""Tests for the shared data layer: tasks.imageio, tasks.splits (splits, label fractions, split
files), tasks.csvfile, tasks.cache and tasks.synthetic."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from tasks import cache as tcache
from tasks import imageio, splits, synthetic
from tasks.csvfile import read_csv
from tasks.errors import DataError, DicomReadError


def _image(h=48, w=40, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = 40 + 3 * xx + 2 * yy  # smooth part keeps JPEG error small
    return np.clip(smooth + rng.integers(0, 4, (h, w)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- DICOM I/O


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRBENCH_CACHE", str(tmp_path / "x"))
    assert tcache.cache_root() == tmp_path / "x"
    monkeypatch.delenv("CXRBENCH_CACHE")
    assert "cxrbench" in str(tcache.cache_root())


@pytest.mark.parametrize(
    "kwargs, syntax, photometric",
    [
        ({}, ExplicitVRLittleEndian, "MONOCHROME2"),
        ({"compression": "rle"}, RLELossless, "MONOCHROME2"),
        ({"monochrome1": True}, ExplicitVRLittleEndian, "MONOCHROME1"),
        ({"monochrome1": True, "compression": "rle"}, RLELossless, "MONOCHROME1"),
    ],
)
def test_write_read_dicom_exact(tmp_path, kwargs, syntax, photometric):
    pixels = _image()
    path = imageio.write_dicom(
        tmp_path / "a.dcm", pixels, patient_id="p1", sop_uid="1.2.3.4", **kwargs
    )
    header = imageio.read_dicom_header(path)
    assert header == {
        "rows": 48,
        "columns": 40,
        "patient_id": "p1",
        "photometric": photometric,
        "transfer_syntax": syntax,
    }
    out = imageio.read_dicom(path)
    assert out.dtype == np.uint8 and out.shape == (48, 40)
    np.testing.assert_array_equal(out, pixels)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert ds.StudyInstanceUID and ds.SeriesInstanceUID
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert ds.ImageComments == "cxrbench synthetic"
    if kwargs.get("monochrome1"):  # stored values really are inverted
        np.testing.assert_array_equal(ds.pixel_array, 255 - pixels)


def test_write_read_dicom_rescale_exact(tmp_path):
    pixels = (np.maximum(_image(), 4) & 0xFE).astype(np.uint8)  # even, >= intercept
    path = imageio.write_dicom(
        tmp_path / "r.dcm", pixels, patient_id="p", sop_uid="1.2.5", rescale=(2, 4)
    )
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleSlope) == 2 and float(ds.RescaleIntercept) == 4
    np.testing.assert_array_equal(ds.pixel_array, (pixels.astype(int) - 4) // 2)
    np.testing.assert_array_equal(imageio.read_dicom(path), pixels)


def test_write_read_dicom_jpeg_close(tmp_path):
    pixels = _image()
    path = imageio.write_dicom(
        tmp_path / "j.dcm", pixels, patient_id="p", sop_uid="1.2.6", compression="jpeg"
    )
    assert imageio.read_dicom_header(path)["transfer_syntax"] == JPEGBaseline8Bit
    assert pydicom.dcmread(path).PhotometricInterpretation == "MONOCHROME2"
    err = np.abs(imageio.read_dicom(path).astype(int) - pixels)
    assert err.mean() < 1.5 and err.max() <= 12


def test_jpeg_baseline_is_decoded_by_pillow_first_then_by_pydicoms_order(tmp_path, monkeypatch):
    import io

    import pydicom.encaps
    import pydicom.pixels
    from PIL import Image

    pixels = _image(64, 64, seed=3)
    path = imageio.write_dicom(tmp_path / "j.dcm", pixels, patient_id="p", sop_uid="1.2.7",
                               compression="jpeg")  # fmt: skip
    ds = pydicom.dcmread(path)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    pillow = np.asarray(Image.open(io.BytesIO(frame)))
    assert imageio.PREFERRED_DECODER[JPEGBaseline8Bit] == "pillow"
    np.testing.assert_array_equal(imageio.read_dicom(path), pillow)  # Pillow's own decode

    plugins = []
    real = pydicom.pixels.pixel_array

    def failing_pillow(src, **kw):
        plugins.append(kw.get("decoding_plugin"))
        if kw.get("decoding_plugin") == "pillow":
            raise RuntimeError("pillow cannot decode this one")
        return real(src, **kw)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", failing_pillow)
    fallback = imageio.read_dicom(path)  # pydicom's order (pylibjpeg first) takes over
    assert plugins[0] == "pillow"
    assert fallback.shape == pixels.shape and np.abs(fallback.astype(int) - pillow).max() <= 2
    monkeypatch.setattr(imageio, "PREFERRED_DECODER", {})
    np.testing.assert_array_equal(imageio.read_dicom(path), fallback)


def _raw_dicom(path: Path, arr: np.ndarray, bits_stored: int, photometric="MONOCHROME2", **extra):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.9"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, "1.2.9"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = arr.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_read_dicom_12bit_minmax_and_monochrome1(tmp_path):
    arr = np.array([[0, 1000], [2000, 4095]], np.uint16)
    out = imageio.read_dicom(_raw_dicom(tmp_path / "a.dcm", arr, 12))
    np.testing.assert_array_equal(out, np.rint(arr / 4095 * 255).astype(np.uint8))
    # MONOCHROME1 inverts with (2**BitsStored - 1) - raw before scaling
    out1 = imageio.read_dicom(_raw_dicom(tmp_path / "b.dcm", arr, 12, "MONOCHROME1"))
    np.testing.assert_array_equal(out1, np.rint((4095 - arr) / 4095 * 255).astype(np.uint8))
    # in-range values after the modality LUT are kept, not stretched
    small = np.array([[10, 20], [30, 40]], np.uint16)
    out2 = imageio.read_dicom(
        _raw_dicom(tmp_path / "c.dcm", small, 12, RescaleSlope=2, RescaleIntercept=-5)
    )
    np.testing.assert_array_equal(out2, small * 2 - 5)


def test_to_uint8_integer_and_float_values():
    to8 = imageio._to_uint8
    ints = np.array([[0, 17], [200, 255]])
    for dtype in (np.uint8, np.uint16, np.int16, np.int64, bool):
        values = ints.astype(dtype)
        out = to8(values)
        assert out.dtype == np.uint8 and out is not values
        np.testing.assert_array_equal(out, values.astype(np.uint8))
    np.testing.assert_array_equal(to8(np.array([0.4, 0.6, 254.5, 255.0])), [0, 1, 254, 255])
    wide = np.array([-100, 0, 1000], np.int16)  # out of [0, 255]: min-max scaled
    np.testing.assert_array_equal(to8(wide), np.rint((wide + 100) * (255 / 1100)).astype(np.uint8))
    assert not to8(np.full((2, 2), 4000, np.uint16)).any()


def test_read_dicom_errors_name_the_file(tmp_path):
    good = imageio.write_dicom(tmp_path / "g.dcm", _image(), patient_id="p", sop_uid="1.2.7")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.dcm"
    trunc.write_bytes(data[: len(data) - 500])
    not_dicom = tmp_path / "text.dcm"
    not_dicom.write_text("hello, not a DICOM")
    header_only = tmp_path / "nopix.dcm"
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(header_only)
    for path in (trunc, not_dicom, header_only, tmp_path / "missing.dcm"):
        with pytest.raises(DataError, match=str(path)) as info:
            imageio.read_dicom(path)
        assert isinstance(info.value, DicomReadError)
    with pytest.raises(DataError, match="no pixel data"):
        imageio.read_dicom(header_only)
    with pytest.raises(DataError, match="text.dcm"):
        imageio.read_dicom_header(not_dicom)


# --------------------------------------------------------------------------- splits


def test_assign_splits_proportions_and_determinism():
    ids = [f"img{i:05d}" for i in range(2000)]
    a = splits.assign_splits(ids)
    counts = {s: sum(v == s for v in a.values()) for s in splits.SPLITS}
    assert abs(counts["train"] / 2000 - 0.70) < 0.04
    assert abs(counts["val"] / 2000 - 0.15) < 0.03
    assert abs(counts["test"] / 2000 - 0.15) < 0.03
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert splits.assign_splits(shuffled) == a
    # a subset keeps each id's split (hash of the id alone)
    sub = splits.assign_splits(ids[:500])
    assert all(sub[i] == a[i] for i in sub)
    assert splits.assign_splits(ids, salt="other") != a


def test_assign_splits_pinned():
    a = splits.assign_splits([f"img{i:05d}" for i in range(2000)])
    assert [a[f"img{i:05d}"] for i in range(10)] == PINNED_SPLITS


# sha256("cxrbench-split-v1" + id): must never change, or published splits would move
PINNED_SPLITS = [
    "train",
    "test",
    "train",
    "train",
    "train",
    "val",
    "train",
    "train",
    "train",
    "train",
]


def test_assign_splits_groups_by_patient():
    ids = [f"img{i}" for i in range(600)]
    groups = {i: f"pat{int(i[3:]) // 3}" for i in ids}  # 3 images per patient
    groups["img0"] = ""  # missing patient -> the image is its own group
    a = splits.assign_splits(ids, groups)
    by_patient = {}
    for i in ids[1:]:
        by_patient.setdefault(groups[i], set()).add(a[i])
    assert all(len(s) == 1 for s in by_patient.values())
    assert a["img0"] == splits.assign_splits(["img0"])["img0"]


def test_assign_splits_nonempty_on_tiny_sets():
    for n in range(3, 12):
        for salt in ("a", "b", "c", "d"):
            a = splits.assign_splits([f"x{i}" for i in range(n)], salt=salt)
            assert set(a.values()) == {"train", "val", "test"}, (n, salt)
    # zero ratio: that split stays empty
    a = splits.assign_splits([f"x{i}" for i in range(50)], ratios=(0.8, 0.2, 0))
    assert set(a.values()) == {"train", "val"}
    with pytest.raises(ValueError):
        splits.assign_splits(["a"], ratios=(1, -1, 1))


def test_fraction_subset_nested():
    train = [f"t{i}" for i in range(1000)]
    f1, f10, f100 = (splits.fraction_subset(train, f) for f in (0.01, 0.1, 1.0))
    assert (len(f1), len(f10), len(f100)) == (10, 100, 1000)
    assert set(f1) < set(f10) < set(f100) == set(train)
    assert f10[:10] == f1
    assert splits.fraction_subset(list(reversed(train)), 0.1) == f10
    assert len(splits.fraction_subset(train[:100], 0.07)) == 7  # no float ceil surprise
    assert len(splits.fraction_subset(train[:50], 0.001)) == 1
    assert splits.fraction_subset([], 0.5) == []
    for bad in (0, -0.1, 1.5, "x"):
        with pytest.raises(ValueError, match="fraction"):
            splits.fraction_subset(train, bad)


# --------------------------------------------------------------------------- split files


def test_load_split_file_csv(tmp_path):
    f = tmp_path / "split.csv"
    f.write_text("ImageId,split\na,train\nb,valid\nc,Validation\nd,test\nd,test\n")
    assert splits.load_split_file(f, ["a", "b", "c", "d", "e"]) == {
        "a": "train",
        "b": "val",
        "c": "val",
        "d": "test",
    }
    f.write_text("dicom_id,split\na,train\nb,val\nzz,test\n")
    with pytest.raises(DataError, match=r"1 id\(s\).*zz"):
        splits.load_split_file(f, ["a", "b"])
    f.write_text("image_id,split\na,train\na,test\n")
    with pytest.raises(DataError, match="two splits"):
        splits.load_split_file(f, ["a"])
    f.write_text("name,split\na,train\n")
    with pytest.raises(DataError, match="no id column"):
        splits.load_split_file(f, ["a"])
    f.write_text("id,split\na,holdout\n")
    with pytest.raises(DataError, match="line 2"):
        splits.load_split_file(f, ["a"])


def test_load_split_file_directory(tmp_path):
    d = tmp_path / "lovt"
    d.mkdir()
    (d / "train.csv").write_text("ImageId,EncodedPixels\na,-1\nb, 1 2\nb, 5 2\n")
    (d / "validation.csv").write_text("ImageId,EncodedPixels\nc,-1\n")
    (d / "test.csv").write_text("ImageId,EncodedPixels\nd,-1\n")
    assert splits.load_split_file(d, list("abcde")) == {
        "a": "train",
        "b": "train",
        "c": "val",
        "d": "test",
    }
    (d / "test.csv").write_text("ImageId\nd\na\n")
    with pytest.raises(DataError, match="also listed"):
        splits.load_split_file(d, list("abcd"))
    unknown = [f"u{i}" for i in range(15)]
    (d / "test.csv").write_text("ImageId\n" + "\n".join(unknown) + "\n")
    with pytest.raises(DataError, match=r"15 id\(s\)") as info:
        splits.load_split_file(d, list("abcd"))
    assert "u0" in str(info.value) and "u9" not in str(info.value)  # at most 10 listed
    (d / "test.csv").unlink()
    with pytest.raises(DataError, match="test.csv"):
        splits.load_split_file(d, list("abcd"))
    with pytest.raises(DataError, match="not found"):
        splits.load_split_file(tmp_path / "nope.csv", ["a"])


# --------------------------------------------------------------------------- CSV reader


def test_read_csv_header_lines_and_blank_rows(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_bytes("\ufeffImageId, EncodedPixels\na, -1\n\n , \nb, 1 2\n".encode())
    table = read_csv(f, ("ImageId", "EncodedPixels"))
    assert table.header == ["ImageId", "EncodedPixels"]
    assert table.rows == [(2, {"ImageId": "a", "EncodedPixels": " -1"}),
                          (5, {"ImageId": "b", "EncodedPixels": " 1 2"})]  # fmt: skip
    assert table.column("ImageId") == ["a", "b"]
    missing = r"labels.csv: line 1: wrong columns: .*'x'\] \(header 'ImageId,x'\).*missing \['x'\]"
    with pytest.raises(DataError, match=missing):
        read_csv(f, ("ImageId", "x"), expected_header="ImageId,x")
    with pytest.raises(DataError, match="label CSV not found"):
        read_csv(tmp_path / "nope.csv", what="label CSV")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: empty CSV"):
        read_csv(tmp_path / "empty.csv", ("ImageId",))


def test_read_csv_short_rows(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("id,value,note\na,1,x\nb,2\nc\n")
    with pytest.raises(DataError, match=r"t.csv: line 3: expected 3 fields, got 2"):
        read_csv(f, ("id", "value"))
    with pytest.raises(DataError, match=r"t.csv: line 3: id b: expected 3 fields, got 2"):
        read_csv(f, ("id", "value"), id_column="id")
    padded = read_csv(f, ("id", "value"), short_rows="pad")
    assert [r for _, r in padded.rows][1:] == [{"id": "b", "value": "2", "note": ""},
                                               {"id": "c", "value": "", "note": ""}]  # fmt: skip
    # pad_optional: "note" may be left out, the required "value" may not
    with pytest.raises(DataError, match=r"line 4: id c: expected 3 fields, got 1"):
        read_csv(f, ("id", "value"), short_rows="pad_optional", id_column="id")
    f.write_text("id,value,note\na,1,x\nb,2\n")
    assert len(read_csv(f, ("id", "value"), short_rows="pad_optional").rows) == 2
    with pytest.raises(ValueError, match="short_rows"):
        read_csv(f, short_rows="drop")


# --------------------------------------------------------------------------- cache


def _items(tmp_path, n=6):
    src = tmp_path / "data"
    src.mkdir(exist_ok=True)
    items = []
    for i in range(n):
        p = src / f"im{i}.dcm"
        imageio.write_dicom(p, _image(32, 32, i), patient_id=f"p{i // 2}", sop_uid=f"1.2.{i + 1}")
        items.append({"id": f"im{i}", "path": p})
    return src, items


def _load(item):
    image, header = imageio.read_dicom_with_header(item["path"])
    return {
        "image": image,
        "mask": (image > 60).astype(np.uint8),
        "patient_id": header["patient_id"],
        "meta": {"positive": True},
    }


def _build(src, items, size=16, key="k1", **kw):
    return tcache.build_cache(
        tcache.cache_dir_for("toy", key), task="toy", root=src, items=items, image_size=size,
        load_item=_load, has_masks=True, progress=False, **kw,
    )  # fmt: skip


def test_build_cache_arrays_and_manifest(tmp_path, cache):
    src, items = _items(tmp_path)
    (src / "bad.dcm").write_bytes(b"garbage")
    items.insert(2, {"id": "bad", "path": src / "bad.dcm"})
    with pytest.warns(UserWarning, match="bad.dcm"):
        prep = _build(src, items)
    assert prep.cache_dir == cache / "prepared" / "toy" / "k1"
    assert prep.ids == [f"im{i}" for i in range(6)]
    assert prep.groups == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert isinstance(prep.images, np.memmap) and prep.images.shape == (6, 16, 16)
    assert prep.masks.shape == (6, 16, 16) and set(np.unique(prep.masks)) <= {0, 1}
    np.testing.assert_array_equal(prep.images[3], imageio.resize_image(_image(32, 32, 3), 16))
    assert prep.orig_sizes == [(32, 32)] * 6
    m = prep.manifest
    assert m["counts"]["n_images"] == 6 and m["counts"]["n_skipped_corrupt"] == 1
    assert m["skipped_corrupt"][0]["id"] == "bad" and "bad.dcm" in m["skipped_corrupt"][0]["error"]
    assert m["items"][0]["path"] == "im0.dcm" and m["counts"]["n_positive"] == 6
    assert json.loads((prep.cache_dir / "manifest.json").read_text()) == m
    assert not prep.synthetic
    # reopened from disk, identical
    again = tcache.load_prepared(prep.cache_dir)
    assert again.ids == prep.ids and np.array_equal(again.images, prep.images)
    with pytest.raises(DicomReadError, match="bad.dcm"):
        _build(src, items, key="k2", strict=True)
    assert not (cache / "prepared" / "toy" / "k2").exists()


def test_build_cache_interrupted_leaves_nothing(tmp_path, cache):
    src, items = _items(tmp_path)
    calls = []

    def flaky(item):
        calls.append(item["id"])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return _load(item)

    with pytest.raises(KeyboardInterrupt):
        tcache.build_cache(
            tcache.cache_dir_for("toy", "k"), task="toy", root=src, items=items, image_size=8,
            load_item=flaky, progress=False,
        )  # fmt: skip
    assert list((cache / "prepared" / "toy").iterdir()) == []
    assert tcache.load_prepared(tcache.cache_dir_for("toy", "k")) is None


def test_cache_key_depends_on_content(tmp_path, monkeypatch):
    src, items = _items(tmp_path, 2)
    files = [it["path"] for it in items]
    k = tcache.cache_key("toy", 16, {"a": 1}, files, src)
    with monkeypatch.context() as m:  # no Pillow JPEG plugin: another decoder, another cache
        m.setattr(imageio, "PREFERRED_DECODER", {})
        assert imageio.decoders() == {}
        assert k != tcache.cache_key("toy", 16, {"a": 1}, files, src)
    assert k == tcache.cache_key("toy", 16, {"a": 1}, list(reversed(files)), src)
    assert k != tcache.cache_key("toy", 32, {"a": 1}, files, src)
    assert k != tcache.cache_key("toy", 16, {"a": 2}, files, src)
    assert k != tcache.cache_key("toy", 16, {"a": 1}, files[:1], src)
    files[0].write_bytes(files[0].read_bytes() + b"\0")
    assert k != tcache.cache_key("toy", 16, {"a": 1}, files, src)


def test_split_and_fraction_indices(tmp_path, cache):
    src, items = _items(tmp_path, 12)
    prep = _build(src, items)
    sp = splits.split_indices(prep)
    allidx = sorted(sp["train"] + sp["val"] + sp["test"])
    assert allidx == list(range(12)) and all(sp[s] == sorted(sp[s]) for s in sp)
    assert all(sp[s] for s in sp)
    for s in sp:  # patients never straddle splits
        others = [i for t in sp if t != s for i in sp[t]]
        assert not {prep.groups[i] for i in sp[s]} & {prep.groups[i] for i in others}
    small = splits.fraction_indices(prep, sp["train"], 0.2)
    assert set(small) <= set(sp["train"]) and len(small) >= 1
    assert set(splits.fraction_indices(prep, sp["train"], 1.0)) == set(sp["train"])
    split_csv = tmp_path / "split.csv"
    split_csv.write_text("ImageId,split\nim0,train\nim1,val\nim5,test\nim6,train\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert splits.split_indices(prep, split_csv) == {"train": [0, 6], "val": [1], "test": [5]}
    assert any("8 prepared image(s)" in str(w.message) for w in caught)


def test_synthetic_case_plan():
    rng = np.random.default_rng(0)
    storage = synthetic.assign_storage(rng, 40)
    assert {k for k, _ in synthetic.STORAGE} | {"plain"} == set(storage)
    assert list(synthetic.assign_storage(np.random.default_rng(0), 3)).count("plain") == 0
    negative, two = synthetic.assign_cases(np.random.default_rng(1), 30, 10, 0.2)
    assert negative.sum() == 10 and two.sum() == 4 and not (negative & two).any()
    case = np.random.default_rng(2)
    assert synthetic.lesion_sides(case, True, False) == []
    assert synthetic.lesion_sides(case, False, True) == [-1, 1]
    assert synthetic.lesion_sides(case, False, False) in ([-1], [1])
    uids = synthetic.kaggle_uids("8323329.1.1517875123", 500)
    assert uids["sop_uid"].endswith(".500") and uids["series_uid"].endswith(".498")
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    fitted = synthetic.fit_storage(img, "rescale")
    assert fitted.min() >= 4 and not (fitted % 2).any()
    assert synthetic.fit_storage(img, "jpeg") is img
    image, regions = synthetic.render_chest(np.random.default_rng(3), 32, [1])
    assert image.dtype == np.uint8 and image.shape == (32, 32) and len(regions) == 1


def test_task_modules_use_no_private_helpers_of_other_modules():
    """Shared pieces live in the shared modules (e.g. the renderer in tasks.synthetic)."""
    import ast

    import tasks

    root = Path(tasks.__file__).parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path}: imports {private} from {node.module}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in ("siim", "rsna", "cache", "splits", "synthetic", "imageio"):
                    assert not node.attr.startswith("_"), f"{path}:{node.lineno}: {node.value.id}.{node.attr}"
    rsna_sources = "".join(p.read_text() for p in (root / "rsna").glob("*.py"))
    assert "tasks.siim" not in rsna_sources and "import siim" not in rsna_sources


def test_is_synthetic(tmp_path):
    assert not synthetic.is_synthetic(tmp_path)
    synthetic.write_synthetic_marker(tmp_path, "not real")
    assert synthetic.is_synthetic(tmp_path)


def test_build_cache_all_corrupt_is_an_error(tmp_path, cache):
    src = tmp_path / "data"
    src.mkdir()
    items = []
    for i in range(2):
        (src / f"x{i}.dcm").write_bytes(b"junk")
        items.append({"id": f"x{i}", "path": src / f"x{i}.dcm"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"none of the 2 toy DICOM files[\s\S]*x0.dcm"):
            _build(src, items)
    assert list((cache / "prepared" / "toy").iterdir()) == []


def test_resize_non_square():
    img = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    assert imageio.resize_image(img, 16).shape == (16, 16)
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :32] = 1  # left half
    small = imageio.resize_mask(mask, 16)
    assert small[:, :8].all() and not small[:, 8:].any()
    assert imageio.resize_mask(np.ones((4, 4), np.uint8), 8).all()  # enlarging too


def test_power_of_two_mask_shrink_is_pillows_box_filter_exactly():
    rng = np.random.default_rng(5)
    seen_half = 0
    for t in range(120):
        h, w = [(1024, 1024), (512, 1024), (256, 64)][t % 3]
        size = [8, 16, 32, 64][t % 4]
        mask = np.zeros((h, w), np.uint8)
        if t % 4 == 0:
            mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        else:
            for _ in range(3):
                y, x = rng.integers(0, h), rng.integers(0, w)
                mask[y : y + rng.integers(1, h // 2), x : x + rng.integers(1, w // 2)] = rng.integers(1, 256)
            fw = w // size
            mask[:, 3 * fw : 3 * fw + fw // 2] = 1  # blocks exactly half covered: the threshold's edge
        fast = imageio.resize_mask(mask, size)
        np.testing.assert_array_equal(fast, imageio._resize_mask_pil(mask, size), err_msg=f"case {t}")
        counts = (mask > 0).reshape(size, h // size, size, w // size).sum((1, 3))
        seen_half += int((2 * counts == (h // size) * (w // size)).sum())
    assert seen_half > 100  # exact halves were compared, and count as inside (>= 0.5)
    # other factors still go through Pillow
    odd = (rng.random((100, 100)) < 0.5).astype(np.uint8)
    np.testing.assert_array_equal(imageio.resize_mask(odd, 30), imageio._resize_mask_pil(odd, 30))
