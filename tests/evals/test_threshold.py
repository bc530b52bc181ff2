"""The conformal threshold rule (evals/shared/threshold.py): ranks worked by hand, the promised
false-positive rate on synthetic scores, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conscience.errors import ConfigError
from conscience.evals.shared.threshold import conformal_rank, conformal_threshold


@pytest.mark.parametrize(
    ("n", "alpha", "rank"),
    [
        (19, 0.05, 19),  # 20 * 0.95 = 19 exactly (in floating point, 18.999... or 19.000...1)
        (9, 0.2, 8),  # 10 * 0.8 = 8
        (50, 0.1, 46),  # 51 * 0.9 = 45.9 -> 46
        (99, 0.1, 90),  # 100 * 0.9 = 90
        (1000, 0.02, 981),  # 1001 * 0.98 = 980.98 -> 981
        (1, 0.5, 1),  # 2 * 0.5 = 1: the single negative is the threshold
    ],
)
def test_the_rank_is_the_ceiling_of_n_plus_one_times_one_minus_alpha(
    n: int, alpha: float, rank: int
) -> None:
    assert conformal_rank(n, alpha) == rank


def test_the_threshold_sits_just_above_the_rth_smallest_negative() -> None:
    scores = np.arange(1, 20) / 20  # 0.05 .. 0.95, shuffled below
    shuffled = np.random.default_rng(0).permutation(scores)
    t = conformal_threshold(shuffled, 0.05)  # r = 19: above the largest
    assert t > 0.95 and t == np.nextafter(0.95, 1.0)
    assert not (shuffled >= t).any()
    t = conformal_threshold(np.arange(1, 10) / 10, 0.2)  # r = 8: above 0.8, flags 0.9 only
    assert t == np.nextafter(0.8, 1.0)
    assert ((np.arange(1, 10) / 10) >= t).sum() == 1


def test_ties_are_not_flagged_with_the_score_they_tie() -> None:
    # r = ceil(6 * 0.5) = 3: the third smallest is a 0.5; every 0.5 stays unflagged
    scores = np.array([0.9, 0.5, 0.1, 0.5, 0.5])
    t = conformal_threshold(scores, 0.5)
    assert (scores >= t).tolist() == [True, False, False, False, False]
    same = np.full(20, 0.7)  # one value everywhere: nothing at or below it is flagged
    assert not (same >= conformal_threshold(same, 0.1)).any()


@pytest.mark.parametrize("draw", ["normal", "beta", "discrete"])
def test_fresh_negatives_are_flagged_at_most_alpha_of_the_time(draw: str) -> None:
    """Over many draws of n calibration negatives and fresh ones from the same distribution,
    the share of fresh negatives flagged is at most alpha (and, for continuous scores, at
    least alpha - 1/(n + 1)): 1 - 46/51 = 0.098 for n = 50, alpha = 0.1."""
    rng = np.random.default_rng(1)
    trials, n, fresh, alpha = 4000, 50, 200, 0.1

    def sample(size: tuple[int, ...]) -> np.ndarray:
        if draw == "normal":
            return rng.normal(size=size)
        if draw == "beta":
            return rng.beta(0.5, 3.0, size=size)  # skewed, bunched near 0
        return rng.integers(0, 8, size=size) / 8  # ties everywhere

    rates = []
    for calibration, new in zip(sample((trials, n)), sample((trials, fresh)), strict=True):
        rates.append(float(np.mean(new >= conformal_threshold(calibration, alpha))))
    rate, error = float(np.mean(rates)), 3 * float(np.std(rates)) / math.sqrt(trials)
    assert rate <= alpha + error
    if draw != "discrete":
        expected = 1 - conformal_rank(n, alpha) / (n + 1)
        assert rate == pytest.approx(expected, abs=error)
    # The naive empirical quantile (flag the top alpha of the calibration scores) breaks the
    # promise on the same draws: the rule's +1 is what keeps it.
    if draw == "normal":
        naive = []
        for calibration, new in zip(sample((trials, n)), sample((trials, fresh)), strict=True):
            naive.append(float(np.mean(new > np.quantile(calibration, 1 - alpha))))
        assert float(np.mean(naive)) > alpha + error


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_a_rate_outside_zero_to_one_is_refused(alpha: float) -> None:
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        conformal_threshold(np.linspace(0, 1, 100), alpha)


def test_too_few_negatives_for_the_rate_are_refused_with_the_number_needed() -> None:
    with pytest.raises(ConfigError, match=r"5 negative scores cannot promise .* 0.1: at least 9"):
        conformal_threshold(np.linspace(0, 1, 5), 0.1)
    assert conformal_threshold(np.linspace(0, 1, 9), 0.1) > 1.0  # 9 suffice: r = 9 = n
    with pytest.raises(ConfigError, match="at least 19"):
        conformal_threshold(np.linspace(0, 1, 18), 0.05)
    with pytest.raises(ConfigError, match="no negative scores"):
        conformal_threshold(np.array([]), 0.1)


def test_scores_that_are_not_finite_numbers_in_one_dimension_are_refused() -> None:
    with pytest.raises(ConfigError, match="NaN or infinite"):
        conformal_threshold(np.array([0.1, math.nan, 0.3] * 10), 0.1)
    with pytest.raises(ConfigError, match="1-D"):
        conformal_threshold(np.zeros((10, 2)), 0.1)
