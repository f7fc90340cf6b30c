"""The CheXpert layout (Stanford ML Group, CheXpert-v1.0 and its downsampled CheXpert-v1.0-small).

Owns: :func:`detect` and :func:`read` of a CheXpert root: the folder that contains
``CheXpert-v1.0/`` (or ``CheXpert-v1.0-small/``), or that folder itself::

    CheXpert-v1.0/train.csv, valid.csv (valid optional)
        Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, Enlarged Cardiomediastinum,
        Cardiomegaly, Lung Opacity, Lung Lesion, Edema, Consolidation, Pneumonia,
        Atelectasis, Pneumothorax, Pleural Effusion, Pleural Other, Fracture,
        Support Devices            (labels 1.0 / 0.0 / -1.0 / blank)
    CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg

``Path`` is relative to the folder containing ``CheXpert-v1.0/`` and starts with that
folder's name. Patient and study come from the path (``patient00001``, and
``patient00001/study1``: study numbers restart for every patient); the image id is the
path inside the data set folder without ``.jpg`` (``train/patient00001/study1/view1_frontal``).
Frontal/Lateral decides the view class; the view is the AP/PA column for a frontal
image ("AP", "PA", or "" when blank) and "LATERAL" for a lateral one. CheXpert ships
no reports.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from corpora.records import (
    CHEXPERT_LABELS,
    SKIP_IMAGE_WITHOUT_ROW,
    SKIP_NOT_FRONTAL,
    SKIP_ROW_WITHOUT_IMAGE,
    Corpus,
    ImageRecord,
    count,
    label_value,
    read_table,
    scan_files,
)
from tasks.errors import DataError

LAYOUT = "chexpert"
DATASET = "CheXpert"
FOLDERS = ("CheXpert-v1.0", "CheXpert-v1.0-small")
TABLES = ("train.csv", "valid.csv")
COLUMNS = ("Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
EXPECTS = (
    "chexpert: CheXpert-v1.0/train.csv (Path, Sex, Age, Frontal/Lateral, AP/PA, 14 labels) and "
    "CheXpert-v1.0/train/patient<N>/study<N>/view<N>_<frontal|lateral>.jpg (root = the folder "
    "holding CheXpert-v1.0/, or CheXpert-v1.0 itself)"
)


def dataset_dir(root: Path) -> Path | None:
    """The CheXpert-v1.0 folder of root (root itself when it holds train.csv), or None."""
    root = Path(root)
    if (root / "train.csv").is_file() and (root.name in FOLDERS or (root / "train").is_dir()):
        return root
    for name in FOLDERS:
        if (root / name / "train.csv").is_file():
            return root / name
    return None


def detect(root: Path) -> bool:
    return dataset_dir(root) is not None


def read(root: Path, *, views: str = "frontal") -> Corpus:
    root = Path(root)
    folder = dataset_dir(root)
    if folder is None:
        raise DataError(f"{root}: no CheXpert-v1.0/train.csv; expected {EXPECTS}")
    images = {p.relative_to(folder).as_posix(): p for p in scan_files(folder, (".jpg", ".jpeg"))}
    skipped: dict[str, int] = {}
    records: list[ImageRecord] = []
    listed: set[str] = set()
    for name in TABLES:
        path = folder / name
        if name != "train.csv" and not path.is_file():
            continue
        table = read_table(path, COLUMNS, what="CheXpert label file", id_column="Path")
        for line, row in table.rows:
            rel, patient, study = _parse_path(row["Path"], folder, path, line)
            if rel in listed:
                raise DataError(f"{path}: line {line}: Path {row['Path'].strip()} appears twice")
            listed.add(rel)
            image = images.get(rel)
            if image is None:
                count(skipped, SKIP_ROW_WITHOUT_IMAGE)
                continue
            fl = row["Frontal/Lateral"].strip()
            if fl not in ("Frontal", "Lateral"):
                raise DataError(
                    f"{path}: line {line}: Path {row['Path'].strip()}: Frontal/Lateral is {fl!r}, "
                    "expected Frontal or Lateral"
                )
            frontal = fl == "Frontal"
            if views == "frontal" and not frontal:
                count(skipped, SKIP_NOT_FRONTAL)
                continue
            view = " ".join(row["AP/PA"].upper().split()) if frontal else "LATERAL"
            labels = {n: label_value(row[n], path=path, line=line, column=n) for n in CHEXPERT_LABELS}
            records.append(ImageRecord(
                image_id=rel.rsplit(".", 1)[0], path=image, patient_id=patient,
                study_id=f"{patient}/{study}", view=view, frontal=frontal, report=None, labels=labels,
            ))  # fmt: skip
    count(skipped, SKIP_IMAGE_WITHOUT_ROW, len(set(images) - listed))
    records.sort(key=lambda r: str(r.path))
    return Corpus(
        layout=LAYOUT, dataset=DATASET, root=root, records=records, label_names=CHEXPERT_LABELS,
        has_reports=False, has_studies=True, has_views=True, skipped=skipped,
    )  # fmt: skip


def _parse_path(value: str, folder: Path, table: Path, line: int) -> tuple[str, str, str]:
    """(path inside the data set folder, patient, study) of a Path cell."""
    parts = PurePosixPath(value.strip().replace("\\", "/")).parts
    if parts and (parts[0] == folder.name or parts[0] in FOLDERS):
        parts = parts[1:]
    ok = (
        len(parts) == 4
        and parts[1].startswith("patient")
        and parts[1][7:].isdigit()
        and parts[2].startswith("study")
        and parts[2][5:].isdigit()
    )
    if not ok:
        raise DataError(
            f"{table}: line {line}: Path {value.strip()!r} is not "
            "CheXpert-v1.0/<split>/patient<N>/study<N>/<view>.jpg"
        )
    return "/".join(parts), parts[1], parts[2]
