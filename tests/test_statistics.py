"""The paired statistics of harness.statistics, against scipy and published worked examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from harness.statistics import (
    Wilcoxon,
    _wilson,
    holm,
    holm_adjusted,
    mcnemar_exact,
    mean_interval,
    paired_difference_interval,
    t_quantile,
    unpaired_difference_interval,
    wilcoxon_paired,
    wilson_interval,
)


def outcomes(both: int, only_candidate: int, only_baseline: int, neither: int) -> tuple[list[int], list[int]]:
    """Per-sample (baseline, candidate) outcomes with the given 2x2 paired table."""
    baseline = [1] * both + [0] * only_candidate + [1] * only_baseline + [0] * neither
    candidate = [1] * both + [1] * only_candidate + [0] * only_baseline + [0] * neither
    return baseline, candidate


# McNemar


def test_mcnemar_counts_discordant_pairs_and_matches_binomtest() -> None:
    baseline, candidate = outcomes(both=40, only_candidate=9, only_baseline=2, neither=7)
    result = mcnemar_exact(baseline, candidate)
    assert (result.b, result.c, result.n) == (2, 9, 58)
    assert result.p_value == pytest.approx(stats.binomtest(9, 11, 0.5).pvalue)
    assert result.p_value == pytest.approx(2 * sum(math.comb(11, k) for k in range(3)) / 2**11)


def test_mcnemar_is_symmetric_and_accepts_bools() -> None:
    baseline = [True, True, False, False, True, False, True]
    candidate = [False, True, True, True, True, True, False]
    forward, backward = mcnemar_exact(baseline, candidate), mcnemar_exact(candidate, baseline)
    assert (forward.b, forward.c) == (backward.c, backward.b) == (2, 3)
    assert forward.p_value == backward.p_value == pytest.approx(1.0)


def test_mcnemar_without_discordant_pairs_has_p_one() -> None:
    result = mcnemar_exact([1, 0, 1], [1.0, 0.0, 1.0])
    assert (result.b, result.c, result.n, result.p_value) == (0, 0, 3, 1.0)
    assert mcnemar_exact([], []).p_value == 1.0


def test_mcnemar_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        mcnemar_exact([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([1, 0.5], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([1, 0], [2, float("nan")])


# Wilcoxon


def test_wilcoxon_exact_matches_scipy() -> None:
    baseline = [0.50, 0.52, 0.48, 0.51, 0.49, 0.50, 0.47, 0.53]
    candidate = [0.55, 0.51, 0.56, 0.58, 0.52, 0.54, 0.56, 0.59]
    result = wilcoxon_paired(baseline, candidate)
    expected = stats.wilcoxon(candidate, baseline, method="exact")
    assert result.method == "exact"
    assert result.n == 8
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.min_p_value == pytest.approx(2 / 2**8)
    assert not result.underpowered(0.05)


def test_wilcoxon_five_seeds_cannot_reach_five_percent() -> None:
    # Every seed improves: the most extreme outcome, yet p = 2 / 2**5 = 0.0625.
    result = wilcoxon_paired([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.4, 0.6, 0.8, 1.0])
    assert result.method == "exact"
    assert result.statistic == 0
    assert result.p_value == pytest.approx(0.0625) == pytest.approx(result.min_p_value)
    assert result.underpowered(0.05)
    assert not result.underpowered(0.1)
    assert not wilcoxon_paired(range(6), [x + 1 + x / 10 for x in range(6)]).underpowered(0.05)
    # the default level is 5%, and a test that can just reach it is not underpowered
    three = wilcoxon_paired([0.1, 0.2, 0.3], [0.2, 0.4, 0.6])
    assert three.min_p_value == pytest.approx(0.25) and three.underpowered()
    assert not Wilcoxon(n=6, statistic=0.0, p_value=0.05, method="exact", min_p_value=0.05).underpowered()


def test_wilcoxon_with_ties_and_zeros_uses_scipys_default() -> None:
    baseline = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    candidate = [2.0, 3.0, 3.0, 6.0, 4.0, 9.0, 8.0]  # differences 1, 1, 0, 2, -1, 3, 1
    result = wilcoxon_paired(baseline, candidate)
    expected = stats.wilcoxon(candidate, baseline)
    assert result.method == "auto"
    assert result.n == 6
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.min_p_value == pytest.approx(2 / 2**6)


def test_wilcoxon_float_noise_is_a_tie_not_two_ranks() -> None:
    # 0.3 - 0.1 < 0.2 = 0.5 - 0.3 in binary floating point; as accuracies it is the same change.
    baseline, candidate = [0.1, 0.5, 0.2, 0.4], [0.3, 0.3, 0.25, 0.7]
    assert stats.wilcoxon(candidate, baseline).statistic == 3  # the loss outranks the gain
    result = wilcoxon_paired(baseline, candidate)
    assert result.method == "auto"
    assert result.statistic == pytest.approx(stats.wilcoxon([0.2, -0.2, 0.05, 0.3]).statistic) == 2.5


def test_wilcoxon_over_fifty_pairs_uses_scipys_default() -> None:
    differences = (np.arange(1, 61) + 0.25) * (-1) ** np.arange(60)  # no ties, no zeros
    result = wilcoxon_paired(np.zeros(60), differences)
    assert (result.method, result.n) == ("auto", 60)
    assert result.p_value == pytest.approx(stats.wilcoxon(differences).pvalue)


@pytest.mark.parametrize("pairs", [3, 6, 9, 13, 20, 50])
def test_counted_signed_rank_test_matches_scipy(pairs: int) -> None:
    """The sign flips counted here, for the exact test and for scipy's enumeration with ties and
    zeros up to 13 pairs; beyond, with ties, scipy's normal approximation is called as it is."""
    rng = np.random.default_rng(pairs)
    for draw in range(6):  # scipy's enumeration of 2**13 flips takes a second
        tied = draw % 2 == 1  # accuracies on few samples: ties and zeros
        differences = rng.integers(-4, 5, pairs) / 8 if tied else rng.normal(size=pairs)
        if not np.any(differences):
            continue
        result = wilcoxon_paired(np.zeros(pairs), differences)
        expected = stats.wilcoxon(differences)
        assert result.statistic == pytest.approx(expected.statistic)
        assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9), (pairs, differences)


