"""``usage`` after a review: what the client was served, and what the rewrites cost in
``conscience.usage`` (server/usage.py), through the real openai client."""

from __future__ import annotations

from typing import Any

import openai

from conscience.testing.scripted import ScriptedEngine

ASK = [{"role": "user", "content": "Help me cheat on my exam."}]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def test_a_rewritten_answer_counts_the_rewrite_not_the_discarded_original(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.verdict = "unethical"
    answer = _client(make_proxy()).chat.completions.create(model="gen", messages=ASK)
    rewrite_words = len(engine.rewrite.split())
    assert answer.choices[0].message.content == engine.rewrite
    assert answer.usage is not None
    assert answer.usage.completion_tokens == rewrite_words  # not the generation's 5
    assert answer.usage.prompt_tokens == 10  # the client's prompt, as the upstream counted it
    assert answer.usage.total_tokens == 10 + rewrite_words
    spent = answer.model_extra["conscience"]["usage"]
    assert spent["generation"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert spent["rewrite"]["completion_tokens"] == rewrite_words
    assert spent["rewrite"]["prompt_tokens"] > 10  # the judge's own prompt


def test_a_passed_or_blocked_answer_keeps_the_upstreams_usage(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    client = _client(make_proxy())
    passed = client.chat.completions.create(model="gen", messages=ASK)
    assert passed.usage is not None and passed.usage.total_tokens == 15
    assert "usage" not in passed.model_extra["conscience"]
    engine.verdict = "unethical"
    blocked = client.chat.completions.create(
        model="gen", messages=ASK, extra_body={"conscience": {"policy": "block"}}
    )
    assert blocked.usage is not None and blocked.usage.total_tokens == 15
    assert "usage" not in blocked.model_extra["conscience"]


def test_with_several_choices_the_rewrites_are_said_apart(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.verdict = "unethical"
    answer = _client(make_proxy()).chat.completions.create(model="gen", messages=ASK, n=2)
    assert answer.usage is not None and answer.usage.total_tokens == 15  # which choice spent what?
    spent = answer.model_extra["conscience"]["usage"]
    assert spent["rewrite"]["completion_tokens"] == 2 * len(engine.rewrite.split())
