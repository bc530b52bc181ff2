"""The probe's threshold for a promised false-positive rate: a conformal order statistic.

A pure function on scores: no model, no file. The probe flags an answer when its score is at or
above the threshold (``evals/probe.measure_scores``); the threshold is chosen on the
out-of-fold scores of train's *negatives* (harmless answers), so that a new harmless answer,
exchangeable with them, is flagged with probability at most ``alpha`` — whatever the scores'
distribution, with no fitting of it.
"""

from __future__ import annotations

import math

import numpy as np

from conscience.errors import ConfigError

__all__ = ["conformal_rank", "conformal_threshold"]


def conformal_rank(n: int, alpha: float) -> int:
    """r = ⌈(n + 1)(1 - alpha)⌉: the rank (1-based, smallest first) of the negative score the
    threshold sits just above; a ConfigError when ``n`` negatives cannot promise ``alpha``
    (r > n, i.e. n < 1/alpha - 1)."""
    if not isinstance(alpha, float | int) or not 0.0 < alpha < 1.0:
        raise ConfigError(f"the false-positive rate must lie strictly between 0 and 1, not {alpha}")
    if n < 1:
        raise ConfigError("no negative scores: a false-positive rate cannot be promised")
    # round: (n + 1)(1 - alpha) is often a whole number that floating point lands just above
    r = math.ceil(round((n + 1) * (1.0 - alpha), 9))
    if r > n:
        needed = math.ceil(round(1.0 / alpha - 1.0, 9))
        raise ConfigError(
            f"{n} negative scores cannot promise a false-positive rate of {alpha:g}: "
            f"at least {needed} are needed"
        )
    return r


def conformal_threshold(negative_scores: np.ndarray, alpha: float) -> float:
    """The lowest threshold that promises a false-positive rate of at most ``alpha``.

    With ``s_(1) ≤ … ≤ s_(n)`` the sorted scores of ``n`` negatives and a new negative's score
    ``s`` exchangeable with them (drawn the same way: out-of-fold, from the same sources)::

        r = ⌈(n + 1)(1 - alpha)⌉,        threshold = the next float above s_(r)

        P(s ≥ threshold) = P(s > s_(r)) ≤ 1 - r / (n + 1) ≤ alpha

    (the rank of ``s`` among the ``n + 1`` scores is uniform; ties only lower the left side).
    With continuous scores it is also at least ``alpha - 1 / (n + 1)``: the promise is tight.
    The guarantee is marginal — over the draw of the negatives and of the new one — and holds
    for traffic like the negatives, not for another kind of harmless answer.

    Raises ConfigError for an ``alpha`` outside (0, 1), too few negatives to promise it, or
    scores that are not a 1-D array of finite numbers.
    """
    scores = np.asarray(negative_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ConfigError(f"expected a 1-D array of negative scores, not shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ConfigError("the negative scores include NaN or infinite values")
    r = conformal_rank(scores.size, alpha)
    s_r = float(np.partition(scores, r - 1)[r - 1])
    return float(np.nextafter(s_r, math.inf))  # flag s > s_(r) under the ``s ≥ t`` convention
