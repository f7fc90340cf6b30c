"""The NIH ChestX-ray14 layout (NIH Clinical Center, as on its Box folder and Kaggle).

Owns: :func:`detect` and :func:`read` of a ChestX-ray14 root::

    Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv)
        Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, Patient Gender
        (Patient Sex in v2020), View Position, OriginalImage[Width, Height],
        OriginalImagePixelSpacing[x, y]
    images/00000001_000.png   or   images_001/images/ ... images_012/images/

The two bracketed headers hold an unquoted comma, so each is two columns
("OriginalImage[Width", "Height]"), and the 2017 file ends every line with a comma;
only Image Index, Finding Labels, Follow-up #, Patient ID and View Position are read.
Finding Labels is "|"-separated over the 14 findings below, or "No Finding" (all 14
negative): there is no uncertain or blank label. View Position is "PA" or "AP", so every
image is frontal. There are no reports, and no studies: each image is its own visit
(``Follow-up #`` numbers a patient's visits, one image each), so ``study_id`` is None and
``has_studies`` False. ChestX-ray14 contains the RSNA Pneumonia images (the corpus's
data set name "NIH ChestX-ray14" is what the RSNA task declares as its image source).
"""

from __future__ import annotations

from pathlib import Path

from corpora.records import (
    SKIP_IMAGE_WITHOUT_ROW,
    SKIP_NOT_FRONTAL,
    SKIP_ROW_WITHOUT_IMAGE,
    Corpus,
    ImageRecord,
    count,
    find_table,
    frontal_of,
    read_table,
    scan_files,
)
from tasks.errors import DataError

LAYOUT = "nih"
DATASET = "NIH ChestX-ray14"
TABLES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position")
NO_FINDING = "No Finding"
LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)  # fmt: skip
EXPECTS = (
    "nih: Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv) with Image Index, Finding Labels, "
    "Patient ID, View Position, and the PNGs under images/ or images_001/images/ ... "
    "images_012/images/"
)


def table_path(root: Path) -> Path | None:
    for name in TABLES:
        found = find_table(root, name)
        if found is not None:
            return found
    return None


def image_dirs(root: Path) -> list[Path]:
    dirs = [root / "images"] if (root / "images").is_dir() else []
    dirs += sorted(p / "images" for p in root.glob("images_[0-9][0-9][0-9]") if (p / "images").is_dir())
    return dirs


def detect(root: Path) -> bool:
    return table_path(root) is not None and bool(image_dirs(root))


def read(root: Path, *, views: str = "frontal") -> Corpus:
    root = Path(root)
    path = table_path(root)
    if path is None:
        raise DataError(f"{root}: no Data_Entry_2017.csv; expected {EXPECTS}")
    images: dict[str, Path] = {}
    for folder in image_dirs(root):
        for p in scan_files(folder, (".png",)):
            if p.name in images:
                raise DataError(f"{p}: image {p.name} also at {images[p.name]}")
            images[p.name] = p
    table = read_table(path, COLUMNS, what="ChestX-ray14 data entry file", id_column="Image Index",
                       short_rows="pad_optional")  # fmt: skip
    skipped: dict[str, int] = {}
    records = []
    listed: set[str] = set()
    for line, row in table.rows:
        name, patient = row["Image Index"].strip(), row["Patient ID"].strip()
        if not name or not patient:
            raise DataError(f"{path}: line {line}: Image Index {name!r}: needs an Image Index and a Patient ID")
        if name in listed:
            raise DataError(f"{path}: line {line}: Image Index {name} appears twice")
        listed.add(name)
        labels = _labels(row["Finding Labels"], path, line, name)
        image = images.get(name)
        if image is None:
            count(skipped, SKIP_ROW_WITHOUT_IMAGE)
            continue
        view = " ".join(row["View Position"].upper().split())
        frontal = frontal_of(view)
        if views == "frontal" and frontal is not True:
            count(skipped, SKIP_NOT_FRONTAL)
            continue
        records.append(ImageRecord(
            image_id=Path(name).stem, path=image, patient_id=patient, study_id=None, view=view,
            frontal=frontal, report=None, labels=labels,
        ))  # fmt: skip
    count(skipped, SKIP_IMAGE_WITHOUT_ROW, len(set(images) - listed))
    records.sort(key=lambda r: str(r.path))
    return Corpus(
        layout=LAYOUT, dataset=DATASET, root=root, records=records, label_names=LABELS,
        has_reports=False, has_studies=False, has_views=True, skipped=skipped,
    )  # fmt: skip


def _labels(cell: str, path: Path, line: int, name: str) -> dict[str, float]:
    findings = [f.strip() for f in cell.split("|") if f.strip()]
    if findings == [NO_FINDING]:
        return {n: 0.0 for n in LABELS}
    unknown = [f for f in findings if f not in LABELS]
    if not findings or unknown:
        raise DataError(
            f"{path}: line {line}: Image Index {name}: Finding Labels {cell.strip()!r}: "
            f"expected '{NO_FINDING}' or '|'-separated findings of {list(LABELS)}"
        )
    return {n: float(n in findings) for n in LABELS}
