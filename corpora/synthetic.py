"""A synthetic pretraining corpus in the MIMIC-CXR-JPG layout, with reports that describe the images.

Owns: :func:`synth` (``bench synth --task pretrain``), the findings model (:class:`Findings`:
what one study shows, and how it changes from one study of a patient to the next),
the frontal findings drawn through :func:`tasks.synthetic.render_chest`'s lesion hook
(:class:`FrontalLesions`), the lateral renderer (:func:`render_lateral`) and the report
writer (:func:`report_text`).

What is written (MIMIC-CXR-JPG + the MIMIC-CXR reports, as :mod:`corpora.mimic` reads
them): ``files/p<NN>/p<subject>/s<study>/<dicom_id>.jpg`` (JPEG, quality 95),
``files/p<NN>/p<subject>/s<study>.txt`` (the report: EXAMINATION, INDICATION,
TECHNIQUE, COMPARISON, FINDINGS, IMPRESSION), ``mimic-cxr-2.0.0-metadata.csv``,
``mimic-cxr-2.0.0-split.csv``, ``mimic-cxr-2.0.0-chexpert.csv`` and the
``SYNTHETIC_DATA.txt`` marker. Each patient has 1-3 studies; each study a frontal view
(PA, or AP for about a quarter) and, for about 80%, a lateral (ViewPosition
"LATERAL", sometimes "LL").

Findings (persisting, growing, shrinking, resolving or appearing across a patient's
studies): a pneumothorax (one side or both; ``render_chest``'s own crescents, its size
graded from the drawn crescent's share of the lung: small / moderate / large); a
focal opacity (one lung, upper / mid / lower zone, small / moderate / large); a pleural
effusion (one side or both, bright fluid at the lung base with a meniscus, small /
moderate / large); cardiomegaly (the heart shadow drawn larger, mildly / moderately /
markedly). Sides are the patient's: the image's left half shows the patient's right
lung, as on a PA film (``render_chest``'s side -1). Every report names each finding
with its side, zone and size, and states the negatives ("No pneumothorax.", "The heart
size is normal."); a small opacity or effusion is sometimes hedged ("Possible ...",
label -1.0). The chexpert file carries Pneumothorax, Lung Opacity, Pleural Effusion,
Cardiomegaly (1.0 / 0.0 / -1.0) and No Finding (1.0, or blank as in MIMIC); its other
columns are blank. The lateral view shows the findings coarsely (no side).

Disjoint from the downstream synthetic data: every random draw here comes from
``numpy.random.default_rng([STREAM, seed, ...])`` with :data:`STREAM` = 0x4D494D43
("MIMC"), a stream of its own apart from SIIM's (0 and 1) and RSNA's (0x52534E41), so no
image repeats a SIIM or RSNA image; ``render_chest`` itself is called unchanged. A
patient's anatomy comes from one generator per patient (so their studies look like
one person), the study's findings, positioning, exposure and noise from one per study.
Deterministic for a seed: two runs write byte-identical files.
"""

from __future__ import annotations

import datetime
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from corpora import mimic
from tasks import synthetic as tsynth

STREAM = 0x4D494D43  # "MIMC"
SIZES = ("small", "moderate", "large")
ZONES = ("upper", "mid", "lower")
CARDIO = ("mildly", "moderately", "markedly")
SIDE_NAME = {-1: "right", 1: "left"}  # render_chest's side -1 is the image's left = patient's right

# chance of a finding at the first study, and of it appearing later when absent
_FIRST = {"ptx": 0.2, "opacity": 0.3, "effusion": 0.25, "cardio": 0.2}
_NEW = 0.1
_RESOLVE = 0.25
_HEDGE = 0.3
_OPACITY_RADIUS = (0.05, 0.075, 0.1)
_EFFUSION_HEIGHT = (0.18, 0.32, 0.48)  # share of the lung's height filled
_HEART_SCALE = (1.3, 1.5, 1.7)

