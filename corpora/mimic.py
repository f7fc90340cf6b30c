"""The MIMIC-CXR-JPG layout (PhysioNet, v2.0.0 / v2.1.0), with the MIMIC-CXR reports.

Owns: :func:`detect` and :func:`read` of a MIMIC-CXR-JPG root, laid out as PhysioNet
ships it::

    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id,
        PerformedProcedureStepDescription, ViewPosition, Rows, Columns, StudyDate,
        StudyTime, ProcedureCodeSequence_CodeMeaning, ViewCodeSequence_CodeMeaning,
        PatientOrientationCodeSequence_CodeMeaning
    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (optional)
    mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, the 14 CheXpert labels
                                        (1.0 / 0.0 / -1.0 / blank; optional, per study)

and the free-text reports of MIMIC-CXR (``mimic-cxr-reports.zip``), one per study at
``files/p10/p10000032/s50414267.txt``, looked for under ``files/`` next to the images,
``reports/files/`` or ``mimic-cxr-reports/files/``. The image folder is
``p<first 2 digits of subject_id>/p<subject_id>/s<study_id>/<dicom_id>.jpg``; the
metadata file is the truth for subject, study and view, and an image whose folder
disagrees with it is an error. ViewPosition is kept as written ("PA", "AP",
"LATERAL", "LL", "AP AXIAL", ... or "" when blank); PA/AP are frontal, LATERAL/LL
lateral, the rest unknown. The split file, when present, is only checked (its columns).
"""

from __future__ import annotations

from pathlib import Path

from corpora.records import (
    SKIP_EMPTY_REPORT,
    SKIP_IMAGE_WITHOUT_ROW,
    SKIP_NO_REPORT,
    SKIP_NO_SECTIONS,
    SKIP_NOT_FRONTAL,
    SKIP_ROW_WITHOUT_IMAGE,
    Corpus,
    ImageRecord,
    Report,
    count,
    find_table,
    frontal_of,
    label_value,
    read_table,
    scan_files,
    unknown_labels,
)
from corpora.reports import findings_impression
from tasks.errors import DataError

LAYOUT = "mimic"
DATASET = "MIMIC-CXR-JPG"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
IMAGE_DIR = "files"
REPORT_DIRS = ("files", "reports/files", "mimic-cxr-reports/files")

METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
# column order of mimic-cxr-2.0.0-chexpert.csv (alphabetical, unlike CheXpert's own train.csv)
LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
    "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)  # fmt: skip

EXPECTS = (
    f"mimic: {METADATA}[.gz] and {IMAGE_DIR}/p<NN>/p<subject_id>/s<study_id>/<dicom_id>.jpg "
    f"(optional: {CHEXPERT}[.gz], {SPLIT}[.gz], reports s<study_id>.txt)"
)


def detect(root: Path) -> bool:
    return find_table(root, METADATA) is not None and (root / IMAGE_DIR).is_dir()


