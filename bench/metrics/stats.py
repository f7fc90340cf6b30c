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


# ---------------------------------------------------------------- regression test

ALPHA = 0.05
POWER = 0.8
MIN_SEEDS = 3  # fewer per side: the test has no power (a verdict of its own)
PERMUTATION_BELOW = 5  # fewer seeds on either side: exact permutation test, else Welch


def drop_test(new: Iterable, base: Iterable, alpha: float = ALPHA) -> dict:
    """One-sided test of H0 "new >= baseline" against H1 "new < baseline" (a drop).

    Welch's t-test (``scipy.stats.ttest_ind(equal_var=False, alternative="less")``)
    when both sides have at least ``PERMUTATION_BELOW`` finite values, else a
    permutation test of the difference of the means (``scipy.stats.permutation_test``,
    independent samples, exact: every split of the pooled values is enumerated).
    Returns ``{"test": "welch" | "permutation" | "constant" | "none", "p", "p_up",
    "reject"}``: ``p`` is the one-sided p-value of a drop, ``p_up`` that of a rise,
    ``reject`` is ``p <= alpha``. Both sides constant (no spread at all) is
    ``"constant"``: p is 0 when new is lower, else 1. Fewer than 2 values on a side:
    ``"none"``, p None.
    """
    xs, _ = _finite(new)
    ys, _ = _finite(base)
    if len(xs) < 2 or len(ys) < 2:
        return {"test": "none", "p": None, "p_up": None, "reject": False}
    if len(set(xs)) == 1 and len(set(ys)) == 1:
        p = 0.0 if xs[0] < ys[0] else 1.0
        return {"test": "constant", "p": p, "p_up": 0.0 if xs[0] > ys[0] else 1.0,
                "reject": p <= alpha}  # fmt: skip
    if min(len(xs), len(ys)) >= PERMUTATION_BELOW:
        p = float(_scipy_stats.ttest_ind(xs, ys, equal_var=False, alternative="less").pvalue)
        p_up = float(_scipy_stats.ttest_ind(xs, ys, equal_var=False, alternative="greater").pvalue)
        test = "welch"
    else:

        def diff(a, b, axis=-1):
            return a.mean(axis=axis) - b.mean(axis=axis)

        def perm(alternative):
            return float(_scipy_stats.permutation_test(
                (xs, ys), diff, permutation_type="independent", alternative=alternative,
                n_resamples=math.inf, vectorized=True).pvalue)  # fmt: skip

        p, p_up, test = perm("less"), perm("greater"), "permutation"
    return {"test": test, "p": p, "p_up": p_up, "reject": p <= alpha + 1e-12}


def min_detectable_drop(
    std: float | None, n: int, alpha: float = ALPHA, power: float = POWER
) -> float | None:
    """Smallest drop of the mean that the one-sided test detects with probability
    ``power`` at level ``alpha``, for ``n`` new seeds against ``n`` baseline seeds of
    standard deviation ``std`` (the baseline's, assumed for both sides)::

        MDD = (t_{1-alpha, 2n-2} + t_{power, 2n-2}) * std * sqrt(2 / n)

    None when ``n < 2`` or ``std`` is unknown.
    """
    if std is None or n < 2 or not math.isfinite(std):
        return None
    df = 2 * n - 2
    t = float(_scipy_stats.t.ppf(1 - alpha, df)) + float(_scipy_stats.t.ppf(power, df))
    return t * std * math.sqrt(2 / n)