_MARKER_TEXT = """SYNTHETIC DATA - NOT REAL PATIENT IMAGES OR REPORTS

This folder was written by cxrbench (bench synth --task pretrain). It imitates the
layout of MIMIC-CXR-JPG (PhysioNet) with the MIMIC-CXR free-text reports, so that
`bench pretrain` can run every code path without the real data. Images are
procedurally generated chest-X-ray-like pictures (frontal and lateral); each report's
FINDINGS and IMPRESSION describe what its images show (pneumothorax, focal opacity,
pleural effusion, cardiomegaly: side, zone, size) and the negatives. Numbers obtained
on this data say nothing about real clinical performance.

seed={seed} n_patients={n} size={size} stream=0x4D494D43
"""


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Findings:
    """What one study shows. Sizes index SIZES / CARDIO; None = absent."""

    ptx_sides: tuple[int, ...] = ()  # pneumothorax: sides (-1 right, 1 left); size measured on the image
    opacity: tuple[int, int, int] | None = None  # (side, zone index, size index)
    opacity_dx: float = 0.0  # the opacity's offset across its lung, in lung half-widths
    effusion: tuple[tuple[int, ...], int] | None = None  # (sides, size index)
    cardio: int | None = None  # cardiomegaly degree index
    hedge_opacity: bool = False
    hedge_effusion: bool = False

    @property
    def normal(self) -> bool:
        return not (self.ptx_sides or self.opacity or self.effusion or self.cardio is not None)


def first_findings(rng: np.random.Generator) -> Findings:
    """A patient's findings at their first study."""
    f = Findings()
    draws = rng.random(4)
    if draws[0] < _FIRST["ptx"]:
        f = replace(f, ptx_sides=_ptx_sides(rng))
    if draws[1] < _FIRST["opacity"]:
        f = replace(f, opacity=_new_opacity(rng), opacity_dx=float(rng.uniform(-0.3, 0.3)))
    if draws[2] < _FIRST["effusion"]:
        f = replace(f, effusion=_new_effusion(rng))
    if draws[3] < _FIRST["cardio"]:
        f = replace(f, cardio=int(rng.integers(0, 3)))
    return f


def next_findings(rng: np.random.Generator, f: Findings) -> Findings:
    """The next study's findings: each present finding resolves (25%) or keeps its place with
    its size one step smaller, the same or one larger (25 / 50 / 25%); an absent one appears
    (10%); cardiomegaly is chronic (it stays, and sometimes grows)."""
    d = rng.random(8)
    step = int(rng.choice([-1, 0, 0, 1]))
    ptx = f.ptx_sides
    if ptx:
        ptx = () if d[0] < _RESOLVE else ptx
    elif d[0] < _NEW:
        ptx = _ptx_sides(rng)
    opacity, dx = f.opacity, f.opacity_dx
    if opacity is not None:
        side, zone, size = opacity
        opacity = None if d[1] < _RESOLVE else (side, zone, int(np.clip(size + step, 0, 2)))
    elif d[1] < _NEW:
        opacity, dx = _new_opacity(rng), float(rng.uniform(-0.3, 0.3))
    effusion = f.effusion
    if effusion is not None:
        sides, size = effusion
        effusion = None if d[2] < _RESOLVE else (sides, int(np.clip(size - step, 0, 2)))
    elif d[2] < _NEW:
        effusion = _new_effusion(rng)
    cardio = f.cardio
    if cardio is None and d[3] < _NEW / 2:
        cardio = 0
    elif cardio is not None and d[3] < 0.1:
        cardio = min(cardio + 1, 2)
    return Findings(ptx_sides=ptx, opacity=opacity, opacity_dx=dx, effusion=effusion, cardio=cardio)


def _ptx_sides(rng) -> tuple[int, ...]:
    return (-1, 1) if rng.random() < 0.15 else (int(rng.choice([-1, 1])),)


