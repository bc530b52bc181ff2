"""The judge always fits: a conversation the generator accepts is reviewed (and rewritten) on a
bounded window of it, never a 5xx because the judge's prompt would be too long."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from conscience.testing.scripted import ScriptedEngine

LONG = " ".join(f"word{i}" for i in range(2900))  # 2,900 words: the generator takes them


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def _words(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content")).split()) for m in body["messages"])


@pytest.mark.parametrize("method", ["single", "probe"])
def test_a_long_conversation_before_a_small_judge_is_reviewed(
    engine: ScriptedEngine, make_proxy: Any, method: str
) -> None:
    engine.judge_context_words = 3000
    url = make_proxy(judge_method=method)
    messages = [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": LONG},
    ]
    answer = _client(url).chat.completions.create(model="gen", messages=messages)
    assert answer.model_extra["conscience"]["verdict"] in ("ethical", "neutral", "unethical")
    (generation,) = engine.of_kind("generate")
    assert _words(generation) >= 2900  # the generator read it all
    if method == "single":
        (review,) = engine.of_kind("review")
        assert _words(review) <= 3000
        assert "characters left out" in review["messages"][-1]["content"]
        assert "You are a careful assistant." in review["messages"][-1]["content"]


def test_a_judge_smaller_than_the_window_is_asked_again_with_less(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.judge_context_words = 1000  # under the default window of 8,000 characters
    engine.verdict = "unethical"
    url = make_proxy(judge_method="single")
    answer = _client(url).chat.completions.create(
        model="gen", messages=[{"role": "user", "content": LONG}]
    )
    said = answer.model_extra["conscience"]
    assert said["verdict"] == "unethical" and said["action"] == "rewritten"
    reviews = engine.of_kind("review")
    assert len(reviews) >= 2  # refused as too long, then read with half
    assert _words(reviews[-1]) <= 1000 < _words(reviews[0])
    rewrites = engine.of_kind("rewrite")  # the rewrite's prompt too: asked again with less
    assert _words(rewrites[-1]) <= 1000 < _words(rewrites[0])


def test_a_judge_too_small_for_any_window_is_an_error_not_a_loop(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.judge_context_words = 50  # not even the framework fits
    url = make_proxy(judge_method="single")
    with pytest.raises(openai.APIStatusError) as caught:
        _client(url).chat.completions.create(
            model="gen", messages=[{"role": "user", "content": LONG}]
        )
    assert caught.value.status_code == 503
    assert 2 <= len(engine.of_kind("review")) <= 6