def read(root: Path, *, views: str = "frontal") -> Corpus:
    root = Path(root)
    meta_path = find_table(root, METADATA)
    if meta_path is None:
        raise DataError(f"{root}: no {METADATA}[.gz]; expected {EXPECTS}")
    meta = read_table(meta_path, METADATA_COLUMNS, what="MIMIC-CXR-JPG metadata", id_column="dicom_id")
    split_path = find_table(root, SPLIT)
    if split_path is not None:
        read_table(split_path, SPLIT_COLUMNS, what="MIMIC-CXR-JPG split file", id_column="dicom_id")
    labels, label_names = _labels(root)
    images = _images(root)
    reports = _report_files(root)
    skipped: dict[str, int] = {}

    records_rows = []
    seen: set[str] = set()
    for line, row in meta.rows:
        dicom, subject, study = (row[c].strip() for c in ("dicom_id", "subject_id", "study_id"))
        if not dicom or not subject.isdigit() or not study.isdigit():
            raise DataError(
                f"{meta_path}: line {line}: dicom_id {dicom!r}: needs a dicom_id and numeric "
                f"subject_id / study_id, got subject_id {subject!r}, study_id {study!r}"
            )
        if dicom in seen:
            raise DataError(f"{meta_path}: line {line}: dicom_id {dicom} appears twice")
        seen.add(dicom)
        path = images.pop(dicom, None)
        if path is None:
            count(skipped, SKIP_ROW_WITHOUT_IMAGE)
            continue
        if path.parent.name != f"s{study}" or path.parent.parent.name != f"p{subject}":
            raise DataError(
                f"{meta_path}: line {line}: dicom_id {dicom}: subject_id {subject} / study_id "
                f"{study} but the image is at {path} (expected p{subject[:2]}/p{subject}/s{study}/)"
            )
        view = " ".join(row["ViewPosition"].upper().split())
        frontal = frontal_of(view)
        if views == "frontal" and frontal is not True:
            count(skipped, SKIP_NOT_FRONTAL)
            continue
        records_rows.append((dicom, path, subject, study, view, frontal))
    count(skipped, SKIP_IMAGE_WITHOUT_ROW, len(images))

    parsed = _read_reports(reports, {(s, t) for _, _, s, t, _, _ in records_rows}, skipped)
    records = [
        ImageRecord(
            image_id=dicom,
            path=path,
            patient_id=subject,
            study_id=study,
            view=view,
            frontal=frontal,
            report=parsed.get((subject, study)),
            labels=labels.get((subject, study)) or unknown_labels(label_names),
        )
        for dicom, path, subject, study, view, frontal in records_rows
    ]
    records.sort(key=lambda r: str(r.path))
    return Corpus(
        layout=LAYOUT, dataset=DATASET, root=root, records=records, label_names=label_names,
        has_reports=bool(reports), has_studies=True, has_views=True, skipped=skipped,
    )  # fmt: skip


def _labels(root: Path) -> tuple[dict[tuple[str, str], dict[str, float]], tuple[str, ...]]:
    """Study-level labels {(subject_id, study_id): {label: value}} from the chexpert file."""
    path = find_table(root, CHEXPERT)
    if path is None:
        return {}, ()
    table = read_table(path, ("subject_id", "study_id", *LABELS), what="MIMIC-CXR-JPG CheXpert labels",
                       id_column="study_id")  # fmt: skip
    out = {}
    for line, row in table.rows:
        key = (row["subject_id"].strip(), row["study_id"].strip())
        if key in out:
            raise DataError(f"{path}: line {line}: study_id {key[1]} appears twice")
        out[key] = {n: label_value(row[n], path=path, line=line, column=n) for n in LABELS}
    return out, LABELS


def _images(root: Path) -> dict[str, Path]:
    """{dicom_id: path} of every .jpg under files/."""
    images: dict[str, Path] = {}
    for path in scan_files(root / IMAGE_DIR, (".jpg", ".jpeg")):
        if path.stem in images:
            raise DataError(f"{path}: dicom_id {path.stem} also at {images[path.stem]}")
        images[path.stem] = path
    return images


def _report_files(root: Path) -> dict[tuple[str, str], Path]:
    """{(subject_id, study_id): path} of the reports (p<NN>/p<subject>/s<study>.txt), the first
    report folder of REPORT_DIRS winning."""
    found: dict[tuple[str, str], Path] = {}
    for folder in REPORT_DIRS:
        for path in scan_files(root / folder, (".txt",)):
            subject, study = path.parent.name, path.stem
            if subject[:1] == "p" and subject[1:].isdigit() and study[:1] == "s" and study[1:].isdigit():
                found.setdefault((subject[1:], study[1:]), path)
    return found


def _read_reports(
    files: dict[tuple[str, str], Path], studies: set[tuple[str, str]], skipped: dict[str, int]
) -> dict[tuple[str, str], Report]:
    """The parsed report of each study in studies; missing, empty and section-less reports are
    counted (once per study) and left out. Nothing is counted when there are no reports at all."""
    out = {}
    if not files:
        return out
    for key in sorted(studies):
        path = files.get(key)
        if path is None:
            count(skipped, SKIP_NO_REPORT)
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise DataError(f"{path}: cannot read report ({e})") from e
        if not text.strip():
            count(skipped, SKIP_EMPTY_REPORT)
            continue
        findings, impression = findings_impression(text)
        if not findings and not impression:
            count(skipped, SKIP_NO_SECTIONS)
            continue
        out[key] = Report(findings=findings, impression=impression)
    return out