def _new_opacity(rng) -> tuple[int, int, int]:
    return int(rng.choice([-1, 1])), int(rng.integers(0, 3)), int(rng.integers(0, 3))


def _new_effusion(rng) -> tuple[tuple[int, ...], int]:
    sides = (-1, 1) if rng.random() < 0.2 else (int(rng.choice([-1, 1])),)
    return sides, int(rng.integers(0, 3))


def _hedged(rng, f: Findings) -> Findings:
    """Mark a small opacity / effusion as uncertain in this study's report (30% each)."""
    d = rng.random(2)
    return replace(
        f,
        hedge_opacity=f.opacity is not None and f.opacity[2] == 0 and d[0] < _HEDGE,
        hedge_effusion=f.effusion is not None and f.effusion[1] == 0 and d[1] < _HEDGE,
    )


# --------------------------------------------------------------------------- rendering


def _smooth(t):
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


class FrontalLesions:
    """`render_chest` lesion hook: the study's cardiomegaly, focal opacity and effusion.

    Draws from its own (study) generator, not the renderer's, so a patient's anatomy and
    pneumothorax stay the renderer's; keeps the lung ellipses (for grading the
    pneumothorax) in ``lungs``.
    """

    def __init__(self, findings: Findings, rng: np.random.Generator):
        self.f, self.rng, self.lungs = findings, rng, []

    def __call__(self, _rng, img: np.ndarray, scene: dict) -> np.ndarray:
        f, rng = self.f, self.rng
        size, xx, yy = scene["size"], scene["xx"], scene["yy"]
        self.lungs = list(scene["lungs"])
        lungs = {side: (lcx, lcy, ax, ay) for side, lcx, lcy, ax, ay in self.lungs}
        if f.cardio is not None:
            cx = (lungs[-1][0] + lungs[1][0]) / 2
            hx, hy = cx + 0.05, 0.66
            k = _HEART_SCALE[f.cardio]
            normal = np.clip((1 - tsynth.ellipse(xx, yy, hx, hy, 0.13, 0.11)) / 0.3, 0, 1)
            big = np.clip((1 - tsynth.ellipse(xx, yy, hx, hy - 0.02 * (k - 1), 0.13 * k, 0.11 * k)) / 0.3, 0, 1)
            img = img + 45 * np.maximum(big - normal, 0)
        if f.opacity is not None:
            side, zone, s = f.opacity
            lcx, lcy, ax, ay = lungs[side]
            ocx = lcx + side * f.opacity_dx * ax
            ocy = lcy + (-0.5, 0.0, 0.45)[zone] * ay
            r = _OPACITY_RADIUS[s] * (1 + 0.1 * rng.standard_normal())
            texture = np.clip(0.8 + 0.25 * tsynth.smooth_noise(rng, size, 12), 0.4, 1.2)
            e = np.sqrt((xx - ocx) ** 2 + (yy - ocy) ** 2) / r
            img = img + rng.uniform(55, 65) * _smooth((1 - e) / 0.6) * texture
        if f.effusion is not None:
            sides, s = f.effusion
            for side in sides:
                lcx, lcy, ax, ay = lungs[side]
                h = _EFFUSION_HEIGHT[s] * 2 * ay
                lateral = np.clip((side * (xx - lcx) / ax + 1) / 2, 0, 1)  # 0 medial .. 1 lateral
                level = lcy + ay - h - 0.6 * h * lateral**3  # the meniscus climbs laterally
                inside = np.clip((1 - tsynth.ellipse(xx, yy, lcx, lcy, ax, ay)) / 0.12, 0, 1)
                fluid = _smooth((yy - level) / 0.02) * inside
                img = img + rng.uniform(60, 70) * fluid
        return img


def _ptx_grades(regions: list[np.ndarray], lungs: list[tuple], sides: tuple[int, ...], size: int) -> dict:
    """{side: size index} of each drawn pneumothorax: its share of the lung ellipse's area."""
    area = {side: np.pi * ax * ay * size * size for side, _, _, ax, ay in lungs}
    grades = {}
    for side, region in zip(sorted(sides), regions):  # render_chest draws side -1 first
        share = float(region.sum()) / area[side]
        grades[side] = 0 if share < 0.35 else (1 if share < 0.5 else 2)
    return grades