def test_mcnemar_matches_binomtest_over_many_tables() -> None:
    for b, c in itertools.product([0, 1, 2, 7, 30, 400], repeat=2):
        result = mcnemar_exact(*outcomes(5, c, b, 5))
        expected = 1.0 if b + c == 0 else stats.binomtest(c, b + c, 0.5).pvalue
        assert result.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_wilcoxon_without_differences() -> None:
    expected = Wilcoxon(n=0, statistic=0.0, p_value=1.0, method="none", min_p_value=1.0)
    assert wilcoxon_paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == expected
    assert wilcoxon_paired([], []) == expected
    one = wilcoxon_paired([0.5], [0.7])
    assert (one.n, one.p_value, one.min_p_value) == (1, 1.0, 1.0)
    assert one.underpowered(0.05)


def test_wilcoxon_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        wilcoxon_paired([0.5, 0.6], [0.5])
    with pytest.raises(ValueError, match="finite"):
        wilcoxon_paired([0.5, float("nan")], [0.5, 0.6])


# Holm


def test_holm_textbook_example() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm(p) == [True, False, False, True]
    assert holm(p, alpha=0.1) == [True, True, True, True]


def closed_bonferroni_adjusted(p: list[float]) -> list[float]:
    """Holm by its definition: closed testing with Bonferroni tests of every intersection."""
    m = len(p)
    return [
        max(
            min(1.0, len(subset) * min(p[j] for j in subset))
            for size in range(1, m + 1)
            for subset in itertools.combinations(range(m), size)
            if i in subset
        )
        for i in range(m)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_closed_testing_and_lies_between_raw_and_bonferroni(seed: int) -> None:
    p = np.random.default_rng(seed).uniform(0, 0.2, size=6).tolist()
    adjusted = holm_adjusted(p)
    assert adjusted == pytest.approx(closed_bonferroni_adjusted(p))
    assert all(raw <= adj <= min(1.0, len(p) * raw) + 1e-15 for raw, adj in zip(p, adjusted, strict=True))


def test_holm_ignores_nan() -> None:
    adjusted = holm_adjusted([0.01, float("nan"), 0.04, 0.03, 0.005])
    assert math.isnan(adjusted[1])
    assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, float("nan"), 0.04, 0.03, 0.005]) == [True, False, False, False, True]
    assert holm([float("nan")]) == [False]
    assert holm_adjusted([]) == []


