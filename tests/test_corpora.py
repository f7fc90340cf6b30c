"""Tests for corpora/: each pretraining layout read exactly (MIMIC-CXR-JPG, CheXpert, OpenI, NIH
ChestX-ray14) from tiny fixtures written in the real layout, the report parser, the skipped
counts and errors of bad input, the decode-once image cache, and the synthetic corpus."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import corpora
from corpora import detect_layout, read_corpus
from corpora import images as cimages
from corpora.records import Report, frontal_of
from corpora.reports import findings_impression, parse_sections, split_sentences
from tasks.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _pixels(h: int = 40, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(60 + 3 * xx + 2 * yy + rng.integers(0, 5, (h, w)), 0, 255).astype(np.uint8)


def _jpg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed=seed)).save(path, format="JPEG", quality=95)
    return path


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed=seed)).save(path, format="PNG")
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


# --------------------------------------------------------------------------- reports

# as the real files are: one-space indent, " " on blank lines, a space after "FINDINGS:"
MIMIC_REPORT = "\n".join([
    "                                 FINAL REPORT",
    " EXAMINATION:  CHEST (PA AND LAT)", " ",
    " INDICATION:  ___F with new onset ascites  // eval for infection", " ",
    " TECHNIQUE:  Chest PA and lateral", " ",
    " COMPARISON:  None.", " ",
    " FINDINGS: ", " ",
    " There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral",
    " nodular opacities that most likely represent nipple shadows. The",
    " cardiomediastinal silhouette is normal.", " ",
    " IMPRESSION: ", " ",
    " No acute cardiopulmonary process.", "",
])  # fmt: skip


def test_report_sections_mimic_format():
    names = [n for n, _ in parse_sections(MIMIC_REPORT)]
    assert names == ["preamble", "examination", "indication", "technique", "comparison", "findings", "impression"]
    findings, impression = findings_impression(MIMIC_REPORT)
    assert findings == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
        "opacities that most likely represent nipple shadows. The cardiomediastinal silhouette is normal."
    )
    assert impression == "No acute cardiopulmonary process."
    assert Report(findings, impression).sentences() == [
        "There is no focal consolidation, pleural effusion or pneumothorax.",
        "Bilateral nodular opacities that most likely represent nipple shadows.",
        "The cardiomediastinal silhouette is normal.",
        "No acute cardiopulmonary process.",
    ]


def test_report_sections_case_whitespace_and_variants():
    text = (
        "\n\n   history:   cough\n\tFindings:lungs clear.   heart normal.\n"
        "   Impression :\n\n   1. No pneumonia. 2. Dr. ___ was notified at 10:30.\n"
    )
    assert findings_impression(text) == ("lungs clear. heart normal.",
                                         "1. No pneumonia. 2. Dr. ___ was notified at 10:30.")  # fmt: skip
    assert split_sentences("1. No pneumonia. 2. Dr. ___ was notified at 10:30.") == [
        "No pneumonia.", "Dr. ___ was notified at 10:30.",
    ]  # fmt: skip
    # a misspelt or merged impression counts as the impression; the last section of a name wins
    assert findings_impression(" FINDINGS AND IMPRESSION: No change.\n") == ("", "No change.")
    assert findings_impression(" IMPRESSON: Small effusion.\n") == ("", "Small effusion.")
    assert findings_impression(" FINDINGS: a.\n IMPRESSION: b.\n ADDENDUM: c.\n FINDINGS: d.\n") == ("d.", "b.")
    # body text with a colon is not a header; none of these reports has the two sections
    assert findings_impression(" INDICATION: pain\n heart size: normal\n") == ("", "")
    assert findings_impression("") == ("", "")
    assert split_sentences("  ") == []
    assert Report("", "").sentences() == []


def test_frontal_of():
    assert [frontal_of(v) for v in ("PA", "ap", "LATERAL", "LL", "", "AP AXIAL", "FRONTAL")] == [
        True, True, False, False, None, None, True,
    ]  # fmt: skip


# --------------------------------------------------------------------------- MIMIC-CXR-JPG

META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
CHEXPERT_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
    "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
    "Pneumothorax,Support Devices"
)
D1 = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"  # p10000032 s50414267 PA
D2 = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"  # p10000032 s50414267 LATERAL
D3 = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"  # p10000032 s53189527 AP
D4 = "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"  # p10000764 s57375967 PA (no report)
D5 = "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4"  # p10000898 s50771383 PA (empty report)
D6 = "8959e402-2175d68d-edba5a6c-baab51c3-9359f700"  # p10000935 s50578979 LL (report without sections)
D_NO_IMAGE = "ffffffff-00000000-11111111-22222222-33333333"


def _meta_row(dicom, subject, study, view):
    return f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect"


@pytest.fixture
def mimic_root(tmp_path) -> Path:
    root = tmp_path / "mimic-cxr-jpg" / "2.1.0"
    rows = [
        (D1, "10000032", "50414267", "PA"), (D2, "10000032", "50414267", "LATERAL"),
        (D3, "10000032", "53189527", "AP"), (D4, "10000764", "57375967", "PA"),
        (D5, "10000898", "50771383", "PA"), (D6, "10000935", "50578979", "LL"),
        (D_NO_IMAGE, "10000935", "50578979", "PA"),
    ]  # fmt: skip
    text = "\n".join([META_HEADER] + [_meta_row(*r) for r in rows]) + "\n"
    (root).mkdir(parents=True)
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    _write(root / "mimic-cxr-2.0.0-split.csv", "dicom_id,study_id,subject_id,split\n"
           + "".join(f"{d},{st},{s},train\n" for d, s, st, _ in rows))  # fmt: skip
    _write(root / "mimic-cxr-2.0.0-chexpert.csv", CHEXPERT_HEADER + "\n"
           "10000032,50414267,,0.0,,,,,,,,-1.0,,,1.0,\n"
           "10000032,53189527,,,,,,,,,1.0,,,,,\n")  # fmt: skip
    for i, (dicom, subject, study, _) in enumerate(rows[:-1]):
        _jpg(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", seed=i)
    # an image without a metadata row
    _jpg(root / "files/p10/p10000764/s57375967/aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee.jpg")
    # reports: next to the images, under reports/files/, one missing, one empty, one without sections
    _write(root / "files/p10/p10000032/s50414267.txt", MIMIC_REPORT)
    _write(root / "reports/files/p10/p10000032/s53189527.txt",
           " FINAL REPORT\n impression:   Interval increase of the right effusion.  No pneumothorax.\n")  # fmt: skip
    _write(root / "files/p10/p10000898/s50771383.txt", "  \n")
    _write(root / "files/p10/p10000935/s50578979.txt", " INDICATION: cough\n WET READ: no change\n")
    return root


def test_mimic_reads_every_field(mimic_root):
    assert detect_layout(mimic_root) == "mimic"
    c = read_corpus(mimic_root, views="all")
    assert (c.layout, c.dataset, c.synthetic) == ("mimic", "MIMIC-CXR-JPG", False)
    assert (c.has_reports, c.has_studies, c.has_views) == (True, True, True)
    assert [str(r.path) for r in c.records] == sorted(str(r.path) for r in c.records)
    by_id = {r.image_id: r for r in c.records}
    assert set(by_id) == {D1, D2, D3, D4, D5, D6}
    r = by_id[D1]
    assert (r.patient_id, r.study_id, r.view, r.frontal) == ("10000032", "50414267", "PA", True)
    assert r.path == mimic_root / "files/p10/p10000032/s50414267" / f"{D1}.jpg"
    assert r.report.impression == "No acute cardiopulmonary process."
    assert r.report.sentences()[0] == "There is no focal consolidation, pleural effusion or pneumothorax."
    assert r.labels["Pneumothorax"] == 1.0 and r.labels["Pleural Effusion"] == -1.0
    assert r.labels["Cardiomegaly"] == 0.0 and _nan(r.labels["No Finding"])
    assert by_id[D2].report == r.report and (by_id[D2].view, by_id[D2].frontal) == ("LATERAL", False)
    r3 = by_id[D3]
    assert (r3.view, r3.frontal, r3.study_id) == ("AP", True, "53189527")
    assert r3.report == Report("", "Interval increase of the right effusion. No pneumothorax.")
    assert r3.labels["No Finding"] == 1.0 and _nan(r3.labels["Pneumothorax"])
    # no chexpert row for this study: every label unknown
    assert all(_nan(v) for v in by_id[D4].labels.values()) and len(by_id[D4].labels) == 14
    assert by_id[D4].report is None and by_id[D5].report is None and by_id[D6].report is None
    assert (by_id[D6].view, by_id[D6].frontal) == ("LL", False)
    assert c.skipped == {
        "metadata row without image": 1,
        "image without metadata": 1,
        "missing report file": 1,
        "empty report file": 1,
        "report without FINDINGS or IMPRESSION": 1,
    }
    text = c.summary()
    assert "6 images, 4 patients, 5 studies" in text and "4 frontal / 2 lateral" in text
    assert "missing report file: 1" in text


def test_mimic_frontal_only(mimic_root):
    c = read_corpus(mimic_root)  # views="frontal"
    assert {r.image_id for r in c.records} == {D1, D3, D4, D5}
    assert c.skipped["not a frontal view (views=frontal)"] == 2
    # the report of the lateral-only study is not counted: that study is not in the corpus
    assert "report without FINDINGS or IMPRESSION" not in c.skipped


def test_mimic_missing_column_names_gz_file(mimic_root):
    path = mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(META_HEADER.replace(",ViewPosition", "") + "\n")
    with pytest.raises(DataError, match=r"metadata\.csv\.gz.*ViewPosition"):
        read_corpus(mimic_root)


def test_mimic_bad_label_and_wrong_folder(mimic_root):
    path = mimic_root / "mimic-cxr-2.0.0-chexpert.csv"
    _write(path, CHEXPERT_HEADER + "\n10000032,50414267,,yes,,,,,,,,,,,,\n")
    with pytest.raises(DataError, match=r"chexpert\.csv: line 2: column 'Cardiomegaly'"):
        read_corpus(mimic_root)
    _write(path, CHEXPERT_HEADER.replace(",Edema", "") + "\n")
    with pytest.raises(DataError, match=r"chexpert\.csv.*missing \['Edema'\]"):
        read_corpus(mimic_root)
    path.unlink()
    src = mimic_root / "files/p10/p10000764/s57375967" / f"{D4}.jpg"
    src.rename(src.parent.parent / "p10000764_wrong.jpg")
    _jpg(mimic_root / "files/p10/p10000764/s59999999" / f"{D4}.jpg")
    with pytest.raises(DataError, match=rf"line 5: dicom_id {D4}: subject_id 10000764 / study_id 57375967"):
        read_corpus(mimic_root)


# --------------------------------------------------------------------------- CheXpert

CHEXPERT_COLUMNS = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)


@pytest.fixture
def chexpert_root(tmp_path) -> Path:
    root = tmp_path / "chexpert"
    ds = root / "CheXpert-v1.0"
    _write(ds / "train.csv", CHEXPERT_COLUMNS + "\n"
           "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0\n"
           "CheXpert-v1.0/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,\n"
           "CheXpert-v1.0/train/patient00002/study2/view2_lateral.jpg,Female,87,Lateral,,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,\n"
           "CheXpert-v1.0/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,,,,1.0,,,,0.0,,,,\n")  # fmt: skip
    _write(ds / "valid.csv", CHEXPERT_COLUMNS + "\n"
           "CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n")  # fmt: skip
    for rel in ("train/patient00001/study1/view1_frontal.jpg", "train/patient00002/study2/view1_frontal.jpg",
                "train/patient00002/study2/view2_lateral.jpg", "valid/patient64541/study1/view1_frontal.jpg",
                "train/patient00004/study1/view1_frontal.jpg"):  # fmt: skip
        _jpg(ds / rel)
    return root


def test_chexpert_reads_every_field(chexpert_root):
    assert detect_layout(chexpert_root) == "chexpert"
    c = read_corpus(chexpert_root, views="all")
    assert (c.layout, c.dataset, c.has_reports, c.has_studies, c.has_views) == (
        "chexpert", "CheXpert", False, True, True)  # fmt: skip
    by_id = {r.image_id: r for r in c.records}
    assert sorted(by_id) == ["train/patient00001/study1/view1_frontal", "train/patient00002/study2/view1_frontal",
                             "train/patient00002/study2/view2_lateral", "valid/patient64541/study1/view1_frontal"]  # fmt: skip
    r = by_id["train/patient00002/study2/view1_frontal"]
    assert (r.patient_id, r.study_id, r.view, r.frontal, r.report) == (
        "patient00002", "patient00002/study2", "AP", True, None)  # fmt: skip
    assert r.labels["Cardiomegaly"] == -1.0 and r.labels["Lung Opacity"] == 1.0
    assert r.labels["Fracture"] == 1.0 and _nan(r.labels["Support Devices"]) and _nan(r.labels["No Finding"])
    lat = by_id["train/patient00002/study2/view2_lateral"]
    assert (lat.view, lat.frontal, lat.study_id) == ("LATERAL", False, "patient00002/study2")
    assert by_id["train/patient00001/study1/view1_frontal"].labels["No Finding"] == 1.0
    assert by_id["valid/patient64541/study1/view1_frontal"].labels["Cardiomegaly"] == 1.0
    assert c.skipped == {"metadata row without image": 1, "image without metadata": 1}
    frontal = read_corpus(chexpert_root)
    assert len(frontal.records) == 3 and frontal.skipped["not a frontal view (views=frontal)"] == 1
    # root may also be the CheXpert-v1.0 folder itself
    inner = read_corpus(chexpert_root / "CheXpert-v1.0", views="all")
    assert [r.path for r in inner.records] == [r.path for r in c.records]


def test_chexpert_missing_column(chexpert_root):
    csv = chexpert_root / "CheXpert-v1.0/train.csv"
    _write(csv, CHEXPERT_COLUMNS.replace(",Frontal/Lateral", "") + "\n")
    with pytest.raises(DataError, match=r"train\.csv: line 1: .*missing \['Frontal/Lateral'\]"):
        read_corpus(chexpert_root, "chexpert")


# --------------------------------------------------------------------------- NIH ChestX-ray14

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")  # fmt: skip


@pytest.fixture
def nih_root(tmp_path) -> Path:
    root = tmp_path / "nih"
    _write(root / "Data_Entry_2017.csv", NIH_HEADER + "\n"
           "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
           "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,\n"
           "00000002_000.png,No Finding,0,2,81,M,AP,2500,2048,0.171,0.171,\n"
           "00000003_000.png,Hernia,0,3,81,F,PA,2582,2991,0.143,0.143,\n")  # fmt: skip
    _png(root / "images_001/images/00000001_000.png")
    _png(root / "images_001/images/00000001_001.png")
    _png(root / "images_002/images/00000002_000.png")
    _png(root / "images_002/images/00000099_000.png")
    return root


def test_nih_reads_every_field(nih_root):
    assert detect_layout(nih_root) == "nih"
    c = read_corpus(nih_root)
    assert (c.dataset, c.has_reports, c.has_studies, c.has_views) == ("NIH ChestX-ray14", False, False, True)
    assert [r.image_id for r in c.records] == ["00000001_000", "00000001_001", "00000002_000"]
    r = c.records[1]
    assert (r.patient_id, r.study_id, r.view, r.frontal, r.report) == ("1", None, "PA", True, None)
    assert r.labels["Cardiomegaly"] == 1.0 and r.labels["Emphysema"] == 1.0 and r.labels["Effusion"] == 0.0
    assert c.records[2].view == "AP" and set(c.records[2].labels.values()) == {0.0}
    assert len(c.label_names) == 14 and "Pleural_Thickening" in c.label_names
    assert c.skipped == {"metadata row without image": 1, "image without metadata": 1}


def test_nih_bad_finding_and_missing_column(nih_root):
    csv = nih_root / "Data_Entry_2017.csv"
    _write(csv, NIH_HEADER + "\n00000001_000.png,Cardiomegaly|Pneumonitis,0,1,58,M,PA,1,1,1,1,\n")
    with pytest.raises(DataError, match=r"line 2: Image Index 00000001_000\.png: .*Pneumonitis"):
        read_corpus(nih_root)
    _write(csv, NIH_HEADER.replace("View Position,", "") + "\n")
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv: line 1: .*missing \['View Position'\]"):
        read_corpus(nih_root, "nih")


# --------------------------------------------------------------------------- OpenI

OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="{uid}"/>
   <pmcId id="{n}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">Positive TB test</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            {impression}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      {mesh}
   </MeSH>
   {images}
</eCitation>
"""


