"""evals/cascade.py: the rule that lets a second review decide only inside a band of the
first one's scores."""

from __future__ import annotations

import numpy as np
import pytest

from conscience.errors import ConfigError
from conscience.evals.cascade import _cheapest, cascade

FIRST = np.array([0.10, 0.40, 0.50, 0.60, 0.90])
THEN = np.array([0.90, 0.90, 0.20, 0.10, 0.10])


def test_outside_the_band_the_first_decides_inside_it_the_second() -> None:
    flagged, escalated = cascade(FIRST, THEN, then_threshold=0.5, lo=0.4, hi=0.6)
    assert escalated.tolist() == [False, True, True, False, False]  # lo <= s < hi
    # 0.10: ethical without asking; 0.40: the second says 0.90; 0.50: the second says 0.20;
    # 0.60 and 0.90: at or above hi, unethical whatever the second would say.
    assert flagged.tolist() == [False, True, False, True, True]


def test_an_empty_band_is_the_first_alone_and_an_unbounded_one_the_second() -> None:
    alone, none = cascade(FIRST, THEN, then_threshold=0.5, lo=0.5, hi=0.5)
    assert not none.any() and alone.tolist() == (FIRST >= 0.5).tolist()
    every, all_escalated = cascade(FIRST, THEN, then_threshold=0.5, lo=-np.inf, hi=np.inf)
    assert all_escalated.all() and every.tolist() == (THEN >= 0.5).tolist()


def test_a_band_upside_down_is_refused() -> None:
    with pytest.raises(ConfigError, match="low end"):
        cascade(FIRST, THEN, then_threshold=0.5, lo=0.7, hi=0.3)


def test_the_cheapest_band_is_the_least_escalated_that_reaches_the_f1() -> None:
    bands = [(-0.72, 0.42, 0.38, 0.61), (-0.70, 0.30, 0.44, 0.61), (-0.69, 0.10, 0.5, 0.61)]
    assert _cheapest(bands, then_f1=0.70) == (0.44, 0.61)
    assert _cheapest(bands, then_f1=0.73) is None
