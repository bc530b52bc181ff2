"""A stream carries what its non-streamed twin does, through the real openai client: released
text with its reasoning, token log-probs and (asked for) usage in incremental mode, a reviewed
tool call whole, and a buffered stream's log-probs."""

from __future__ import annotations

import json
from typing import Any

import openai

from conscience.testing.scripted import ScriptedEngine

ASK = [{"role": "user", "content": "Tell me about the sea."}]
ANSWER = "The sea is large and deep and full of fish and salt and light."
THOUGHT = "They want facts about the sea; keep it short."
WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}


def _stream(url: str, **extra: Any) -> list[Any]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    return list(client.chat.completions.create(model="gen", messages=ASK, stream=True, **extra))


def test_released_text_comes_with_its_reasoning_logprobs_and_usage(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.message = {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT}
    words = ANSWER.split(" ")
    engine.choice_fields = {
        "logprobs": {"content": [{"token": w, "logprob": -0.1, "top_logprobs": []} for w in words]}
    }
    url = make_proxy(stream_mode="incremental", stream_window_chars=20)
    chunks = _stream(url, logprobs=True, stream_options={"include_usage": True})
    deltas = [c.choices[0] for c in chunks if c.choices]
    text = "".join(d.delta.content or "" for d in deltas)
    assert text == ANSWER
    assert sum(1 for d in deltas if d.delta.content) >= 2  # released in several pieces
    thought = "".join((d.delta.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert thought == THOUGHT
    tokens = [t.token for d in deltas if d.logprobs for t in d.logprobs.content or []]
    assert "".join(tokens).replace(" ", "") == ANSWER.replace(" ", "")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens == 15
    assert last.model_extra["conscience"]["action"] == "passed"
    # The upstream was asked for its usage; the client that did not ask gets none.
    (generation, *_) = engine.of_kind("generate")
    assert generation["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in _stream(url))


def test_a_blocked_incremental_stream_releases_no_reasoning_of_the_held_text(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.message = {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT}
    engine.verdict = "unethical"
    url = make_proxy(stream_mode="incremental", stream_window_chars=1000, policy="block")
    chunks = _stream(url)
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert not any((d.delta.model_extra or {}).get("reasoning_content") for d in deltas)
    assert all(ANSWER not in (d.delta.content or "") for d in deltas)
    assert chunks[-1].model_extra["conscience"]["action"] == "blocked"


def test_a_buffered_stream_carries_the_logprobs_of_its_unary_twin(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    words = ANSWER.split(" ")
    tokens = [{"token": w, "logprob": -0.2, "top_logprobs": []} for w in words]
    engine.message = {"role": "assistant", "content": ANSWER}
    engine.choice_fields = {"logprobs": {"content": tokens}}
    url = make_proxy(stream_mode="buffered")
    chunks = _stream(url, logprobs=True)
    streamed = [
        t.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in (c.choices[0].logprobs.content or [])
    ]
    assert streamed == words
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    unary = client.chat.completions.create(model="gen", messages=ASK, logprobs=True)
    assert unary.choices[0].logprobs is not None
    assert [t.token for t in unary.choices[0].logprobs.content or []] == streamed


def test_an_incremental_stream_releases_a_reviewed_tool_call_whole(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.message = {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]}
    url = make_proxy(stream_mode="incremental")
    chunks = _stream(url)
    calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == '{"city": "Oslo"}'
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"]
    (review,) = engine.of_kind("review")
    assert "get_weather" in json.dumps(review["messages"])  # read before it was released
