"""Owns: MedAug's choice of positive pairs from patient metadata.

Vu, Wang, Balachandar, Liu, Ng, Rajpurkar 2021, "MedAug: Contrastive learning
leveraging patient metadata improves representations for chest X-ray interpretation"
(MLHC): in MoCo v2 the key of a query image may be *another* image of the same patient,
restricted to the same study or not, and to the same laterality (frontal or lateral
view), the other one, or any. :class:`PositivePairs` precomputes, for each record, the
group its key is drawn from; an image whose group has no other image falls back to a
second augmented view of itself (plain MoCo), and the share of such images is part of
the run's record (:meth:`PositivePairs.counts`).

The groups are stored once (one index array per patient/study/view class) with each
record's position in its own group, so memory is linear in the number of images even
for patients with hundreds of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

POSITIVES = ("same-image", "same-study", "same-patient")
LATERALITY = ("any", "same", "different")


class PositivePairs:
    """Draws each query's positive key image under a MedAug rule.

    ``records`` are objects with ``.patient_id``, ``.study_id`` (``None`` if unknown)
    and ``.frontal`` (``True``, ``False`` or ``None`` if unknown). ``positives``: the key
    is the image itself (``"same-image"``: plain MoCo), another image of its study, or
    of its patient (any study, its own included). ``laterality``: ``"same"`` keeps images
    of the same view class (frontal/lateral), ``"different"`` the other class, ``"any"``
    both; an image of unknown study or view has no candidate under a rule that needs it.
    ``has_studies``/``has_views`` say whether the dataset ``layout`` records studies
    and views at all; a rule that needs what the layout lacks is a ``ValueError``.
    """

    def __init__(self, records: Sequence, positives: str = "same-image", laterality: str = "any",
                 *, has_studies: bool = True, has_views: bool = True, layout: str = ""):  # fmt: skip
        if positives not in POSITIVES:
            raise ValueError(f"positives must be one of {POSITIVES}, not {positives!r}")
        if laterality not in LATERALITY:
            raise ValueError(f"laterality must be one of {LATERALITY}, not {laterality!r}")
        where = f"the {layout!r} layout" if layout else "this dataset"
        if positives == "same-study" and not has_studies:
            raise ValueError(f"positives='same-study' needs study ids, and {where} has none")
        if laterality != "any" and not has_views:
            raise ValueError(
                f"laterality={laterality!r} needs view positions, and {where} has none"
            )
        if positives == "same-image" and laterality != "any":
            raise ValueError(
                "laterality applies to same-study/same-patient positives, not same-image"
            )
        self.positives, self.laterality, self.n = positives, laterality, len(records)
        self._groups: list[np.ndarray] = []
        self._group = np.full(self.n, -1, dtype=np.int64)  # the group a record's key comes from
        self._pos = np.full(self.n, -1, dtype=np.int64)  # the record's position in it, -1 if absent
        if positives != "same-image":
            self._build(records)
        sizes = np.array([len(g) for g in self._groups] + [0], dtype=np.int64)  # [-1] -> 0
        self._count = np.maximum(sizes[self._group] - (self._pos >= 0), 0)  # candidates per record

    def _build(self, records: Sequence) -> None:
        keys = [self._own_key(r) for r in records]
        members: dict[tuple, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            if key is not None:
                members[key].append(i)
        ids = {key: g for g, key in enumerate(members)}
        self._groups = [np.asarray(v, dtype=np.int64) for v in members.values()]
        if self.laterality == "different":  # the group of the other view class; i is not in it
            for i, key in enumerate(keys):
                if key is not None:
                    self._group[i] = ids.get((key[0], key[1], not key[2]), -1)
            return
        for g, idx in enumerate(self._groups):
            self._group[idx], self._pos[idx] = g, np.arange(len(idx))

    def _own_key(self, r) -> tuple | None:
        """(patient, study or None, view class or None); None when the rule cannot place it."""
        study = r.study_id if self.positives == "same-study" else None
        view = None if self.laterality == "any" else r.frontal
        if r.patient_id is None or (self.positives == "same-study" and study is None):
            return None
        if self.laterality != "any" and view is None:
            return None
        return (r.patient_id, study, None if view is None else bool(view))

    def key_index(self, i: int, rng: np.random.Generator) -> tuple[int, bool]:
        """``(j, fell_back)``: ``j`` drawn uniformly from the other images of ``i``'s group.

        When the group has no other image (and always for ``"same-image"``) ``j = i``;
        ``fell_back`` is then ``True`` except for ``"same-image"``, where it is the rule.
        """
        if self.positives == "same-image":
            return i, False
        count = int(self._count[i])
        if count == 0:
            return i, True
        r = int(rng.integers(count))
        pos = int(self._pos[i])
        if 0 <= pos <= r:
            r += 1  # skip the query itself
        return int(self._groups[self._group[i]][r]), False

    @property
    def fallback_fraction(self) -> float:
        """The share of records whose group has no other image (0 for ``"same-image"``)."""
        if self.positives == "same-image" or self.n == 0:
            return 0.0
        return float(np.mean(self._count == 0))

    def counts(self) -> dict:
        """What the run's record says about its positives (plain JSON types)."""
        fallback = 0 if self.positives == "same-image" else int(np.sum(self._count == 0))
        return {"positives": self.positives, "laterality": self.laterality, "images": self.n,
                "with_candidates": self.n - fallback, "fallback": fallback,
                "fallback_fraction": self.fallback_fraction,
                "mean_candidates": float(self._count.mean()) if self.n else 0.0}  # fmt: skip