def _position(rng, img: np.ndarray, ap: bool) -> np.ndarray:
    """The study's positioning and exposure: a shift of up to 3% of the side, gain and offset,
    AP films a little flatter and brighter, and fresh noise."""
    size = img.shape[0]
    m = max(1, round(0.03 * size))
    dy, dx = (int(v) for v in rng.integers(-m, m + 1, 2))
    padded = np.pad(img.astype(np.float32), m, mode="edge")
    shifted = padded[m + dy : m + dy + size, m + dx : m + dx + size]
    gain, offset = rng.uniform(0.92, 1.08), rng.uniform(-8, 8)
    if ap:
        gain, offset = gain * 0.9, offset + 10
    out = (shifted - 128) * gain + 128 + offset + rng.normal(0, 2.0, (size, size))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_lateral(
    anatomy: np.random.Generator, rng: np.random.Generator, size: int, f: Findings, ptx_grade: int | None
) -> np.ndarray:
    """A lateral view: side-profile body (facing the image's left), one lung field, heart
    shadow in front, spine behind; findings only coarsely (effusion in the posterior
    costophrenic angle, opacity at its zone's height, pneumothorax as a dark apex, a larger
    heart). ``anatomy`` gives the patient's constant shape, ``rng`` the study's variation."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = c[:, None], c[None, :]
    bg, tissue = anatomy.uniform(8, 25), anatomy.uniform(150, 175)
    lung_level = anatomy.uniform(80, 100)
    bx, by = 0.5 + anatomy.normal(0, 0.01), 0.56 + anatomy.normal(0, 0.01)
    body = np.clip((1 - tsynth.ellipse(xx, yy, bx, by, anatomy.uniform(0.33, 0.37), 0.55)) / 0.05, 0, 1)
    img = bg + (tissue - bg + 20 * (yy - 0.5)) * body
    lcx, lcy = bx + anatomy.uniform(-0.01, 0.02), anatomy.uniform(0.43, 0.47)
    lax, lay = anatomy.uniform(0.22, 0.25), anatomy.uniform(0.27, 0.31)
    e = tsynth.ellipse(xx, yy, lcx, lcy, lax, lay)
    lung = np.clip((1 - e) / 0.12, 0, 1)
    markings = 0.6 * tsynth.smooth_noise(anatomy, size, 10) + 0.4 * tsynth.smooth_noise(anatomy, size, 28)
    img = img - (tissue - lung_level) * lung + 8 * markings * lung
    k = 1.0 if f.cardio is None else 0.85 + 0.3 * _HEART_SCALE[f.cardio] / 1.55
    heart = np.clip((1 - tsynth.ellipse(xx, yy, lcx - 0.1, lcy + 0.17, 0.13 * k, 0.12 * k)) / 0.3, 0, 1)
    spine_x = lcx + lax + 0.02
    spine = np.exp(-(((xx - spine_x) / 0.04) ** 2)) * body
    vertebrae = 0.7 + 0.3 * np.cos(2 * np.pi * yy * anatomy.uniform(11, 13))
    img = img + 40 * heart + 35 * spine * vertebrae
    if f.effusion is not None:
        h = _EFFUSION_HEIGHT[f.effusion[1]] * 1.5 * lay * (1.15 if len(f.effusion[0]) == 2 else 1.0)
        posterior = np.clip(((xx - lcx) / lax + 1) / 2, 0, 1)  # 0 anterior .. 1 posterior
        level = lcy + lay - h - 0.6 * h * posterior**3
        img = img + rng.uniform(55, 65) * _smooth((yy - level) / 0.025) * lung
    if f.opacity is not None:
        zone, s = f.opacity[1], f.opacity[2]
        oy = lcy + (-0.5, 0.0, 0.45)[zone] * lay
        r = _OPACITY_RADIUS[s] * 1.1
        d = np.sqrt(((xx - lcx) / 1.2) ** 2 + (yy - oy) ** 2) / r
        img = img + rng.uniform(30, 40) * _smooth((1 - d) / 0.6)
    if f.ptx_sides and ptx_grade is not None:
        apex = _smooth((lcy - 0.45 * lay - yy) / (0.06 + 0.04 * ptx_grade)) * lung
        img = img - (30 + 10 * ptx_grade) * apex
    img = img + anatomy.normal(0, 3.0, (size, size))
    return np.asarray(img, np.float32)


# --------------------------------------------------------------------------- reports


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def sentences(rng: np.random.Generator, f: Findings, ptx: dict[int, int]) -> tuple[list[str], list[str]]:
    """(findings sentences, impression sentences) describing a study; ptx = {side: size index}."""
    pick = lambda options: options[int(rng.integers(0, len(options)))]  # noqa: E731
    findings, impression = [], []
    if f.cardio is None:
        findings.append(pick(["The heart size is normal.", "Heart size is normal.",
                              "The cardiac silhouette is normal in size."]))  # fmt: skip
    else:
        findings.append(f"The heart is {CARDIO[f.cardio]} enlarged.")
        impression.append(f"{_cap(CARDIO[f.cardio][:-2])} cardiomegaly.")
    if f.opacity is not None:
        side, zone, s = f.opacity
        where = f"the {SIDE_NAME[side]} {ZONES[zone]} zone"
        if f.hedge_opacity:
            findings.append(f"Possible {SIZES[s]} focal opacity in {where}.")
            impression.append(f"Possible {SIZES[s]} opacity in {where}.")
        else:
            findings.append(pick([f"There is a {SIZES[s]} focal opacity in {where}.",
                                  f"A {SIZES[s]} focal opacity is seen in {where}."]))  # fmt: skip
            impression.append(f"{_cap(SIZES[s])} focal opacity in {where}.")
    elif f.ptx_sides or f.effusion:
        findings.append("No focal consolidation.")
    else:
        findings.append(pick(["The lungs are clear.", "No focal consolidation is seen.",
                              "There is no focal opacity."]))  # fmt: skip
    if f.effusion is not None:
        sides, s = f.effusion
        if len(sides) == 2:
            text = f"{SIZES[s]} bilateral pleural effusions"
        else:
            text = f"{SIZES[s]} {SIDE_NAME[sides[0]]} pleural effusion"
        if f.hedge_effusion:
            findings.append(f"Possible {text}.")
            impression.append(f"Possible {text}.")
        else:
            findings.append(f"There {'are' if len(sides) == 2 else 'is a'} {text}.")
            impression.append(f"{_cap(text)}.")
    if f.ptx_sides:
        if len(f.ptx_sides) == 2:
            findings.append(f"There are bilateral apical pneumothoraces, {SIZES[ptx[-1]]} on the right "
                            f"and {SIZES[ptx[1]]} on the left.")  # fmt: skip
            impression.append("Bilateral pneumothoraces.")
        else:
            side = f.ptx_sides[0]
            findings.append(f"There is a {SIZES[ptx[side]]} {SIDE_NAME[side]} apical pneumothorax.")
            impression.append(f"{_cap(SIZES[ptx[side]])} {SIDE_NAME[side]} pneumothorax.")
    if not f.effusion and not f.ptx_sides and rng.random() < 0.5:
        findings.append("No pleural effusion or pneumothorax.")
    else:
        if not f.effusion:
            findings.append(pick(["No pleural effusion.", "There is no pleural effusion."]))
        if not f.ptx_sides:
            findings.append(pick(["No pneumothorax.", "There is no pneumothorax."]))
    if not impression:
        impression.append(pick(["No acute cardiopulmonary process.", "No acute intrathoracic abnormality."]))
    return findings, impression


def _exam(view: str, lateral: bool) -> str:
    """PerformedProcedureStepDescription / the report's EXAMINATION of a study."""
    if view == "PA":
        return "CHEST (PA AND LAT)" if lateral else "CHEST (PA)"
    return "CHEST (PORTABLE AP)"


