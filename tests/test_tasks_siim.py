"""Tests for tasks.siim: RLE semantics, the official layout, prepare + cache, synthetic data."""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from bench.util import sha256_file
from tasks import imageio, siim, splits, synthetic
from tasks.errors import DataError

SIZE, N, SEED = 64, 36, 7
ID_RE = re.compile(r"1\.2\.276\.0\.7230010\.3\.1\.4\.8323329\.\d+\.1517875\d{3}\.\d{6}")


def kaggle_rle2mask(rle, width, height):
    """Verbatim logic of Kaggle's SIIM mask_functions.rle2mask (used as `.T`)."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts, lengths = array[0::2], array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position : current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim") / "data"
    summary = siim.synth(root, n=N, seed=SEED, size=SIZE, progress=False)
    records = {r["image_id"]: r for r in siim.synth_records(N, SEED, SIZE)}
    return root, summary, records


def _csv_lines(root):
    return (root / "train-rle.csv").read_text().splitlines()


def _prepare(root, size=SIZE, **kw):
    return siim.prepare(root, size, progress=False, **kw)


# --------------------------------------------------------------------------- RLE


def test_rle_hand_checked_example():
    # 3 rows x 4 columns; column-major flat positions 1, 2 (column 0) and 6 (column 2)
    expected = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(siim.rle_decode("1 2 3 1", 3, 4), expected)
    np.testing.assert_array_equal(kaggle_rle2mask("1 2 3 1", 4, 3).T / 255, expected)
    np.testing.assert_array_equal(siim.rle_decode("2 2 7 1", 3, 4, "absolute"), expected)
    assert siim.rle_encode(expected) == "1 2 3 1"
    assert siim.rle_encode(expected, "absolute") == "2 2 7 1"


@pytest.mark.parametrize("fmt", ["relative", "absolute"])
def test_rle_roundtrip(fmt):
    rng = np.random.default_rng(0)
    masks = [np.ones((5, 7), np.uint8), np.zeros((4, 4), np.uint8), np.ones((1, 1), np.uint8)]
    border = np.zeros((6, 9), np.uint8)
    border[[0, -1], :] = 1
    border[:, [0, -1]] = 1
    masks.append(border)
    for h, w in [(3, 4), (7, 5), (16, 16), (64, 48), (1, 30)]:
        for density in (0.05, 0.5, 0.95):
            masks.append((rng.random((h, w)) < density).astype(np.uint8))
    for mask in masks:
        rle = siim.rle_encode(mask, fmt)
        np.testing.assert_array_equal(siim.rle_decode(rle, *mask.shape, fmt), mask)
        if fmt == "relative" and mask.any():
            kaggle = kaggle_rle2mask(rle, mask.shape[1], mask.shape[0]).T / 255
            np.testing.assert_array_equal(kaggle, mask)
    assert (
        siim.rle_encode(np.ones((2, 3))) == "0 6"
        and siim.rle_encode(np.ones((2, 3)), "absolute") == "1 6"
    )


def test_negative_strings_are_one_check():
    for neg in ("-1", " -1", "-1 ", "", "   ", None, float("nan")):
        assert siim.is_negative(neg)
        assert not siim.rle_decode(neg, 4, 5).any()
    for pos in ("1 2", " 0 1"):
        assert not siim.is_negative(pos)
    assert siim.rle_encode(np.zeros((3, 3))) == "-1"


@pytest.mark.parametrize(
    "rle, fmt, message",
    [
        ("1 2 3", "relative", "odd number"),
        ("1 a", "relative", "non-integer"),
        ("1.5 2", "relative", "non-integer"),
        ("1 -2", "relative", "negative run length"),
        ("-3 2", "relative", "negative offset"),
        ("10 3", "relative", "past the end"),
        ("5 4 3 1", "relative", "past the end"),
        ("0 2", "absolute", "1-based"),
        ("12 2", "absolute", "past the end"),
    ],
)
def test_rle_errors(rle, fmt, message):
    with pytest.raises(ValueError, match=message):
        siim.rle_decode(rle, 3, 4, fmt)


def test_check_rle_accepts_and_refuses_exactly_what_rle_runs_does():
    from tasks.siim.rle import check_rle, rle_runs

    rng = random.Random(7)
    pieces = ["0", "1", "7", "00", "01", "10", "-1", "-0", "a", "1.5", "9" * 18, "9" * 19, "12345678901234567890"]
    cases = ["1 2", "0 5", "01 2", "1  2", " 1 2", "1 2 ", "1\t2", "3 4 5", "0 0", "5 0 0 3", "1 2 3 4"]
    for _ in range(3000):
        n = rng.randint(1, 6)
        sep = lambda: rng.choice([" "] * 8 + ["  ", "\t"])  # noqa: E731
        cases.append(sep().join(rng.choice(pieces) if rng.random() < 0.3 else str(rng.randint(0, 999))
                                for _ in range(n)).strip())  # fmt: skip
    accepted = 0
    for rle in cases:
        for fmt in ("relative", "absolute"):
            try:
                rle_runs(rle, fmt)
                want = None
            except (ValueError, OverflowError) as e:
                want = type(e), str(e)
            try:
                check_rle(rle, fmt)
                got = None
            except (ValueError, OverflowError) as e:
                got = type(e), str(e)
            assert got == want, (rle, fmt)
            accepted += want is None
    assert 1000 < accepted < 2 * len(cases)  # both sides of the check were exercised


def test_rle_edge_runs_allowed():
    assert siim.rle_decode("10 2", 3, 4).sum() == 2  # ends exactly at the last pixel
    assert siim.rle_decode("11 2", 3, 4, "absolute")[:, -1].tolist() == [0, 1, 1]


def _pixelwise_decode(rle: str, h: int, w: int, fmt: str) -> np.ndarray:
    """The RLE definition pixel by pixel: column-major flat positions set to 1."""
    flat, pos = [0] * (h * w), 0
    values = [int(v) for v in rle.split()]
    for first, length in zip(values[::2], values[1::2]):
        start = pos + first if fmt == "relative" else first - 1
        for i in range(start, start + length):
            flat[i] = 1
        pos = start + length
    return np.array(flat, np.uint8).reshape(w, h).T


def test_rle_decode_matches_the_definition_for_any_runs():
    # runs inside one column, across several columns, of length 0, and (absolute) unordered
    # and overlapping ones: the union, as the pixel-by-pixel definition gives
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        n, k = h * w, int(rng.integers(1, 8))
        starts = rng.integers(1, n + 1, k)
        lengths = [int(rng.integers(0, n - s + 2)) for s in starts]
        absolute = " ".join(f"{s} {ln}" for s, ln in zip(starts, lengths))
        got = siim.rle_decode(absolute, h, w, "absolute")
        assert got.dtype == np.uint8 and got.flags.c_contiguous and got.shape == (h, w)
        np.testing.assert_array_equal(got, _pixelwise_decode(absolute, h, w, "absolute"))
        offsets = rng.integers(0, max(1, n // (2 * k)), k)
        runs = rng.integers(0, max(1, n // (2 * k)), k)
        relative = " ".join(f"{o} {ln}" for o, ln in zip(offsets, runs))
        np.testing.assert_array_equal(
            siim.rle_decode(relative, h, w), _pixelwise_decode(relative, h, w, "relative")
        )


# --------------------------------------------------------------------------- synthetic layout


def test_synth_writes_official_layout(synth_data):
    root, summary, records = synth_data
    assert synthetic.is_synthetic(root) and "NOT REAL" in (root / "SYNTHETIC_DATA.txt").read_text()
    files = sorted((root / "dicom-images-train").rglob("*.dcm"))
    assert len(files) == N
    syntaxes, photometrics, rescaled = set(), set(), 0
    for f in files:
        study, series = f.parent.parent.name, f.parent.name
        assert f.parent.parent.parent == root / "dicom-images-train"
        assert ID_RE.fullmatch(f.stem)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
            study,
            series,
            f.stem,
        )
        assert ds.PatientID == records[f.stem]["patient_id"] and ds.Rows == ds.Columns == SIZE
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        photometrics.add(ds.PhotometricInterpretation)
        rescaled += "RescaleSlope" in ds
    assert syntaxes == {ExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit}
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"} and rescaled >= 1

    lines = _csv_lines(root)
    assert lines[0] == "ImageId, EncodedPixels"
    ids = [ln.split(",")[0] for ln in lines[1:]]
    values = [ln.split(",", 1)[1] for ln in lines[1:]]
    assert all(v.startswith(" ") for v in values)
    negatives = {i for i, v in zip(ids, values) if v == " -1"}
    assert abs(len(negatives) - N / 3) <= 1 and summary["n_negative"] == len(negatives)
    assert all(re.fullmatch(r"( \d+ \d+)+", v) for v in values if v != " -1")
    repeated = {i for i in ids if ids.count(i) > 1}
    assert repeated and not repeated & negatives and summary["n_multi_region"] == len(repeated)
    assert set(ids) == {f.stem for f in files}
    assert summary["n_patients"] < N  # some patients have two images
    assert summary["storage"]["rle"] >= 1 and summary["storage"]["jpeg"] >= 1
    assert summary["storage"]["mono1"] >= 1 and summary["storage"]["rescale"] >= 1


def test_synth_is_deterministic_and_learnable_looking():
    a = list(siim.synth_records(6, 3, 48))
    b = list(siim.synth_records(6, 3, 48))
    c = list(siim.synth_records(6, 4, 48))
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # pneumothorax pixels are clearly darker than the mirrored spot of the other lung
    for r in siim.synth_records(30, 0, 128):
        if len(r["regions"]) == 1:
            m = r["regions"][0].astype(bool)
            assert m.mean() > 0.01  # several % of the lung, survives 64 px
            mirrored = r["image"][:, ::-1][m].mean()
            assert mirrored - r["image"][m].mean() > 15


# --------------------------------------------------------------------------- prepare


def test_prepare_full_resolution_matches_generated(synth_data, cache):
    root, summary, records = synth_data
    prep = _prepare(root)
    assert prep.task == "siim" and prep.synthetic and prep.image_size == SIZE
    assert prep.ids == sorted(records) and len(prep) == N
    assert prep.images.shape == prep.masks.shape == (N, SIZE, SIZE)
    labels = siim.read_labels(root / "train-rle.csv", "relative")
    for k, image_id in enumerate(prep.ids):
        rec = records[image_id]
        csv_mask = siim.decode_rows([rle for _, rle in labels[image_id]], SIZE, SIZE)
        np.testing.assert_array_equal(prep.masks[k], csv_mask)
        gen_mask = np.zeros((SIZE, SIZE), np.uint8)
        for region in rec["regions"]:
            gen_mask |= region
        np.testing.assert_array_equal(prep.masks[k], gen_mask)
        if rec["storage"] == "jpeg":
            assert np.abs(prep.images[k].astype(int) - rec["image"]).mean() < 2
        else:
            np.testing.assert_array_equal(prep.images[k], rec["image"])
        assert prep.groups[k] == rec["patient_id"]
        assert prep.orig_sizes[k] == (SIZE, SIZE)
    m = prep.manifest
    c = m["counts"]
    assert (c["n_images"], c["n_positive"], c["n_skipped_corrupt"]) == (N, summary["n_positive"], 0)
    assert c["n_label_rows"] == summary["n_label_rows"]
    assert (c["n_label_ids_without_dicom"], c["n_dicoms_without_labels"]) == (0, 0)
    assert m["rle_format"] == "relative" and m["label_file"].endswith("train-rle.csv")
    assert m["label_sha256"] == sha256_file(root / "train-rle.csv")
    assert m["items"][0]["path"].startswith("dicom-images-train/")
    assert {it["transfer_syntax"] for it in m["items"]} == {
        ExplicitVRLittleEndian,
        RLELossless,
        JPEGBaseline8Bit,
    }


def test_prepare_downsized(synth_data, cache):
    root, _, records = synth_data
    prep = _prepare(root, 32)
    assert prep.images.shape == (N, 32, 32) and prep.orig_sizes[0] == (SIZE, SIZE)
    for k, image_id in enumerate(prep.ids):
        rec = records[image_id]
        full = np.zeros((SIZE, SIZE), np.uint8)
        for region in rec["regions"]:
            full |= region
        np.testing.assert_array_equal(prep.masks[k], imageio.resize_mask(full, 32))
        assert bool(prep.masks[k].any()) == bool(full.any())  # regions survive downsizing
        if rec["storage"] != "jpeg":
            np.testing.assert_array_equal(prep.images[k], imageio.resize_image(rec["image"], 32))


def test_second_prepare_reads_only_the_cache(synth_data, cache, monkeypatch):
    root = synth_data[0]
    first = _prepare(root)

    def no_dicom_reads(*a, **k):
        raise AssertionError("DICOM read on a cache hit")

    monkeypatch.setattr(pydicom, "dcmread", no_dicom_reads)
    second = _prepare(root)
    assert second.cache_dir == first.cache_dir
    assert second.ids == first.ids and np.array_equal(second.masks, first.masks)
    assert len(list((cache / "prepared" / "siim").iterdir())) == 1


def test_cache_rebuilds_when_inputs_change(data, cache):
    base = _prepare(data).cache_dir
    assert _prepare(data, 32).cache_dir != base
    csv_path = data / "train-rle.csv"
    os.utime(csv_path, (1e9, 1e9))  # touching alone: content-addressed, same cache
    assert _prepare(data).cache_dir == base
    first_id = _csv_lines(data)[1].split(",")[0]
    with open(csv_path, "a") as f:
        f.write(f"{first_id}, -1\n")  # new content (same masks) -> new cache
    changed = _prepare(data).cache_dir
    assert changed != base
    dcm = next((data / "dicom-images-train").rglob("*.dcm"))
    os.utime(dcm, (2e9, 2e9))
    assert _prepare(data).cache_dir not in (base, changed)


def test_interrupted_build_leaves_no_cache(synth_data, cache, monkeypatch):
    root = synth_data[0]
    real = imageio.read_dicom_with_header
    calls = []

    def dies_midway(path):
        calls.append(path)
        if len(calls) == N // 2:
            raise RuntimeError("simulated crash")
        return real(path)

    monkeypatch.setattr(imageio, "read_dicom_with_header", dies_midway)
    with pytest.raises(RuntimeError, match="simulated"):
        _prepare(root)
    assert list((cache / "prepared" / "siim").iterdir()) == []
    monkeypatch.setattr(imageio, "read_dicom_with_header", real)
    prep = _prepare(root)
    assert len(prep) == N and (prep.cache_dir / "manifest.json").is_file()


# --------------------------------------------------------------------------- splits


def test_splits_by_image_and_patient(data, cache):
    prep = _prepare(data)
    sp = splits.split_indices(prep)
    assert sorted(sum(sp.values(), [])) == list(range(N))
    patients = {s: {prep.groups[i] for i in idx} for s, idx in sp.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    assert all(sp.values())
    by_id = {prep.ids[i]: s for s, idx in sp.items() for i in idx}
    # shuffled CSV row order -> identical split (and multi-row images still one split)
    lines = _csv_lines(data)
    body = lines[1:]
    random.Random(0).shuffle(body)
    (data / "train-rle.csv").write_text("\n".join([lines[0], *body]) + "\n")
    prep2 = _prepare(data)
    assert prep2.cache_dir != prep.cache_dir
    sp2 = splits.split_indices(prep2)
    assert {prep2.ids[i]: s for s, idx in sp2.items() for i in idx} == by_id
    # val/test never depend on the label fraction; fractions are nested
    subsets = [set(splits.fraction_indices(prep, sp["train"], f)) for f in (0.1, 0.5, 1.0)]
    assert subsets[0] <= subsets[1] <= subsets[2] == set(sp["train"])
    assert splits.split_indices(prep2)["test"] == sp["test"]
    # header-only ground truth reproduces the same assignment
    gt = siim.load_ground_truth(data)
    assert siim.ground_truth_splits(gt) == by_id


def test_ground_truth_matches_prepare(synth_data, cache):
    root = synth_data[0]
    prep = _prepare(root)
    gt = siim.load_ground_truth(root)
    assert sorted(gt) == prep.ids
    for k, image_id in enumerate(prep.ids):
        entry = gt[image_id]
        assert (entry["height"], entry["width"]) == prep.orig_sizes[k]
        assert entry["patient_id"] == prep.groups[k] and entry["rle_format"] == "relative"
        np.testing.assert_array_equal(siim.ground_truth_mask(entry), prep.masks[k])
    split_csv = root.parent / "split.csv"
    split_csv.write_text("ImageId,split\n" + f"{prep.ids[0]},test\n{prep.ids[1]},train\n")
    assert siim.ground_truth_splits(gt, split_csv) == {prep.ids[0]: "test", prep.ids[1]: "train"}


# --------------------------------------------------------------------------- bad input


def test_missing_layout_messages(tmp_path, cache):
    with pytest.raises(
        DataError, match="dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm"
    ) as e:
        _prepare(tmp_path / "nowhere")
    assert "nowhere" in str(e.value)
    (tmp_path / "root").mkdir()
    with pytest.raises(
        DataError, match=r"dicom-images-train: DICOM folder missing[\s\S]*train-rle.csv"
    ):
        _prepare(tmp_path / "root")
    (tmp_path / "root" / "dicom-images-train").mkdir()
    with pytest.raises(DataError, match=r"no label CSV[\s\S]*ImageId, EncodedPixels"):
        _prepare(tmp_path / "root")


def test_wrong_columns(data, cache):
    (data / "train-rle.csv").write_text("image,mask\na,-1\n")
    with pytest.raises(DataError, match=r"train-rle.csv.*found \['image', 'mask'\]"):
        _prepare(data)


def test_stage2_csv_needs_explicit_format(data, cache):
    labels = siim.read_labels(data / "train-rle.csv", "relative")
    (data / "train-rle.csv").unlink()
    rows = ["ImageId,EncodedPixels"]
    for image_id, entries in labels.items():
        for _, rle in entries:
            mask = siim.rle_decode(rle, SIZE, SIZE)
            rows.append(f"{image_id},{siim.rle_encode(mask, 'absolute')}")
    (data / "stage_2_train.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"stage_2_train.csv.*rle_format='absolute'"):
        _prepare(data)
    prep = _prepare(data, rle_format="absolute")
    assert prep.manifest["rle_format"] == "absolute"
    for k, image_id in enumerate(prep.ids):
        expected = siim.decode_rows([r for _, r in labels[image_id]], SIZE, SIZE)
        np.testing.assert_array_equal(prep.masks[k], expected)


def test_corrupt_dicom_skipped_or_fatal(data, cache):
    victim = sorted((data / "dicom-images-train").rglob("*.dcm"))[3]
    blob = victim.read_bytes()
    victim.write_bytes(blob[: len(blob) // 2])
    with pytest.warns(UserWarning, match="corrupt DICOM"):
        prep = _prepare(data)
    assert len(prep) == N - 1 and victim.stem not in prep.ids
    c = prep.manifest["counts"]
    assert c["n_skipped_corrupt"] == 1 and c["n_images"] == N - 1
    skipped = prep.manifest["skipped_corrupt"][0]
    assert skipped["id"] == victim.stem and victim.name in skipped["error"]
    with pytest.raises(DataError, match=victim.stem):
        _prepare(data, strict=True)  # also from the existing cache
    shutil.rmtree(cache)
    with pytest.raises(DataError, match=victim.stem):
        _prepare(data, strict=True)
    assert not list((cache / "prepared" / "siim").iterdir())


def _replace_first_positive(data, new_rle):
    lines = _csv_lines(data)
    for n, line in enumerate(lines[1:], start=2):
        image_id, rle = line.split(",", 1)
        if not siim.is_negative(rle):
            lines[n - 1] = f"{image_id}, {new_rle}"
            (data / "train-rle.csv").write_text("\n".join(lines) + "\n")
            return image_id, n
    raise AssertionError("no positive row")


def test_rle_odd_length_names_id_and_row(data, cache):
    image_id, line = _replace_first_positive(data, "5 3 7")
    with pytest.raises(
        DataError, match=rf"train-rle.csv: line {line}: ImageId {re.escape(image_id)}: .*odd"
    ):
        _prepare(data)


def test_rle_past_end_names_id_and_row(data, cache):
    image_id, line = _replace_first_positive(data, f"{SIZE * SIZE - 2} 5")
    with pytest.raises(
        DataError, match=rf"line {line}: ImageId {re.escape(image_id)}: .*past the end"
    ):
        _prepare(data)
    assert not list((cache / "prepared" / "siim").iterdir())


def test_label_and_dicom_mismatches_counted(data, cache):
    with open(data / "train-rle.csv", "a") as f:
        f.write("1.2.3.no.such.image, -1\n")
    orphan = sorted((data / "dicom-images-train").rglob("*.dcm"))[0]
    lines = [ln for ln in _csv_lines(data) if not ln.startswith(orphan.stem + ",")]
    (data / "train-rle.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"1 ImageId\(s\) have no DICOM"):
        prep = _prepare(data)
    m = prep.manifest
    assert m["counts"]["n_label_ids_without_dicom"] == 1
    assert m["label_ids_without_dicom"] == ["1.2.3.no.such.image"]
    assert m["counts"]["n_dicoms_without_labels"] == 1
    assert m["dicoms_without_labels"] == [orphan.relative_to(data).as_posix()]
    assert len(prep) == N - 1 and orphan.stem not in prep.ids
    with pytest.raises(DataError, match="no.such.image"):
        _prepare(data, strict=True)


def test_no_matching_ids(data, cache):
    (data / "train-rle.csv").write_text("ImageId, EncodedPixels\nfoo, -1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of its 1 ImageIds"):
            _prepare(data)


# --------------------------------------------------------------------------- PNG re-exports


@pytest.fixture(scope="module")
def png_pair(tmp_path_factory):
    """The same few 1024x1024 synthetic cases as DICOMs and as a downsized PNG re-export."""
    from PIL import Image

    base = tmp_path_factory.mktemp("png")
    dicom_root = base / "dicom"
    siim.synth(dicom_root, n=8, seed=11, size=1024, progress=False)
    png_root = base / "png"
    (png_root / "png_images").mkdir(parents=True)
    shutil.copy(dicom_root / "train-rle.csv", png_root / "train-rle.csv")
    for path in sorted((dicom_root / siim.DICOM_DIR).rglob("*.dcm")):
        image = Image.fromarray(imageio.read_dicom(path)).resize((256, 256), Image.Resampling.BOX)
        image.save(png_root / "png_images" / f"{path.stem}.png")
    return dicom_root, png_root


def test_png_reexport_matches_the_dicoms(png_pair, cache):
    dicom_root, png_root = png_pair
    assert siim.find_layout(png_root)["image_format"] == "png"
    from_dicom, from_png = _prepare(dicom_root, 64), _prepare(png_root, 64)
    assert from_png.ids == from_dicom.ids
    # the RLE is decoded in its own 1024x1024 frame, so the masks are the same
    assert np.array_equal(np.asarray(from_png.masks), np.asarray(from_dicom.masks))
    assert np.asarray(from_png.masks).any()
    diff = np.abs(np.asarray(from_png.images, np.int16) - np.asarray(from_dicom.images, np.int16))
    assert diff.mean() < 2.0  # only the resampling path differs
    assert from_png.orig_sizes == [(1024, 1024)] * 8  # submissions are in the RLE's frame
    m = from_png.manifest
    assert m["image_format"] == "png" and "no PatientID" in m["grouping"]
    assert {it["patient_id"] for it in m["items"]} == {""}  # each image its own split group


def test_png_ground_truth_scores_one(png_pair, cache, tmp_path):
    from bench.engine.evaluate import evaluate_submission

    _, png_root = png_pair
    gt = siim.load_ground_truth(png_root)
    assert {(e["height"], e["width"]) for e in gt.values()} == {(1024, 1024)}
    result = evaluate_submission("siim", png_root, png_root / "train-rle.csv", split="all")
    assert result["metrics"]["dice"] == 1.0 and result["n_scored"] == 8


def test_png_corrupt_and_sixteen_bit(png_pair, cache, tmp_path):
    from PIL import Image

    root = tmp_path / "png"
    shutil.copytree(png_pair[1], root)
    pngs = sorted((root / "png_images").glob("*.png"))
    pngs[0].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    wide = np.asarray(Image.open(pngs[1]), np.uint16) * 257  # the same picture in 16 bits
    Image.fromarray(wide).save(pngs[1])
    with pytest.warns(UserWarning, match="not a readable PNG"):
        prep = _prepare(root, 64)
    assert len(prep) == 7 and pngs[0].stem not in prep.ids
    assert prep.manifest["skipped_corrupt"][0]["path"].endswith(pngs[0].name)
    k = prep.ids.index(pngs[1].stem)
    reference = _prepare(png_pair[1], 64)
    j = reference.ids.index(pngs[1].stem)
    assert np.abs(np.asarray(prep.images[k], int) - np.asarray(reference.images[j], int)).max() <= 1
    with pytest.raises(DataError, match=re.escape(pngs[0].name)):
        _prepare(root, 64, strict=True)


def test_png_layout_errors(png_pair, tmp_path, cache):
    root = tmp_path / "png"
    shutil.copytree(png_pair[1], root)
    (root / "train-rle.csv").unlink()
    with pytest.raises(DataError, match="no label CSV"):
        _prepare(root, 64)
    shutil.rmtree(root / "png_images")
    (root / "png_images").mkdir()
    with pytest.raises(DataError, match="png_images/"):  # the message lists the PNG option
        _prepare(root, 64)


def test_png_reexport_through_the_cli(png_pair, tmp_path):
    import json

    import pandas as pd

    from bench.cli import main

    out = tmp_path / "runs"
    assert main(["run", "--task", "siim", "--init", "random", "--protocol", "frozen",
                 "--fraction", "1.0", "--data-root", str(png_pair[1]), "--out", str(out),
                 "--arch", "resnet18", "--image-size", "64", "--epochs", "1", "--batch-size", "4",
                 "--save-predictions", "--quiet"]) == 0  # fmt: skip
    (rec,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert rec["status"] == "complete" and rec["split"]["counts"]["test"] >= 1
    sub = pd.read_csv(out / f"{rec['run_id']}.test-predictions.csv", keep_default_na=False)
    for rle in sub.iloc[:, 1]:  # Kaggle RLE in the 1024x1024 frame of the originals
        assert siim.rle_decode(rle, 1024, 1024).shape == (1024, 1024)
    assert main(["evaluate", "--task", "siim", "--data-root", str(png_pair[1]), "--predictions",
                 str(out / f"{rec['run_id']}.test-predictions.csv")]) == 0  # fmt: skip
