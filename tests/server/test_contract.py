"""A guarded answer keeps the shape the client asked for: under rewrite and block, the SDK's
``parse()`` (chat and Responses) gets a parsed object or the API's refusal, never malformed
JSON."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from conscience.server.contract import Invalid, schema_of, validate
from conscience.server.pipeline import REFUSAL
from conscience.testing.scripted import ScriptedEngine

ASK = [{"role": "user", "content": "Plan my week"}]


class Step(BaseModel):
    day: str
    task: str


class Plan(BaseModel):
    title: str
    steps: list[Step]


VALID = json.dumps({"title": "A safe week", "steps": [{"day": "Mon", "task": "Rest"}]})


def _client(make_proxy: Any, policy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=make_proxy(policy=policy) + "/v1", api_key="x", max_retries=0)


def test_validate_follows_the_schema_of_a_pydantic_model() -> None:
    schema = Plan.model_json_schema()
    validate(json.loads(VALID), schema)
    for broken in (
        {"title": "t"},  # steps missing
        {"title": "t", "steps": [{"day": "Mon"}]},  # a nested required field, through $ref
        {"title": 3, "steps": []},
        {"title": "t", "steps": "none"},
    ):
        with pytest.raises(Invalid):
            validate(broken, schema)
    strict = {"type": "object", "properties": {"a": {"type": "integer"}}}
    strict["additionalProperties"] = False
    with pytest.raises(Invalid, match="unexpected"):
        validate({"a": 1, "b": 2}, strict)
    with pytest.raises(Invalid):
        validate({"a": True}, strict)  # a boolean is not an integer
    assert schema_of({"type": "json_object"}) == {"type": "object"}
    assert schema_of({"type": "text"}) is None and schema_of(None) is None


def test_chat_parse_gets_the_rewrite_parsed(engine: ScriptedEngine, make_proxy: Any) -> None:
    engine.generation, engine.verdict, engine.rewrite = '{"title": "x"}', "unethical", VALID
    client = _client(make_proxy, "rewrite")
    completion = client.chat.completions.parse(model="gen", messages=ASK, response_format=Plan)
    assert completion.choices[0].message.parsed == Plan.model_validate_json(VALID)
    assert completion.model_extra["conscience"]["action"] == "rewritten"
    (rewrite,) = engine.of_kind("rewrite")
    assert rewrite["response_format"]["type"] == "json_schema"  # asked in the client's format
    assert rewrite["response_format"]["json_schema"]["schema"]["required"] == ["title", "steps"]


@pytest.mark.parametrize("policy", ["rewrite", "block"])
def test_chat_parse_gets_a_refusal_when_no_valid_rewrite(
    engine: ScriptedEngine, make_proxy: Any, policy: str
) -> None:
    """A rewrite that breaks the schema is blocked; the SDK takes its content-filter path,
    whose completion carries the refusal."""
    engine.verdict, engine.rewrite = "unethical", "Here is a safe week: rest."
    client = _client(make_proxy, policy)
    with pytest.raises(openai.ContentFilterFinishReasonError) as caught:
        client.chat.completions.parse(model="gen", messages=ASK, response_format=Plan)
    message = caught.value.completion.choices[0].message
    assert message.refusal == REFUSAL


def test_a_json_object_rewrite_must_be_json(engine: ScriptedEngine, make_proxy: Any) -> None:
    engine.verdict, engine.rewrite = "unethical", "not json"
    client = _client(make_proxy, "rewrite")
    completion = client.chat.completions.create(
        model="gen", messages=ASK, response_format={"type": "json_object"}
    )
    assert completion.model_extra["conscience"]["action"] == "blocked"
    assert completion.choices[0].finish_reason == "content_filter"


@pytest.mark.parametrize(("rewrite", "action"), [(VALID, "rewritten"), ("prose", "blocked")])
def test_responses_parse_gets_a_parsed_object_or_a_refusal(
    engine: ScriptedEngine, make_proxy: Any, rewrite: str, action: str
) -> None:
    engine.verdict, engine.rewrite = "unethical", rewrite
    client = _client(make_proxy, "rewrite")
    response = client.responses.parse(model="gen", input="Plan my week", text_format=Plan)
    assert response.model_extra["conscience"]["action"] == action
    (item,) = response.output
    if action == "rewritten":
        assert response.output_parsed == Plan.model_validate_json(VALID)
    else:
        assert response.output_parsed is None
        assert item.content[0].type == "refusal" and item.content[0].refusal == REFUSAL
