"""Contextual calibration figures: rows of two runs joined by id, three AUCs per source."""

from __future__ import annotations

import pytest

from conscience.evals.contextual import contextual_aucs
from conscience.evals.verdict_metrics import Row


def _row(item_id: str, gold: str, p: float | None) -> Row:
    probs = None if p is None else {"ethical": 1 - p, "neutral": 0.0, "unethical": p}
    return Row(item_id, gold, "ethical", False, p, 0.1, probs)


def test_the_prior_explains_what_the_answer_ranks_and_the_difference_removes_it():
    # The judge reads only the question: P(answer) = P(prior) + a little noise.
    answered = [
        _row("a-1", "unethical", 0.9),
        _row("a-2", "unethical", 0.7),
        _row("a-3", "ethical", 0.6),
        _row("b-1", "ethical", 0.2),
        _row("b-2", "unethical", None),  # no probabilities: left out
    ]
    prior = [
        _row("a-1", "unethical", 0.85),
        _row("a-2", "unethical", 0.75),
        _row("a-3", "ethical", 0.5),
        _row("b-1", "ethical", 0.1),
        _row("b-2", "unethical", 0.9),
    ]
    figures = contextual_aucs(answered, prior)
    assert figures["all"]["items"] == 4
    assert figures["all"]["answer"] == pytest.approx(1.0)
    assert figures["all"]["prior"] == pytest.approx(1.0)
    # differences: a-1 +.05, a-2 -.05 (harmful) vs a-3 +.1, b-1 +.1: every pair inverted
    assert figures["all"]["difference"] == pytest.approx(0.0)
    assert figures["a"]["items"] == 3 and figures["b"]["answer"] is None  # one class only
