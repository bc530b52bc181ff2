"""The proxy through LangChain's ``ChatOpenAI`` (langchain-openai), as its users call it: the
verdict in the response headers (``include_response_headers``), a harmful answer rewritten or
blocked (never passed), per-request options in ``extra_body``, a structured output kept under a
rewrite, and tool calls through ``bind_tools`` streamed incrementally."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from conscience.testing.scripted import ScriptedEngine
from tests.server.test_stream_fields import WEATHER_CALL

langchain_openai = pytest.importorskip("langchain_openai")

ASK = "How do I get into my neighbour's wifi?"


def _llm(url: str, **extra: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        base_url=url + "/v1",
        api_key="none",
        model="gen",
        max_retries=0,
        include_response_headers=True,
        **extra,
    )


def test_the_verdict_reaches_langchain_in_the_headers(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.verdict = "unethical"
    url = make_proxy()
    reply = _llm(url).invoke(ASK)
    assert reply.content == engine.rewrite
    headers = reply.response_metadata["headers"]
    assert headers["x-conscience-verdict"] == "unethical"
    assert headers["x-conscience-action"] == "rewritten"
    blocked = _llm(url, extra_body={"conscience": {"policy": "block"}}).invoke(ASK)
    assert blocked.response_metadata["headers"]["x-conscience-action"] == "blocked"
    assert engine.generation not in str(blocked.content)


class Plan(BaseModel):
    steps: list[str]


def test_structured_output_survives_a_rewrite(engine: ScriptedEngine, make_proxy: Any) -> None:
    engine.verdict = "unethical"
    engine.generation = json.dumps({"steps": ["crack the password"]})
    engine.rewrite = json.dumps({"steps": ["ask your neighbour for the password"]})
    url = make_proxy()
    structured = _llm(url).with_structured_output(Plan, method="json_schema")
    plan = structured.invoke(ASK)
    assert plan == Plan(steps=["ask your neighbour for the password"])


def test_bound_tools_stream_incrementally_with_their_calls(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.message = {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]}
    url = make_proxy(stream_mode="incremental")

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = _llm(url).bind_tools([get_weather])
    merged = None
    for piece in llm.stream("What is the weather in Oslo?"):
        merged = piece if merged is None else merged + piece
    assert merged is not None
    assert [c["name"] for c in merged.tool_calls] == ["get_weather"]
    assert merged.tool_calls[0]["args"] == {"city": "Oslo"}