def test_holm_caps_at_one_and_rejects_bad_p_values() -> None:
    assert holm_adjusted([0.6, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjusted([0.5, 1.5])
    assert holm_adjusted([0.0, 1.0]) == pytest.approx([0.0, 1.0])  # both ends are p-values
    assert holm([0.05]) == [True] and holm([0.025, 0.05]) == [True, True]  # reject at q = alpha


# Intervals


def test_wilson_matches_scipy() -> None:
    z = stats.norm.ppf(0.975)
    for successes, n in ((0, 10), (7, 34), (10, 10), (48, 80)):
        expected = stats.binomtest(successes, n).proportion_ci(0.95, method="wilson")
        assert _wilson(successes, n, z) == pytest.approx((expected.low, expected.high))


def test_wilson_interval_by_hand_and_its_edges() -> None:
    # 8 of 10 at 95%, by hand: centre (0.8 + z^2 / 20) / (1 + z^2 / 10) = 0.7167, half-width 0.2266
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    z = stats.norm.ppf(0.95)
    assert wilson_interval(1, 1, confidence=0.9) == pytest.approx((1 / (1 + z * z), 1.0))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    for confidence in (0.0, 1.0):
        with pytest.raises(ValueError, match="confidence"):
            wilson_interval(5, 10, confidence=confidence)


def test_unpaired_interval_worked_examples() -> None:
    # Newcombe (1998), Stat Med 17:873, method 10: 56/70 - 48/80.
    assert unpaired_difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), Perondi et al.
    assert unpaired_difference_interval(7, 34, 1, 34) == pytest.approx((0.0189, 0.3404), abs=5e-5)


def test_unpaired_interval_properties() -> None:
    low, high = unpaired_difference_interval(30, 50, 20, 50)
    assert low < 0.2 < high
    swapped = unpaired_difference_interval(20, 50, 30, 50)
    assert swapped == pytest.approx((-high, -low))
    wider = unpaired_difference_interval(3, 5, 2, 5)
    assert wider[0] < low and high < wider[1]
    for extreme in (unpaired_difference_interval(10, 10, 0, 10), unpaired_difference_interval(0, 10, 10, 10)):
        assert -1 <= extreme[0] <= extreme[1] <= 1
    assert all(math.isnan(x) for x in unpaired_difference_interval(0, 0, 3, 5))
    assert all(math.isnan(x) for x in unpaired_difference_interval(3, 5, 0, 0))
    one = unpaired_difference_interval(3, 5, 1, 1)  # one trial is a sample
    assert not any(math.isnan(x) for x in one) and one[0] < -0.4 < one[1]
    with pytest.raises(ValueError, match="successes"):
        unpaired_difference_interval(6, 5, 3, 5)
    with pytest.raises(ValueError, match="confidence"):
        unpaired_difference_interval(3, 5, 3, 5, confidence=1.0)


def test_paired_interval_worked_examples() -> None:
    # Fagerland, Lydersen & Laake (2014, Stat Med 33:2850; and their 2017 book, ch. 8), the
    # Newcombe square-and-add interval: Cavo et al. (a, b, c, d) = (59, 6, 16, 80), -0.0621.
    baseline, candidate = outcomes(both=59, only_candidate=6, only_baseline=16, neither=80)
    assert paired_difference_interval(baseline, candidate) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    # Bentur et al. (1, 1, 7, 12): a*d - b*c <= N/2, so the corrected phi is 0.
    baseline, candidate = outcomes(both=1, only_candidate=1, only_baseline=7, neither=12)
    assert paired_difference_interval(baseline, candidate) == pytest.approx((-0.5069, -0.0256), abs=5e-5)


def test_paired_interval_properties() -> None:
    baseline, candidate = outcomes(both=50, only_candidate=12, only_baseline=4, neither=34)
    low, high = paired_difference_interval(baseline, candidate)
    assert low < 8 / 100 < high
    assert -1 <= low and high <= 1
    assert paired_difference_interval(candidate, baseline) == pytest.approx((-high, -low))
    # The pairing narrows the interval against the one that treats the samples as independent.
    unpaired = unpaired_difference_interval(62, 100, 54, 100)
    assert high - low < unpaired[1] - unpaired[0]
    # Ten times the samples, same proportions: narrower.
    big_low, big_high = paired_difference_interval(baseline * 10, candidate * 10)
    assert low < big_low < 0.08 < big_high < high
    assert paired_difference_interval(baseline, candidate, confidence=0.99)[0] < low


def test_paired_interval_degenerate_cases() -> None:
    # No discordant pair: centred on 0, symmetric.
    low, high = paired_difference_interval(*outcomes(both=20, only_candidate=0, only_baseline=0, neither=10))
    assert low == pytest.approx(-high) and low < 0 < high
    # All right for both: no correlation can be estimated, the Wilson widths remain.
    low, high = paired_difference_interval([1] * 10, [1] * 10)
    assert low == pytest.approx(-high) and 0 < high < 1
    # Candidate right everywhere the baseline is wrong everywhere: the interval nears 1.
    low, high = paired_difference_interval([0] * 10, [1] * 10)
    assert 0.5 < low < high == pytest.approx(1.0)
    assert all(math.isnan(x) for x in paired_difference_interval([], []))
    with pytest.raises(ValueError, match="length"):
        paired_difference_interval([1, 0], [1])
    with pytest.raises(ValueError):
        paired_difference_interval([0.5, 1], [1, 0])  # outcomes are 0 or 1
    # a*d - b*c = 1 with N = 2: Newcombe's N/2 correction leaves phi = 0, the square-and-add width
    low, high = paired_difference_interval(*outcomes(both=1, only_candidate=0, only_baseline=0, neither=1))
    lower, upper = _wilson(1, 2, stats.norm.ppf(0.975))
    assert (low, high) == pytest.approx((-math.hypot(0.5 - lower, upper - 0.5), math.hypot(upper - 0.5, 0.5 - lower)))


def test_mean_interval_matches_scipy_t() -> None:
    values = [0.81, 0.79, 0.84, 0.80, 0.83]
    mean, low, high = mean_interval(values, confidence=0.9)
    expected = stats.t.interval(0.9, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert (low, high) == pytest.approx(expected)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 6, 9, 30, 101])
def test_t_quantile_matches_scipy(df: int) -> None:
    for confidence in (0.5, 0.9, 0.95, 0.99, 0.999):
        assert t_quantile(confidence, df) == pytest.approx(stats.t.ppf(0.5 + confidence / 2, df), rel=1e-10)
    with pytest.raises(ValueError):
        t_quantile(0.95, 0)


def test_mean_interval_edge_cases() -> None:
    mean, low, high = mean_interval([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        mean_interval([])
    with pytest.raises(ValueError):
        mean_interval([0.5, float("nan")])
    # two seeds: t(0.975, 1) = 12.706 times the standard error 0.1414 / sqrt(2) = 0.1
    mean, low, high = mean_interval([0.5, 0.7])
    assert (mean, low, high) == pytest.approx((0.6, 0.6 - 1.27062, 0.6 + 1.27062), abs=1e-5)
    for confidence in (0.0, 1.0):
        with pytest.raises(ValueError, match="confidence"):
            mean_interval([0.5, 0.7], confidence=confidence)
