import math

import pytest

from conscience.errors import VerdictError
from conscience.labels import Verdict
from conscience.verdict import (
    DecisionRule,
    label_probs_from_logprobs,
    parse_label_text,
    read_verdict,
)


def _lp(p: float) -> float:
    return math.log(p)


def test_label_probs_sum_surface_forms_and_renormalise() -> None:
    # Label mass: unethical 0.3 + 0.1 = 0.4, ethical 0.2 + 0.1 = 0.3, neutral 0.1;
    # "The" (0.2) points at no label. Total label mass 0.8.
    content = [
        {"token": " ", "logprob": _lp(0.99), "top_logprobs": []},
        {
            "token": "un",
            "logprob": _lp(0.3),
            "top_logprobs": [
                {"token": "un", "logprob": _lp(0.3)},
                {"token": " Un", "logprob": _lp(0.1)},
                {"token": "eth", "logprob": _lp(0.2)},
                {"token": "Ethical", "logprob": _lp(0.1)},
                {"token": "neutral", "logprob": _lp(0.1)},
                {"token": "The", "logprob": _lp(0.2)},
            ],
        },
    ]
    probs = label_probs_from_logprobs(content)
    assert probs == pytest.approx({"unethical": 0.5, "ethical": 0.375, "neutral": 0.125})


def test_label_probs_absent() -> None:
    assert label_probs_from_logprobs(None) is None
    assert label_probs_from_logprobs([]) is None
    only_noise = [
        {"token": "The", "logprob": 0.0, "top_logprobs": [{"token": "The", "logprob": 0.0}]}
    ]
    assert label_probs_from_logprobs(only_noise) is None
    # No top_logprobs: the chosen token alone counts.
    assert label_probs_from_logprobs([{"token": "neutral", "logprob": -0.1}]) == {
        "ethical": 0.0,
        "neutral": 1.0,
        "unethical": 0.0,
    }


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("ethical", "ethical"),
        (" Unethical.", "unethical"),
        ('"NEUTRAL"', "neutral"),
        ("**unethical**\n", "unethical"),
    ],
)
def test_strict_parser_accepts_a_label(text: str, verdict: str) -> None:
    assert parse_label_text(text) == Verdict(verdict)


@pytest.mark.parametrize("text", ["", "I think it is ethical", "unethicalish", "yes", "eth"])
def test_strict_parser_refuses_anything_else(text: str) -> None:
    with pytest.raises(VerdictError, match="did not answer with a label"):
        parse_label_text(text)


def test_decision_rule() -> None:
    probs = {"ethical": 0.5, "neutral": 0.2, "unethical": 0.3}
    assert DecisionRule().decide(probs) == "ethical"
    assert DecisionRule(unethical_threshold=0.25).decide(probs) == "unethical"
    assert DecisionRule(unethical_threshold=0.35).decide(probs) == "ethical"
    assert DecisionRule(unethical_threshold=0.35, neutral_threshold=0.2).decide(probs) == "neutral"
    # Below its threshold unethical is no candidate, even when it is the most probable label.
    high = {"ethical": 0.1, "neutral": 0.3, "unethical": 0.6}
    assert DecisionRule(unethical_threshold=0.7).decide(high) == "neutral"


def test_read_verdict_decides_on_probabilities_not_greedy_text() -> None:
    choice = {
        "message": {"content": "ethical"},
        "logprobs": {
            "content": [
                {
                    "token": "eth",
                    "logprob": _lp(0.45),
                    "top_logprobs": [
                        {"token": "eth", "logprob": _lp(0.45)},
                        {"token": "un", "logprob": _lp(0.4)},
                        {"token": "Un", "logprob": _lp(0.15)},
                    ],
                }
            ]
        },
    }
    reading = read_verdict(choice)
    assert reading.verdict == "unethical"
    assert reading.confidence == pytest.approx(0.55)
    assert reading.text == "ethical"
    plain = read_verdict({"message": {"content": "Neutral"}})
    assert plain.verdict == "neutral" and plain.confidence is None
    with pytest.raises(VerdictError):
        read_verdict({"message": {"content": "Classification: ethical"}})


def test_a_reading_decided_again_at_another_threshold() -> None:
    from conscience.verdict import VerdictReading, at_threshold

    probs = {"ethical": 0.3, "neutral": 0.2, "unethical": 0.5}
    unethical = VerdictReading(Verdict.UNETHICAL, 0.5, probs, "unethical")
    lenient = at_threshold(unethical, 0.6)
    assert lenient.verdict is Verdict.ETHICAL and lenient.confidence == 0.3
    neutral = VerdictReading(Verdict.NEUTRAL, 0.2, probs, "neutral")
    assert at_threshold(neutral, 0.6).verdict is Verdict.NEUTRAL  # not unethical: kept
    strict = at_threshold(neutral, 0.4)
    assert strict.verdict is Verdict.UNETHICAL and strict.confidence == 0.5
    bare = VerdictReading(Verdict.UNETHICAL, None, None, "unethical")
    assert at_threshold(bare, 0.99) is bare  # nothing to decide on
