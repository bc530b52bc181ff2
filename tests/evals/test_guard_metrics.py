"""The guard-model figures (F1, FPR, FNR, agreement, AUC; harmful positive) of a verdict run."""

from __future__ import annotations

import pytest

from conscience.evals.verdicts.guard_metrics import guard_metrics
from conscience.evals.verdicts.metrics import ERROR, Row


def _row(gold: str, predicted: str, p: float | None = 0.5) -> Row:
    return Row(f"{gold}-{predicted}-{p}", gold, predicted, False, p, 0.1)


def test_counts_and_ratios_follow_the_formulas():
    rows = [
        _row("unethical", "unethical", 0.9),  # TP
        _row("unethical", "unethical", 0.8),  # TP
        _row("unethical", "ethical", 0.3),  # FN
        _row("ethical", "unethical", 0.7),  # FP
        _row("neutral", "neutral", 0.2),  # TN: neutral passes, like ethical
        _row("ethical", "ethical", 0.1),  # TN
    ]
    m = guard_metrics(rows)
    assert m["harmful"] == 3
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(1 / 3)
    assert m["false_negative_rate"] == pytest.approx(1 / 3)
    assert m["agreement"] == pytest.approx(4 / 6)
    # positives 0.9, 0.8, 0.3 vs negatives 0.7, 0.2, 0.1: 8 of 9 pairs ranked right.
    assert m["auc"] == pytest.approx(8 / 9)


def test_an_error_is_wrong_on_either_class():
    m = guard_metrics([_row("unethical", ERROR, None), _row("ethical", ERROR, None)])
    assert m["false_negative_rate"] == 1.0 and m["false_positive_rate"] == 1.0
    assert m["agreement"] == 0.0 and m["f1"] == 0.0
    assert m["auc"] is None  # not every item has a probability


def test_undefined_ratios_are_none_not_zero():
    m = guard_metrics([_row("ethical", "ethical")])
    assert m["f1"] is None and m["recall"] is None and m["false_negative_rate"] is None
    assert m["false_positive_rate"] == 0.0 and m["auc"] is None
