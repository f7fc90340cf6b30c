"""MedAug positive pairs: every drawn key respects patient, study and laterality; fallbacks; errors."""

from dataclasses import dataclass

import numpy as np
import pytest

from bench.pretrain.pairs import LATERALITY, POSITIVES, PositivePairs


@dataclass(frozen=True)
class Rec:
    patient_id: str | None
    study_id: str | None
    frontal: bool | None


RECORDS = [
    Rec("A", "a1", True), Rec("A", "a1", True), Rec("A", "a1", False),   # 0-2
    Rec("A", "a2", True), Rec("A", "a2", False), Rec("A", "a2", None),   # 3-5: one view unknown
    Rec("B", "b1", True), Rec("B", "b1", False),                         # 6-7
    Rec("B", "b2", True),                                                # 8: a study of one image
    Rec("C", "c1", True),                                                # 9: a patient with one image
    Rec("D", None, True), Rec("D", None, False),                         # 10-11: study unknown
    Rec(None, None, True), Rec(None, None, True),                        # 12-13: patient unknown
]  # fmt: skip


def _allowed(i, j, positives, laterality):
    a, b = RECORDS[i], RECORDS[j]
    if j == i or a.patient_id is None or a.patient_id != b.patient_id:
        return False
    if positives == "same-study" and (a.study_id is None or a.study_id != b.study_id):
        return False
    if laterality != "any" and (a.frontal is None or b.frontal is None):
        return False
    if laterality == "same":
        return a.frontal == b.frontal
    return laterality == "any" or a.frontal != b.frontal


RULES = [(p, lat) for p in POSITIVES[1:] for lat in LATERALITY]


@pytest.mark.parametrize("positives,laterality", RULES)
def test_drawn_keys_respect_patient_study_and_laterality(positives, laterality):
    pairs = PositivePairs(RECORDS, positives, laterality)
    rng = np.random.default_rng(0)
    fallbacks = 0
    for i in range(len(RECORDS)):
        candidates = {j for j in range(len(RECORDS)) if _allowed(i, j, positives, laterality)}
        drawn = set()
        for _ in range(40):
            j, fell_back = pairs.key_index(i, rng)
            assert fell_back == (not candidates)
            if fell_back:
                assert j == i
            else:
                assert j in candidates, (i, j, positives, laterality)
            drawn.add(j)
        assert drawn == (candidates or {i})  # every candidate can be drawn
        fallbacks += not candidates
    assert pairs.fallback_fraction == pytest.approx(fallbacks / len(RECORDS))
    counts = pairs.counts()
    assert counts["fallback"] == fallbacks and counts["images"] == len(RECORDS)
    assert counts["with_candidates"] == len(RECORDS) - fallbacks
    assert (counts["positives"], counts["laterality"]) == (positives, laterality)


def test_fallback_rule_on_the_fixture():
    rng = np.random.default_rng(0)
    study = PositivePairs(RECORDS, "same-study")
    assert study.key_index(9, rng) == (9, True)  # C: one image
    assert study.key_index(8, rng) == (8, True)  # B's second study has one image
    assert study.key_index(10, rng) == (10, True)  # study unknown: no same-study candidate
    patient = PositivePairs(RECORDS, "same-patient")
    assert patient.key_index(8, rng)[0] in (6, 7)  # but other images of B
    assert patient.key_index(10, rng) == (11, False)
    assert patient.key_index(12, rng) == (12, True)  # unknown patients are not one patient
    assert patient.fallback_fraction == pytest.approx(3 / 14)  # C and the two unknown
    lateral = PositivePairs(RECORDS, "same-patient", "different")
    assert lateral.key_index(5, rng) == (5, True)  # its view is unknown
    assert lateral.key_index(2, rng)[0] in (0, 1, 3)


def test_draws_are_uniform_over_the_group():
    pairs = PositivePairs(RECORDS, "same-patient")
    rng = np.random.default_rng(1)
    draws = [pairs.key_index(0, rng)[0] for _ in range(2500)]
    share = np.bincount(draws, minlength=6)[1:6] / len(draws)
    assert np.allclose(share, 0.2, atol=0.03)


def test_same_image_is_plain_moco():
    pairs = PositivePairs(RECORDS)
    rng = np.random.default_rng(0)
    assert all(pairs.key_index(i, rng) == (i, False) for i in range(len(RECORDS)))
    assert pairs.fallback_fraction == 0.0 and pairs.counts()["fallback"] == 0


def test_rules_the_layout_cannot_serve_are_errors():
    with pytest.raises(ValueError, match="'chexpert' layout"):
        PositivePairs(RECORDS, "same-study", has_studies=False, layout="chexpert")
    with pytest.raises(ValueError, match="'nih' layout"):
        PositivePairs(RECORDS, "same-patient", "same", has_views=False, layout="nih")
    PositivePairs(RECORDS, "same-patient", has_studies=False, has_views=False, layout="nih")
    with pytest.raises(ValueError, match="positives"):
        PositivePairs(RECORDS, "same-ward")
    with pytest.raises(ValueError, match="laterality"):
        PositivePairs(RECORDS, "same-patient", "left")
    with pytest.raises(ValueError, match="same-image"):
        PositivePairs(RECORDS, "same-image", "different")
