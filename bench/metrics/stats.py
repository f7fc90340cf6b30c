"""Aggregation over seeds: mean, sample standard deviation and a Student-t 95% CI.

Owns ``summarize`` (design §6 last paragraph, §8.7). One seed gives no interval, so
with n=1 the spread fields are None rather than 0. Missing values (None, NaN, inf) are
dropped and counted in ``n_ignored`` so a report can say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from scipy import stats as _scipy_stats

CONFIDENCE = 0.95


def _finite(values: Iterable) -> tuple[list[float], int]:
    kept, ignored = [], 0
    for v in values:
        f = None if v is None else float(v)
        if f is None or not math.isfinite(f):
            ignored += 1
        else:
            kept.append(f)
    return kept, ignored


def summarize(values: Iterable, confidence: float = CONFIDENCE) -> dict:
    """Summary of per-seed values.

    Returns {mean, std, ci_low, ci_high, ci_half, n, n_ignored}: std is the sample
    standard deviation (ddof=1), ci_half = t_{(1+confidence)/2, n-1} * std / sqrt(n).
    n counts finite values only; with n=0 everything but the counts is None, with n=1
    std and the CI are None.
    """
    xs, ignored = _finite(values)
    n = len(xs)
    out = {"mean": None, "std": None, "ci_low": None, "ci_high": None, "ci_half": None}
    out.update(n=n, n_ignored=ignored)
    if n == 0:
        return out
    mean = math.fsum(xs) / n
    out["mean"] = mean
    if n == 1:
        return out
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(_scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    out.update(std=std, ci_low=mean - half, ci_high=mean + half, ci_half=half)
    return out