def _openi_xml(path, n, uid, findings, impression, mesh, images):
    imp = f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>' if impression is not None else ""
    mesh_xml = "".join(f"<major>{m}</major>" for m in mesh) + "<automatic>cardiomegaly</automatic>"
    img_xml = "".join(f'<parentImage id="{i}"><figureId>F{k + 1}</figureId><caption>Xray Chest PA and Lateral'
                      f'</caption><panel type="single"><url>/hadoop/storage/radiology/extract/{i}.jpg</url>'
                      "</panel></parentImage>" for k, i in enumerate(images))  # fmt: skip
    _write(path, OPENI_XML.format(uid=uid, n=n, findings=findings, impression=imp, mesh=mesh_xml, images=img_xml))


@pytest.fixture
def openi_root(tmp_path) -> Path:
    root = tmp_path / "openi"
    _openi_xml(root / "ecgen-radiology/1.xml", 1, "CXR1",
               "The cardiac silhouette is enlarged. There is no pneumothorax.",
               "Borderline cardiomegaly.", ["Cardiomegaly/borderline", "Pulmonary Atelectasis/base/left"],
               ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"])  # fmt: skip
    _openi_xml(root / "ecgen-radiology/2.xml", 2, "CXR2", "", None, ["normal"], ["CXR2_IM-0652-1001"])
    _openi_xml(root / "ecgen-radiology/10.xml", 10, "CXR10", "Clear lungs.", "Normal chest.", [],
               ["CXR10_IM-0044-1001"])  # fmt: skip
    for i in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001", "CXR99_IM-0001-1001"):
        _png(root / "NLMCXR_png" / f"{i}.png")
    return root


def test_openi_reads_every_field(openi_root):
    assert detect_layout(openi_root) == "openi"
    c = read_corpus(openi_root)  # views unknown: "frontal" keeps every image
    assert (c.dataset, c.has_reports, c.has_studies, c.has_views) == ("OpenI", True, True, False)
    assert [r.image_id for r in c.records] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001"]
    r = c.records[0]
    assert (r.patient_id, r.study_id, r.view, r.frontal) == ("CXR1", "CXR1", "", None)
    assert r.report.sentences() == ["The cardiac silhouette is enlarged.", "There is no pneumothorax.",
                                    "Borderline cardiomegaly."]  # fmt: skip
    assert r.labels["Cardiomegaly"] == 1.0 and r.labels["Atelectasis"] == 1.0 and r.labels["No Finding"] == 0.0
    r2 = c.records[2]
    assert r2.report is None and r2.labels["No Finding"] == 1.0 and r2.labels["Cardiomegaly"] == 0.0
    assert c.skipped == {"report without FINDINGS or IMPRESSION": 1, "metadata row without image": 1,
                         "image without metadata": 1}  # fmt: skip


def test_openi_projections_file(openi_root):
    _write(openi_root / "indiana_projections.csv", "uid,filename,projection\n"
           "1,1_IM-0001-4001.dcm.png,Frontal\n1,1_IM-0001-3001.dcm.png,Lateral\n2,2_IM-0652-1001.dcm.png,Frontal\n")  # fmt: skip
    c = read_corpus(openi_root, views="all")
    assert c.has_views
    assert [(r.image_id, r.view, r.frontal) for r in c.records] == [
        ("CXR1_1_IM-0001-3001", "LATERAL", False), ("CXR1_1_IM-0001-4001", "FRONTAL", True),
        ("CXR2_IM-0652-1001", "FRONTAL", True),
    ]  # fmt: skip
    assert [r.image_id for r in read_corpus(openi_root).records] == ["CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001"]


def test_openi_broken_xml(openi_root):
    _write(openi_root / "ecgen-radiology/2.xml", "<eCitation><uId id='CXR2'/>")
    with pytest.raises(DataError, match=r"2\.xml: not a readable report XML"):
        read_corpus(openi_root)


# --------------------------------------------------------------------------- detection


def test_no_layout_names_what_each_expects(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        detect_layout(tmp_path / "empty")
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg
    for needle in ("mimic: mimic-cxr-2.0.0-metadata.csv", "chexpert: CheXpert-v1.0/train.csv",
                   "openi: ecgen-radiology/", "nih: Data_Entry_2017.csv"):  # fmt: skip
        assert needle in msg
    with pytest.raises(DataError, match="not found"):
        read_corpus(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="views"):
        read_corpus(tmp_path / "empty", views="lateral")
    assert corpora.LAYOUTS == ("mimic", "chexpert", "openi", "nih")


# --------------------------------------------------------------------------- synthetic corpus


@pytest.fixture(scope="module")
def synth_pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    a = corpora.synth(base / "a", n_patients=8, seed=3, size=48, progress=False)
    b = corpora.synth(base / "b", n_patients=8, seed=3, size=48, progress=False)
    return base / "a", base / "b", a, b


def test_synth_is_deterministic(synth_pair):
    a, b, sa, sb = synth_pair
    assert {k: v for k, v in sa.items() if k != "out"} == {k: v for k, v in sb.items() if k != "out"}
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        if rel.suffix in (".csv", ".txt"):
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        else:
            assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel))), rel
    c = corpora.synth(a.parent / "c", n_patients=8, seed=4, size=48, progress=False)
    assert c["n_images"] != sa["n_images"] or (a.parent / "c/mimic-cxr-2.0.0-metadata.csv").read_bytes() != (
        a / "mimic-cxr-2.0.0-metadata.csv").read_bytes()  # fmt: skip


