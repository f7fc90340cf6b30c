"""`--split-file` with the split files exactly as LoVT and BenchX publish them (issue 11 §7).

The writers below are those projects' own code, transcribed: LoVT's
``write_segmentation_csv_file`` / ``write_detection_csv_file`` (``csv.writer``, header
``ID`` or ``ID,boxes,classes``, boxes ``x;y;w;h|...``, files ``train.csv`` /
``validation.csv`` / ``test.csv``) and BenchX's ``save_anno`` (one name per line, ``\\n``
line ends, no header, files ``train.txt`` / ``val.txt`` / ``test.txt``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tasks import rsna, siim, splits
from tasks.errors import DataError

N, SIZE = 12, 64


# --------------------------------------------------------------------------- the writers


def lovt_write_segmentation_csv_file(target_path, samples):
    with open(target_path, "w", newline="") as csvfile:
        writer = csv.writer(csvfile, delimiter=",")
        writer.writerow(["ID"])
        for sample_id in samples:
            writer.writerow([sample_id])


def lovt_write_detection_csv_file(target_path, samples):
    with open(target_path, "w", newline="") as csvfile:
        writer = csv.writer(csvfile, delimiter=",")
        writer.writerow(["ID", "boxes", "classes"])
        for sample_id, boxes, classes in samples:
            boxes = "|".join(f"{box[0]};{box[1]};{box[2]};{box[3]}" for box in boxes)
            classes = "|".join(str(int(cls)) for cls in classes)
            writer.writerow([sample_id, boxes, classes])


def benchx_save_anno(img_list, file_path, remove_suffix=True):
    if remove_suffix:
        img_list = [img_path.split("/")[-1] for img_path in img_list]
        img_list = [".".join(img_path.split(".")[:-1]) for img_path in img_list]
    with open(file_path, "w") as file_:
        for x in list(img_list):
            file_.write(x + "\n")


def _thirds(ids: list[str]) -> dict[str, list[str]]:
    """A split that is not cxrbench's own: by position in sorted order."""
    ids = sorted(ids)
    return {"train": ids[: len(ids) // 2], "val": ids[len(ids) // 2 : 3 * len(ids) // 4],
            "test": ids[3 * len(ids) // 4 :]}  # fmt: skip


def _expected(parts: dict[str, list[str]]) -> dict[str, str]:
    return {i: split for split, ids in parts.items() for i in ids}


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim") / "data"
    siim.synth(root, n=N, seed=3, size=SIZE, progress=False)
    return root


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna") / "data"
    rsna.synth(root, n=N, seed=3, size=SIZE, progress=False)
    return root


# --------------------------------------------------------------------------- LoVT


def test_lovt_segmentation_csvs_on_siim(siim_root, tmp_path, cache):
    gt = siim.load_ground_truth(siim_root)
    parts = _thirds(list(gt))
    folder = tmp_path / "SIIM_ACR_Pneumothorax"
    folder.mkdir()
    names = {"train": "train.csv", "val": "validation.csv", "test": "test.csv"}
    for split, ids in parts.items():
        lovt_write_segmentation_csv_file(folder / names[split], ids)
    raw = (folder / "train.csv").read_bytes()
    assert raw.startswith(b"ID\r\n") and raw.count(b"\r\n") == len(parts["train"]) + 1
    assert splits.ground_truth_splits(gt, split_file=folder) == _expected(parts)
    # the same through the prepared cache (what `bench run --split-file` uses)
    prepared = siim.prepare(siim_root, SIZE, progress=False)
    idx = splits.split_indices(prepared, split_file=folder)
    got = {s: sorted(prepared.ids[i] for i in idx[s]) for s in splits.SPLITS}
    assert got == {s: sorted(ids) for s, ids in parts.items()}


def test_lovt_detection_csvs_on_rsna(rsna_root, tmp_path):
    labels = rsna.read_labels(rsna_root / rsna.LABELS_CSV)
    gt = rsna.load_ground_truth(rsna_root)
    parts = _thirds(list(gt))
    folder = tmp_path / "RSNA-Pneunomia-Detection"
    folder.mkdir()
    names = {"train": "train.csv", "val": "validation.csv", "test": "test.csv"}
    for split, ids in parts.items():
        samples = [(pid, [b[1:] for b in labels[pid]], [1] * len(labels[pid])) for pid in ids]
        lovt_write_detection_csv_file(folder / names[split], samples)
    text = (folder / "train.csv").read_bytes().decode()
    assert text.startswith("ID,boxes,classes\r\n")
    positive = next(pid for pid in parts["train"] if labels[pid])
    assert any(ln.startswith(f"{positive},") and ";" in ln for ln in text.splitlines())
    negative = next(pid for pid in gt if not labels[pid])
    split_of_negative = _expected(parts)[negative]
    csv_text = (folder / names[split_of_negative]).read_bytes().decode()
    assert f"{negative},,\r\n" in csv_text  # negatives: empty boxes and classes
    assert splits.ground_truth_splits(gt, split_file=folder) == _expected(parts)


# --------------------------------------------------------------------------- BenchX


def test_benchx_lists_of_image_paths_on_siim(siim_root, tmp_path):
    gt = siim.load_ground_truth(siim_root)
    parts = _thirds(list(gt))
    folder = tmp_path / "benchx_siim"
    folder.mkdir()
    for split, ids in parts.items():  # paths as in the issue: images/<ImageId>.png
        benchx_save_anno([f"images/{i}.png" for i in ids], folder / f"{split}.txt",
                         remove_suffix=False)  # fmt: skip
    first = (folder / "train.txt").read_text().splitlines()[0]
    assert first == f"images/{parts['train'][0]}.png" and "." in parts["train"][0]  # dotted ids
    assert splits.load_split_file(folder, list(gt)) == _expected(parts)
    # save_anno's own default strips folder and suffix: bare ImageIds, one per line
    for split, ids in parts.items():
        benchx_save_anno([f"/target/path/to/SIIM/images/{i}.png" for i in ids],
                         folder / f"{split}.txt")  # fmt: skip
    assert (folder / "val.txt").read_text() == "".join(f"{i}\n" for i in parts["val"])
    assert splits.ground_truth_splits(gt, split_file=folder) == _expected(parts)
    # BenchX's own train_1.txt / train_10.txt subsets beside them are not read
    (folder / "train_1.txt").write_text("not-an-id\n")
    assert splits.load_split_file(folder, list(gt)) == _expected(parts)


def test_benchx_lists_of_patient_ids_on_rsna(rsna_root, tmp_path):
    gt = rsna.load_ground_truth(rsna_root)
    parts = _thirds(list(gt))
    folder = tmp_path / "benchx_rsna"
    folder.mkdir()
    for split, ids in parts.items():  # preprocess_rsna.py: save_anno(x, ..., remove_suffix=False)
        benchx_save_anno(ids, folder / f"{split}.txt", remove_suffix=False)
    assert splits.ground_truth_splits(gt, split_file=folder) == _expected(parts)


def test_benchx_png_export_names_are_unknown_ids_with_a_hint(siim_root, tmp_path):
    gt = siim.load_ground_truth(siim_root)
    folder = tmp_path / "shipped"
    folder.mkdir()
    # the names of BenchX's shipped SIIM lists (vbookshelf's PNG re-export)
    for split, names in {"train": ["8826_train_0_", "2111_train_1_"], "val": ["37_train_0_"],
                         "test": ["5_test_1_"]}.items():  # fmt: skip
        benchx_save_anno([f"{n}.png" for n in names], folder / f"{split}.txt")
    with pytest.raises(DataError, match=r"4 id\(s\) in the split file are not in the dataset") as e:
        splits.load_split_file(folder, list(gt))
    assert "PNG re-export" in str(e.value) and "8826_train_0_" in str(e.value)


# --------------------------------------------------------------------------- refusals


def test_split_folder_errors(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    benchx_save_anno(["a", "b"], folder / "train.txt", remove_suffix=False)
    benchx_save_anno(["c"], folder / "val.txt", remove_suffix=False)
    with pytest.raises(DataError, match="missing test.txt"):
        splits.load_split_file(folder, list("abcd"))
    benchx_save_anno(["d", "a"], folder / "test.txt", remove_suffix=False)
    with pytest.raises(DataError, match=r"test.txt: line 2: id a is also listed in .*train.txt"):
        splits.load_split_file(folder, list("abcd"))
    benchx_save_anno(["d"], folder / "test.txt", remove_suffix=False)
    assert splits.load_split_file(folder, list("abcd")) == {
        "a": "train", "b": "train", "c": "val", "d": "test"}  # fmt: skip
    lovt_write_segmentation_csv_file(folder / "train.csv", ["a"])
    with pytest.raises(DataError, match="both LoVT CSVs and BenchX lists"):
        splits.load_split_file(folder, list("abcd"))
    (folder / "train.csv").unlink()
    (folder / "val.txt").write_text("c,val\n")
    with pytest.raises(DataError, match="val.txt: line 1: a split list has one id"):
        splits.load_split_file(folder, list("abcd"))


def test_lovt_id_header_in_a_single_csv(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("ID,split\r\na,train\r\nb,validation\r\nc,test\r\n")
    assert splits.load_split_file(f, list("abc")) == {"a": "train", "b": "val", "c": "test"}
    assert Path(f).read_bytes().count(b"\r\n") == 4
