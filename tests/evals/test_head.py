"""The learned decision head (evals/head.py): features from two runs, the logistic fit, the
threshold, the figures — on synthetic rows, never a model's verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from conscience.errors import ConfigError
from conscience.evals.head import features, fit_head, measure
from conscience.evals.verdict_metrics import Row


def _row(item_id: str, gold: str, p: float | None, parts: dict | None = None) -> Row:
    probs = None if p is None else {"ethical": 1 - p, "neutral": 0.0, "unethical": p}
    return Row(item_id, gold, "ethical", False, p, 0.1, probs, parts=parts)


def test_features_join_by_id_and_skip_items_without_probabilities():
    answered = [_row("a", "unethical", 0.5), _row("b", "ethical", None), _row("c", "ethical", 0.2)]
    prior = [_row("a", "unethical", 0.9), _row("b", "ethical", 0.1)]
    ids, x, gold = features({"answer": answered, "prior": prior}, ["answer", "prior"])
    assert ids == ["a"] and gold.tolist() == [1.0]
    assert x[0].tolist() == pytest.approx([0.0, np.log(9), 1.0])


def test_features_read_the_decomposed_parts_and_their_products():
    parts = {"request": 0.8, "complies": 0.5, "harm": 0.1}
    runs = {
        "parts": [_row("a", "ethical", 0.5, parts), _row("b", "ethical", 0.5)],
        "answer": [_row("a", "ethical", 0.75), _row("b", "ethical", 0.75)],
    }
    names = ["harm", "help", "decomposed", "answer"]
    ids, x, _ = features(runs, names)
    assert ids == ["a"]  # b has no parts
    p = 1 - (1 - 0.4) * 0.9
    expected = [np.log(0.1 / 0.9), np.log(0.4 / 0.6), np.log(p / (1 - p)), np.log(3), 1.0]
    assert x[0].tolist() == pytest.approx(expected)


def test_features_name_what_is_missing():
    with pytest.raises(ConfigError, match="unknown features"):
        features({}, ["answer", "vibes"])
    with pytest.raises(ConfigError, match="need the runs"):
        features({"answer": []}, ["answer", "harm"])


def test_the_fit_finds_the_informative_feature_and_its_sign():
    rng = np.random.default_rng(0)
    n = 400
    gold = rng.integers(0, 2, n).astype(float)
    informative = np.where(gold == 1, -1.0, 1.0) + rng.normal(0, 0.7, n)  # inverted, like HarmBench
    noise = rng.normal(0, 1.0, n)
    x = np.column_stack([noise, informative, np.ones(n)])
    head = fit_head(x, gold, l2=0.1)
    assert head.weights[1] < -1.0 and abs(head.weights[0]) < 0.3
    figures = measure(head, x, gold)
    assert figures["auc"] > 0.9 and figures["f1"] > 0.8 and figures["items"] == n


def test_the_threshold_maximises_f1_on_the_fitted_data():
    x = np.array([[3.0, 0, 1], [2.0, 0, 1], [1.0, 0, 1], [-1.0, 0, 1], [-2.0, 0, 1]])
    gold = np.array([1.0, 1.0, 0.0, 1.0, 0.0])
    head = fit_head(x, gold, l2=0.01)
    scores = head.scores(x)
    best = max(
        (2 * np.sum((scores >= t) & (gold == 1)) / (np.sum(scores >= t) + 3), t) for t in scores
    )
    assert head.threshold == pytest.approx(best[1])