def report_text(rng, findings: list[str], impression: list[str], *, view: str, lateral: bool,
                follow_up: bool) -> str:  # fmt: skip
    """A report in the MIMIC-CXR text format (one-space indent, wrapped at 78 columns)."""
    exam = _exam(view, lateral)
    technique = {"CHEST (PA AND LAT)": "Chest PA and lateral", "CHEST (PA)": "Chest PA",
                 "CHEST (PORTABLE AP)": "Portable AP chest radiograph"}[exam]  # fmt: skip
    indication = ["___ year old with shortness of breath.", "Cough and fever, evaluate for pneumonia.",
                  "Chest pain.", "___ with dyspnea, evaluate for effusion.",
                  "Preoperative evaluation."][int(rng.integers(0, 5))]  # fmt: skip
    comparison = "Chest radiograph from ___." if follow_up else "None."

    def block(text: str) -> list[str]:
        return [" " + line for line in textwrap.wrap(text, 77)]

    lines = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {exam}", " ", f" INDICATION:  {indication}", " ",
             f" TECHNIQUE:  {technique}", " ", f" COMPARISON:  {comparison}", " ", " FINDINGS:", " ",
             *block(" ".join(findings)), " ", " IMPRESSION:", " ", *block(" ".join(impression))]  # fmt: skip
    return "\n".join(lines) + "\n"


