"""Paired statistics for comparing two leaderboard entries.

A reviewer asks whether a candidate is more robust than a baseline on the same samples and seeds.
Both are evaluated on the same test points, so the tests and intervals here use the pairing: the
exact McNemar test and Newcombe's paired interval on per-sample outcomes, the Wilcoxon
signed-rank test and a Student-t interval on per-seed accuracies, and Holm's correction when one
comparison is repeated over many attacks or budgets. Only numpy is imported: the normal quantile
comes from the standard library, and the t quantile, the binomial tail and the signed-rank
distribution are computed here, exactly, since importing ``scipy.stats`` (or ``scipy.special``)
takes from a third to most of a second, which ``show`` and ``compare`` would pay on every start.
``scipy.stats`` is imported only for a Wilcoxon test with ties over more than 13 pairs, or over
more than 50.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

EXACT_WILCOXON_MAX_N = 50
ENUMERATED_MAX_N = 13
"""With ties or zeros, scipy's Wilcoxon enumerates every sign flip up to this many differences
(its permutation test is exact there), and uses the normal approximation beyond."""


@dataclass(frozen=True)
class McNemar:
    """The discordant pairs of two paired binary outcomes and the exact McNemar p-value.

    ``b``: baseline right, candidate wrong; ``c``: baseline wrong, candidate right; ``n``: pairs.
    """

    b: int
    c: int
    n: int
    p_value: float


@dataclass(frozen=True)
class Wilcoxon:
    """A Wilcoxon signed-rank test of per-seed differences (candidate - baseline).

    ``n`` counts the non-zero differences (the pairs the test uses); ``method`` is ``"exact"``,
    ``"auto"`` (scipy's default choice, when there are ties or zeros or more than 50 pairs) or
    ``"none"`` (no non-zero difference: nothing to test, p = 1). ``min_p_value`` is the smallest
    two-sided p-value an exact (sign-flip) test can reach with ``n`` pairs, 2 / 2**n.
    """

    n: int
    statistic: float
    p_value: float
    method: str
    min_p_value: float

    def underpowered(self, alpha: float = 0.05) -> bool:
        """True when no outcome of the exact test could be significant at ``alpha``.

        With 5 seeds the smallest two-sided p-value is 2 / 32 = 0.0625: a comparison of five runs
        (a common protocol in papers) can never reach 0.05, so "not significant" says nothing there.
        """
        return self.min_p_value > alpha


def _binary(values: Sequence[bool | float], name: str) -> np.ndarray:
    """``values`` as a float array, if every value is 0 or 1."""
    array = np.asarray(values, dtype=float).ravel()
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold only 0/1 (or False/True) outcomes")
    return array


def _paired(
    baseline: Sequence[bool | float], candidate: Sequence[bool | float], binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The two samples as arrays of equal length (0/1 outcomes when ``binary``, else finite)."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired samples differ in length: {len(baseline)} baseline, {len(candidate)} candidate")
    if binary:
        return _binary(baseline, "baseline"), _binary(candidate, "candidate")
    base, cand = np.asarray(baseline, dtype=float).ravel(), np.asarray(candidate, dtype=float).ravel()
    if not (np.isfinite(base).all() and np.isfinite(cand).all()):
        raise ValueError("paired samples must be finite numbers (pair the seeds before testing)")
    return base, cand


def _z(confidence: float) -> float:
    """The two-sided standard normal quantile for ``confidence``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n`` (Wilson 1927), the building block of Newcombe's."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (NaN for no trials): the leaderboard's
    per-row interval of robust accuracy."""
    if n == 0:
        return math.nan, math.nan
    return _wilson(successes, n, _z(confidence))


def mcnemar_exact(baseline: Sequence[bool | float], candidate: Sequence[bool | float]) -> McNemar:
    """Exact McNemar test on per-sample outcomes (1 = correct or robust) of two entries.

    Only the discordant samples carry information about which entry is better; under no
    difference each is equally likely to favour either, so the two-sided p-value is the exact
    binomial test of ``c`` out of ``b + c`` at 1/2 (p = 1 when there is no discordant sample),
    twice the smaller tail since the distribution is symmetric (what scipy's ``binomtest`` gives),
    summed in integers.
    """
    base, cand = _paired(baseline, candidate, binary=True)
    b = int(np.sum((base == 1) & (cand == 0)))
    c = int(np.sum((base == 0) & (cand == 1)))
    p_value = 1.0 if b + c == 0 else min(1.0, 2 * _binomial_tail(min(b, c), b + c))
    return McNemar(b=b, c=c, n=len(base), p_value=p_value)


def wilcoxon_paired(baseline: Sequence[float], candidate: Sequence[float]) -> Wilcoxon:
    """Two-sided Wilcoxon signed-rank test of per-seed accuracies (candidate - baseline).

    Seeds pair the runs (same data order, same initialisation), and the test assumes no normality.
    The exact null distribution is used when it is exact: no zero and no tied differences, and at
    most 50 pairs; otherwise scipy's default method (an exact enumeration of the sign flips up to 13
    differences, counted here too, else its normal approximation). Differences are rounded to 12
    decimals first, so that float noise (0.3 - 0.1 != 0.5 - 0.3) neither hides a tie nor a zero.
    Read :meth:`Wilcoxon.underpowered` before reading a large p-value as "no difference".
    """
    base, cand = _paired(baseline, candidate, binary=False)
    differences = np.round(cand - base, 12)
    nonzero = differences[differences != 0]
    n = len(nonzero)
    min_p_value = min(1.0, 2.0 / 2.0**n)
    if n == 0:
        return Wilcoxon(n=0, statistic=0.0, p_value=1.0, method="none", min_p_value=min_p_value)
    untied = len(np.unique(np.abs(nonzero))) == n
    method = "exact" if untied and n == len(differences) and n <= EXACT_WILCOXON_MAX_N else "auto"
    if method == "exact" or len(differences) <= ENUMERATED_MAX_N:
        statistic, p_value = _signed_rank_test(nonzero)
    else:
        from scipy.stats import wilcoxon

        result = wilcoxon(differences, alternative="two-sided", method=method)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return Wilcoxon(n=n, statistic=statistic, p_value=p_value, method=method, min_p_value=min_p_value)


def _binomial_tail(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2): the sum of C(n, i) over i <= k, over 2**n, in integers."""
    term = total = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return total / 2**n


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile for ``confidence`` with ``df`` (whole) degrees of freedom:
    the t at which P(|T| <= t) = confidence, by bisection on Abramowitz and Stegun's closed form
    of that probability (26.7.3-4), a finite sum for whole ``df``."""
    if not 0 < confidence < 1 or df < 1:
        raise ValueError(f"need 0 < confidence < 1 and df >= 1, got {confidence} and {df}")

    def within(theta: float) -> float:  # P(|T| <= sqrt(df) tan(theta))
        c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
        for j in range(2 if df % 2 else 1, df - 1, 2):
            term *= c2 * j / (j + 1)
            total += term
        if df % 2 == 0:
            return math.sin(theta) * total
        return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))

    low, high = 0.0, math.pi / 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if within(middle) < confidence else (low, middle)
    return math.sqrt(df) * math.tan((low + high) / 2)


def _signed_rank_test(nonzero: np.ndarray) -> tuple[float, float]:
    """The two-sided signed-rank test of non-zero differences by counting all 2**n sign flips:
    (min(R+, R-), p). Tied sizes share their average rank, so ranks are counted in halves."""
    _, inverse, ties = np.unique(np.abs(nonzero), return_inverse=True, return_counts=True)
    last = np.cumsum(ties)
    halves = (2 * last - ties + 1)[inverse]  # first + last rank of each tie group
    counts = np.zeros(int(halves.sum()) + 1)  # counts[s]: sign flips whose positive ranks sum to s / 2
    counts[0] = 1
    for rank in halves:
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    observed = int(halves[nonzero > 0].sum())
    tail = min(counts[: observed + 1].sum(), counts[observed:].sum()) / counts.sum()
    return min(observed, int(halves.sum()) - observed) / 2, min(1.0, 2 * float(tail))


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), NaN where the p-value is NaN.

    Comparing two entries at many attacks or budgets inflates the chance of one spurious
    "significant" result; Holm controls the family-wise error rate like Bonferroni but is uniformly
    more powerful. The k-th smallest of m p-values is multiplied by m - k + 1, made monotone, and
    capped at 1. NaN p-values (comparisons that could not be made) are left out of m.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    valid = np.flatnonzero(~np.isnan(p))
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise ValueError("p-values must lie in [0, 1] (or be NaN)")
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted = np.full(p.shape, np.nan)
    adjusted[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return adjusted.tolist()


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which hypotheses Holm's procedure rejects at family-wise level ``alpha`` (never a NaN one)."""
    return [bool(q <= alpha) for q in holm_adjusted(p_values)]


def paired_difference_interval(
    baseline: Sequence[bool | float], candidate: Sequence[bool | float], confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for the difference of two paired proportions (candidate - baseline).

    Newcombe's method 10 (Newcombe 1998, Stat Med 17:2635): Wilson intervals of the two marginal
    proportions combined by "square and add", with the correlation of the pairs (phi, corrected
    towards 0 by N/2 when positive, as Newcombe recommends) subtracted; two entries scored on the
    same samples are strongly correlated, which a two-sample interval would ignore. It stays within
    [-1, 1] and behaves at 0 and 1, unlike the Wald interval. (NaN, NaN) for no samples.
    """
    base, cand = _paired(baseline, candidate, binary=True)
    n = len(base)
    z = _z(confidence)
    if n == 0:
        return float("nan"), float("nan")
    both = int(np.sum((cand == 1) & (base == 1)))
    only_cand = int(np.sum((cand == 1) & (base == 0)))
    only_base = int(np.sum((cand == 0) & (base == 1)))
    neither = n - both - only_cand - only_base
    p1, p2 = (both + only_cand) / n, (both + only_base) / n
    l1, u1 = _wilson(both + only_cand, n, z)
    l2, u2 = _wilson(both + only_base, n, z)
    margins = (both + only_cand) * (only_base + neither) * (both + only_base) * (only_cand + neither)
    association = both * neither - only_cand * only_base
    if association > 0:
        association = max(association - n / 2, 0.0)
    phi = association / math.sqrt(margins) if margins else 0.0
    below = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    above = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return p1 - p2 - below, p1 - p2 + above


def unpaired_difference_interval(
    successes_a: int, n_a: int, successes_b: int, n_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for ``successes_a / n_a - successes_b / n_b`` from two independent samples.

    Newcombe's method 10 (hybrid score, Newcombe 1998, Stat Med 17:873): the Wilson intervals of
    the two proportions combined by "square and add". For when per-sample outcomes are missing; it
    ignores the pairing, so it is wider than :func:`paired_difference_interval` on paired data.
    (NaN, NaN) when a sample is empty.
    """
    for successes, n, name in ((successes_a, n_a, "a"), (successes_b, n_b, "b")):
        if not 0 <= successes <= n:
            raise ValueError(f"sample {name}: need 0 <= successes <= n, got {successes} of {n}")
    z = _z(confidence)
    if n_a == 0 or n_b == 0:
        return float("nan"), float("nan")
    p1, p2 = successes_a / n_a, successes_b / n_b
    l1, u1 = _wilson(successes_a, n_a, z)
    l2, u2 = _wilson(successes_b, n_b, z)
    return p1 - p2 - math.hypot(p1 - l1, u2 - p2), p1 - p2 + math.hypot(u1 - p1, p2 - l2)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of per-seed values: (mean, low, high).

    Few seeds make the normal quantile too optimistic; the t quantile with n - 1 degrees of
    freedom accounts for estimating the spread. (mean, NaN, NaN) for a single value: one seed
    says nothing about the spread. The interval is not clipped: callers that show accuracies clip it.
    """

    array = np.asarray(values, dtype=float).ravel()
    if len(array) == 0 or not np.isfinite(array).all():
        raise ValueError("mean_interval needs at least one value, all finite")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}")
    mean = float(array.mean())
    if len(array) == 1:
        return mean, float("nan"), float("nan")
    half = t_quantile(confidence, len(array) - 1) * float(array.std(ddof=1)) / math.sqrt(len(array))
    return mean, mean - half, mean + half