def test_synth_read_back(synth_pair):
    root = synth_pair[0]
    c = read_corpus(root, views="all")
    assert (c.layout, c.synthetic, c.has_reports, c.has_studies, c.has_views) == ("mimic", True, True, True, True)
    assert c.skipped == {}
    assert len(c.records) == synth_pair[2]["n_images"]
    studies: dict[str, set] = {}
    for r in c.records:
        studies.setdefault(r.patient_id, set()).add(r.study_id)
    assert max(len(s) for s in studies.values()) >= 2
    assert {r.frontal for r in c.records} == {True, False}
    assert {r.view for r in c.records} <= {"PA", "AP", "LATERAL", "LL"}
    for r in c.records:
        words = " ".join(r.report.sentences()).lower()
        if r.labels["Pneumothorax"] == 1.0:
            assert "pneumothora" in words and ("right" in words or "left" in words)
        else:
            assert "no pneumothorax" in words or "or pneumothorax" in words
        if r.labels["Cardiomegaly"] == 0.0:
            assert "normal" in words
        if r.labels["Pleural Effusion"] == 1.0:
            assert any(s in words for s in ("small", "moderate", "large"))
    assert read_corpus(root).records and all(r.frontal for r in read_corpus(root).records)


# --------------------------------------------------------------------------- decode_images