def _labels(f: Findings) -> dict[str, str]:
    """The study's chexpert-file row (label columns only): 1.0 / 0.0 / -1.0, blank elsewhere."""
    row = {n: "" for n in mimic.LABELS}
    row["Pneumothorax"] = "1.0" if f.ptx_sides else "0.0"
    row["Lung Opacity"] = "0.0" if f.opacity is None else ("-1.0" if f.hedge_opacity else "1.0")
    row["Pleural Effusion"] = "0.0" if f.effusion is None else ("-1.0" if f.hedge_effusion else "1.0")
    row["Cardiomegaly"] = "0.0" if f.cardio is None else "1.0"
    row["No Finding"] = "1.0" if f.normal else ""
    return row


# --------------------------------------------------------------------------- the corpus


def _dicom_id(rng) -> str:
    h = rng.bytes(20).hex()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    def cell(v) -> str:
        v = str(v)
        return f'"{v}"' if any(c in v for c in ',"\n') else v

    lines = [",".join(header)] + [",".join(cell(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def synth(out, *, n_patients: int = 40, seed: int = 0, size: int = 256, progress: bool = True) -> dict:
    """Write the synthetic corpus under out (see the module docstring); returns its counts."""
    n_patients, size, seed = int(n_patients), int(size), int(seed)
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tsynth.write_synthetic_marker(out, _MARKER_TEXT.format(seed=seed, n=n_patients, size=size))
    rng = np.random.default_rng([STREAM, seed])
    subjects = np.sort(rng.choice(10_000_000, n_patients, replace=False)) + 10_000_000
    n_studies = rng.choice([1, 2, 3], n_patients, p=[0.3, 0.4, 0.3])
    studies = rng.choice(10_000_000, int(n_studies.sum()), replace=False) + 50_000_000
    splits = rng.choice(["train", "validate", "test"], n_patients, p=[0.9, 0.05, 0.05])

    meta, split_rows, label_rows = [], [], []
    counts = {"frontal": 0, "lateral": 0, "PA": 0, "AP": 0}
    positives = {"Pneumothorax": 0, "Lung Opacity": 0, "Pleural Effusion": 0, "Cardiomegaly": 0, "No Finding": 0}
    k = 0
    bar = tqdm(total=n_patients, desc="synth pretrain corpus", unit="patient", disable=not progress)
    for p in range(n_patients):
        subject = str(int(subjects[p]))
        plan = np.random.default_rng([STREAM, seed, p, 1])
        day = int(plan.integers(0, 365 * 80))
        findings = first_findings(plan)
        for s in range(int(n_studies[p])):
            study = str(int(studies[k]))
            k += 1
            srng = np.random.default_rng([STREAM, seed, p, 2, s])
            if s:
                findings = next_findings(plan, findings)
                day += int(plan.integers(1, 400))
            f = _hedged(srng, findings)
            view = "AP" if srng.random() < 0.25 else "PA"
            lateral = srng.random() < 0.8
            lateral_view = "LL" if srng.random() < 0.1 else "LATERAL"
            folder = out / mimic.IMAGE_DIR / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            folder.mkdir(parents=True, exist_ok=True)

            hook = FrontalLesions(f, srng)
            frontal, regions = tsynth.render_chest(
                np.random.default_rng([STREAM, seed, p, 0]), size, list(f.ptx_sides), lesion=hook
            )
            ptx = _ptx_grades(regions, hook.lungs, f.ptx_sides, size)
            images = [(view, _position(srng, frontal, view == "AP"))]
            if lateral:
                side_img = render_lateral(np.random.default_rng([STREAM, seed, p, 3]), srng, size, f,
                                          max(ptx.values()) if ptx else None)  # fmt: skip
                images.append((lateral_view, _position(srng, side_img, False)))

            date = datetime.date(2110, 1, 1) + datetime.timedelta(days=day)
            h, m, sec, ms = (int(v) for v in srng.integers(0, (24, 60, 60, 1000)))
            clock = f"{h:02d}{m:02d}{sec:02d}.{ms:03d}"
            exam = _exam(view, lateral)
            for v, img in images:
                dicom = _dicom_id(srng)
                Image.fromarray(img).save(folder / f"{dicom}.jpg", format="JPEG", quality=95)
                meaning = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral",
                           "LL": "left lateral"}[v]  # fmt: skip
                meta.append([dicom, subject, study, exam, v, size, size, date.strftime("%Y%m%d"), clock,
                             exam, meaning, "Recumbent" if v == "AP" else "Erect"])  # fmt: skip
                split_rows.append([dicom, study, subject, str(splits[p])])
                counts["frontal" if v in ("PA", "AP") else "lateral"] += 1
                if v in ("PA", "AP"):
                    counts[v] += 1
            found, impression = sentences(srng, f, ptx)
            (folder.parent / f"s{study}.txt").write_text(
                report_text(srng, found, impression, view=view, lateral=lateral, follow_up=s > 0), encoding="utf-8"
            )
            labels = _labels(f)
            label_rows.append([subject, study, *(labels[n] for n in mimic.LABELS)])
            for n in positives:
                positives[n] += labels[n] == "1.0"
        bar.update(1)
    bar.close()
    _csv(out / mimic.METADATA, ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                                "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                                "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                                "PatientOrientationCodeSequence_CodeMeaning"], meta)  # fmt: skip
    _csv(out / mimic.SPLIT, list(mimic.SPLIT_COLUMNS), split_rows)
    _csv(out / mimic.CHEXPERT, ["subject_id", "study_id", *mimic.LABELS], label_rows)
    return {
        "task": "pretrain",
        "layout": mimic.LAYOUT,
        "out": str(out),
        "seed": seed,
        "size": size,
        "n_patients": n_patients,
        "n_studies": k,
        "n_images": len(meta),
        "n_frontal": counts["frontal"],
        "n_lateral": counts["lateral"],
        "views": {"PA": counts["PA"], "AP": counts["AP"], "lateral": counts["lateral"]},
        "n_reports": k,
        "studies_positive": positives,
        "metadata_file": mimic.METADATA,
        "label_file": mimic.CHEXPERT,
    }
