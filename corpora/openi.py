"""The OpenI layout: the Indiana University chest X-ray collection (NLM Open-i, free to download).

Owns: :func:`detect` and :func:`read` of an OpenI root, as the NLM archives
``NLMCXR_png.tgz`` and ``NLMCXR_reports.tgz`` unpack::

    NLMCXR_png/CXR1_1_IM-0001-3001.png
    ecgen-radiology/1.xml         one report: <eCitation> with <uId id="CXR1"/>,
        <AbstractText Label="COMPARISON|INDICATION|FINDINGS|IMPRESSION">,
        <MeSH><major>Cardiomegaly/borderline</major>...<automatic>...</automatic></MeSH>,
        and one <parentImage id="CXR1_1_IM-0001-3001"> per image (NLMCXR_png/<id>.png)
    indiana_projections.csv       optional: uid, filename, projection (Frontal / Lateral),
                                  from Kaggle's re-export ("raddar/chest-xrays-indiana-university")

One report is one study (its uId, e.g. "CXR1"). **The collection has no patient
identifier**: the de-identification removed it, so ``patient_id`` is the study id and
two studies of one patient cannot be told apart. The XML does not say which image is
frontal, so ``has_views`` is False (and ``views="frontal"`` keeps every image) unless
``indiana_projections.csv`` is present; its ``filename`` is the DICOM name of the image
plus ``.dcm.png`` (``1_IM-0001-4001.dcm.png`` is ``CXR1_1_IM-0001-4001``,
``2_IM-0652-1001.dcm.png`` is ``CXR2_IM-0652-1001``) and its projection gives the view
"FRONTAL" or "LATERAL". Labels come from the MeSH ``<major>`` terms: a label is 1 when
one of its headings (the term before the first "/") is among them, 0 otherwise, nan
when the report has no MeSH terms at all; "normal" is "No Finding".
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from corpora.records import (
    SKIP_IMAGE_WITHOUT_ROW,
    SKIP_NO_SECTIONS,
    SKIP_NOT_FRONTAL,
    SKIP_ROW_WITHOUT_IMAGE,
    Corpus,
    ImageRecord,
    Report,
    count,
    find_table,
    frontal_of,
    read_table,
    scan_files,
    unknown_labels,
)
from tasks.errors import DataError

LAYOUT = "openi"
DATASET = "OpenI"
IMAGE_DIR = "NLMCXR_png"
REPORT_DIR = "ecgen-radiology"
PROJECTIONS = "indiana_projections.csv"
PROJECTION_COLUMNS = ("uid", "filename", "projection")
EXPECTS = (
    f"openi: {REPORT_DIR}/<n>.xml (Indiana University reports with <parentImage id=...>) and "
    f"{IMAGE_DIR}/<image id>.png (optional: {PROJECTIONS})"
)

# label -> MeSH headings (the term before the first "/", compared case-insensitively)
MESH_LABELS = {
    "No Finding": ("normal",),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": ("opacity", "density", "infiltrate", "airspace disease"),
    "Pleural Effusion": ("pleural effusion",),
    "Pneumothorax": ("pneumothorax",),
    "Atelectasis": ("pulmonary atelectasis", "atelectasis"),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia",),
    "Edema": ("pulmonary edema", "edema", "pulmonary congestion"),
    "Fracture": ("fractures, bone",),
    "Support Devices": ("catheters, indwelling", "medical device", "implanted medical device",
                        "tube, inserted", "pacemaker, artificial"),
}  # fmt: skip
LABELS = tuple(MESH_LABELS)

_IMAGE_ID = re.compile(r"^CXR(\d+)_(?:\1_)?(.+)$")


def detect(root: Path) -> bool:
    return (root / REPORT_DIR).is_dir() and (root / IMAGE_DIR).is_dir()


def dicom_name(image_id: str) -> str:
    """The DICOM file name (without .dcm) of a parentImage id, as Kaggle's projections file
    names it: CXR1_1_IM-0001-4001 -> 1_IM-0001-4001, CXR2_IM-0652-1001 -> 2_IM-0652-1001."""
    m = _IMAGE_ID.match(image_id)
    return f"{m.group(1)}_{m.group(2)}" if m else image_id


def read(root: Path, *, views: str = "frontal") -> Corpus:
    root = Path(root)
    if not detect(root):
        raise DataError(f"{root}: not an OpenI folder; expected {EXPECTS}")
    images = {p.stem: p for p in scan_files(root / IMAGE_DIR, (".png",))}
    projections = _projections(root)
    has_views = projections is not None
    skipped: dict[str, int] = {}
    records = []
    listed: set[str] = set()
    for xml in sorted(scan_files(root / REPORT_DIR, (".xml",)), key=_number_then_name):
        study, report, labels, image_ids = _parse(xml, skipped)
        for image_id in image_ids:
            if image_id in listed:
                raise DataError(f"{xml}: parentImage {image_id} is also in another report")
            listed.add(image_id)
            image = images.get(image_id)
            if image is None:
                count(skipped, SKIP_ROW_WITHOUT_IMAGE)
                continue
            view = projections.get(dicom_name(image_id), "") if has_views else ""
            frontal = frontal_of(view) if view else None
            if views == "frontal" and has_views and frontal is not True:
                count(skipped, SKIP_NOT_FRONTAL)
                continue
            records.append(ImageRecord(
                image_id=image_id, path=image, patient_id=study, study_id=study, view=view,
                frontal=frontal, report=report, labels=labels,
            ))  # fmt: skip
    count(skipped, SKIP_IMAGE_WITHOUT_ROW, len(set(images) - listed))
    records.sort(key=lambda r: str(r.path))
    return Corpus(
        layout=LAYOUT, dataset=DATASET, root=root, records=records, label_names=LABELS,
        has_reports=True, has_studies=True, has_views=has_views, skipped=skipped,
    )  # fmt: skip


def _number_then_name(path: Path):
    return (int(path.stem) if path.stem.isdigit() else float("inf"), path.name)


def _parse(xml: Path, skipped: dict[str, int]) -> tuple[str, Report | None, dict[str, float], list[str]]:
    """(study id, report or None, labels, parentImage ids) of one ecgen-radiology XML."""
    try:
        tree = ET.parse(xml)
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{xml}: not a readable report XML ({e})") from e
    top = tree.getroot()
    uid = top.find("uId")
    study = (uid.get("id") or "").strip() if uid is not None else ""
    study = study or f"CXR{xml.stem}"
    sections = {}
    for el in top.iter("AbstractText"):
        label = (el.get("Label") or "").strip().upper()
        sections[label] = " ".join("".join(el.itertext()).split())
    findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
    report = Report(findings=findings, impression=impression) if findings or impression else None
    if report is None:
        count(skipped, SKIP_NO_SECTIONS)
    terms = [" ".join((m.text or "").split()) for m in top.findall(".//MeSH/major")]
    terms = [t for t in terms if t]
    image_ids = [(p.get("id") or "").strip() for p in top.iter("parentImage")]
    bad = [i for i in image_ids if not i]
    if bad:
        raise DataError(f"{xml}: a <parentImage> without an id")
    return study, report, _labels(terms), image_ids


def _labels(terms: list[str]) -> dict[str, float]:
    if not terms:
        return unknown_labels(LABELS)
    headings = {t.split("/", 1)[0].strip().lower() for t in terms}
    return {name: float(any(h in headings for h in heads)) for name, heads in MESH_LABELS.items()}


def _projections(root: Path) -> dict[str, str] | None:
    """{DICOM name: "FRONTAL" | "LATERAL"} from indiana_projections.csv, or None without it."""
    path = find_table(root, PROJECTIONS)
    if path is None:
        return None
    table = read_table(path, PROJECTION_COLUMNS, what="OpenI projections file", id_column="filename")
    out = {}
    for line, row in table.rows:
        name, projection = row["filename"].strip(), row["projection"].strip().upper()
        if projection not in ("FRONTAL", "LATERAL"):
            raise DataError(
                f"{path}: line {line}: filename {name}: projection {row['projection']!r}, "
                "expected Frontal or Lateral"
            )
        for suffix in (".dcm.png", ".png", ".dcm"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        out[name] = projection
    return out