def test_decode_images_cache_reuse_and_truncated(tmp_path, monkeypatch, capsys):
    root = tmp_path / "corpus"
    corpora.synth(root, n_patients=3, seed=1, size=40, progress=False)
    corpus = read_corpus(root, views="all")
    victim = corpus.records[1].path
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    corpus = read_corpus(root, views="all")

    calls = []
    real = cimages.read_image
    monkeypatch.setattr(cimages, "read_image", lambda p, s=None: calls.append(p) or real(p, s))
    images, records, skipped = corpora.decode_images(corpus, 32, progress=False)
    assert images.dtype == np.uint8 and images.shape == (len(corpus.records) - 1, 32, 32)
    assert skipped == {"unreadable image": 1}
    assert records == [r for r in corpus.records if r.path != victim]
    assert str(victim) in capsys.readouterr().err
    assert len(calls) == len(corpus.records)
    # the second call reads the cache: nothing decoded again
    calls.clear()
    again, records2, skipped2 = corpora.decode_images(read_corpus(root, views="all"), 32, progress=False)
    assert calls == [] and np.array_equal(again, images) and records2 == records and skipped2 == skipped
    assert str(victim) in capsys.readouterr().err
    first = np.asarray(Image.open(records[0].path).convert("L").resize((32, 32), Image.Resampling.BOX))
    assert np.abs(images[0].astype(int) - first.astype(int)).max() <= 2
    # a changed file is a new key; another size too
    os.utime(records[0].path, ns=(1, 1))
    corpora.decode_images(read_corpus(root, views="all"), 32, progress=False)
    assert len(calls) == len(corpus.records)


def test_decode_images_interrupted_leaves_nothing(tmp_path, monkeypatch, _cache):
    root = tmp_path / "corpus"
    corpora.synth(root, n_patients=2, seed=2, size=40, progress=False)
    corpus = read_corpus(root, views="all")
    real, calls = cimages.read_image, []

    def flaky(p, s=None):
        calls.append(p)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(p, s)

    monkeypatch.setattr(cimages, "read_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        corpora.decode_images(corpus, 32, progress=False)
    assert [p.name for p in (_cache / "pretrain").iterdir()] == [".locks"]  # lock files only
    monkeypatch.setattr(cimages, "read_image", real)
    images, records, skipped = corpora.decode_images(corpus, 32, progress=False)
    assert len(records) == len(corpus.records) and skipped == {}
    assert sorted(p.name for p in (_cache / "pretrain").iterdir()) == [".locks", cimages.cache_key(corpus, 32)]
