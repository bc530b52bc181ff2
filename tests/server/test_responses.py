"""``POST /v1/responses`` through the real `openai` client, in front of a scripted engine.

The Responses API is served from the upstream's chat completions through the same Pipeline as
``/v1/chat/completions``; these tests check the mechanisms (what the engine was asked, what was
stored, where the ``conscience`` object is, which events in which order), and every body and
event against the SDK's own types, strictly (``model_validate``, not the SDK's lenient parse).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from conscience.server.pipeline import REFUSAL
from conscience.testing.scripted import Fault, ScriptedEngine

QUESTION = "What is the capital of France?"
EVENTS = TypeAdapter(ResponseStreamEvent)
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "shell", "arguments": '{"cmd": "ls"}'},
}
SHELL_TOOL = {
    "type": "function",
    "name": "shell",
    "description": "Run a command.",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
}


def _client(url: str, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)


def _stored(tmp_path: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(tmp_path / "judgements.sqlite3")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM judgements ORDER BY created_at").fetchall()


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + "/v1/responses", json=body, timeout=10)


def _events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A stream's events, raw, each checked against the SDK's event union and its SSE name."""
    with httpx.stream("POST", url + "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    events = []
    for name, data in zip(lines[::2], lines[1::2], strict=True):
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        if event["type"] != "error":
            EVENTS.validate_python(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def _deltas(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def _completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "gen",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }


# --- one request, unary -----------------------------------------------------------------------


def test_an_answer_is_reviewed_stored_and_shaped_as_a_response(
    engine: ScriptedEngine, proxy_url: str, tmp_path: Path
) -> None:
    raw = _client(proxy_url).responses.with_raw_response.create(model="gen", input=QUESTION)
    response = raw.parse()
    Response.model_validate(json.loads(raw.text))  # strictly: every required field, typed
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.output[0].id.startswith("msg_")
    assert response.output_text == engine.generation
    assert raw.headers["x-conscience-verdict"] == "ethical"
    assert raw.headers["x-conscience-action"] == "passed"
    conscience = response.model_extra["conscience"]
    assert conscience["verdict"] == "ethical" and conscience["action"] == "passed"
    (row,) = _stored(tmp_path)
    assert row["id"] == conscience["judgement_id"] and row["answer"] == engine.generation
    assert row["request_id"] == raw.headers["x-request-id"] and row["model"] == "gen"
    (generated,) = engine.of_kind("generate")
    assert generated["messages"] == [{"role": "user", "content": QUESTION}]
    assert "conscience" not in generated and "input" not in generated
    (review,) = engine.of_kind("review")
    assert QUESTION in review["messages"][1]["content"]
    assert engine.generation in review["messages"][1]["content"]
    assert response.usage is not None and response.usage.total_tokens == 15


@pytest.mark.parametrize(
    ("policy", "action", "text"),
    [
        ("rewrite", "rewritten", "Here is a safe and helpful answer."),
        ("block", "blocked", REFUSAL),
        ("flag", "flagged", "Paris is the capital of France."),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_each_policy_acts_on_an_unethical_answer(
    engine: ScriptedEngine,
    make_proxy: Any,
    tmp_path: Path,
    policy: str,
    action: str,
    text: str,
    stream: bool,
) -> None:
    engine.verdict = "unethical"
    client = _client(make_proxy(policy=policy))
    if stream:
        with client.responses.stream(model="gen", input=QUESTION) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model="gen", input=QUESTION)
    # A blocked answer is the refusal, whole: a completed response, not a truncated one.
    assert response.status == "completed" and response.incomplete_details is None
    # A block is a refusal part (responses.parse() passes it through), not output_text.
    parts = [p for item in response.output for p in item.content]
    refusals = "".join(p.refusal for p in parts if p.type == "refusal")
    assert (refusals if action == "blocked" else response.output_text) == text
    assert response.model_extra["conscience"]["action"] == action
    (row,) = _stored(tmp_path)
    assert row["action"] == action and row["verdict"] == "unethical"
    assert row["answer"] == engine.generation
    assert (row["rewrite"] is not None) == (policy == "rewrite")
    assert len(engine.of_kind("rewrite")) == (1 if policy == "rewrite" else 0)


@pytest.mark.parametrize("stream", [False, True])
def test_policy_off_reviews_and_stores_nothing(
    engine: ScriptedEngine, make_proxy: Any, tmp_path: Path, stream: bool
) -> None:
    engine.verdict = "unethical"
    url = make_proxy()
    body = {"model": "gen", "input": QUESTION, "conscience": {"policy": "off"}}
    response = _events(url, body)[-1]["response"] if stream else _post(url, body).json()
    assert response["output"][0]["content"][0]["text"] == engine.generation
    assert response["conscience"] == {
        "verdict": None,
        "framework": "three-laws",
        "action": "passed",
        "confidence": None,
        "judgement_id": None,
    }
    assert engine.of_kind("review") == [] and _stored(tmp_path) == []


def test_per_request_options_and_their_refusal(engine: ScriptedEngine, make_proxy: Any) -> None:
    engine.verdict = "unethical"
    client = _client(make_proxy())
    response = client.responses.create(
        model="gen",
        input=QUESTION,
        extra_body={"conscience": {"framework": "wwjd", "policy": "flag"}},
    )
    assert response.model_extra["conscience"]["framework"] == "wwjd"
    assert response.model_extra["conscience"]["action"] == "flagged"
    assert "New Testament virtues" in engine.of_kind("review")[0]["messages"][1]["content"]
    with pytest.raises(openai.BadRequestError, match="unknown framework"):
        client.responses.create(
            model="gen", input=QUESTION, extra_body={"conscience": {"framework": "kant"}}
        )
    with pytest.raises(openai.PermissionDeniedError):
        _client(make_proxy(allow_overrides=False)).responses.create(
            model="gen", input=QUESTION, extra_body={"conscience": {"policy": "off"}}
        )


# --- streams ----------------------------------------------------------------------------------


def test_a_buffered_stream_releases_only_reviewed_text(
    engine: ScriptedEngine, proxy_url: str
) -> None:
    engine.verdict = "unethical"
    with httpx.stream(
        "POST",
        proxy_url + "/v1/responses",
        json={"model": "gen", "input": QUESTION, "stream": True},
    ) as raw:
        body = raw.read().decode()
        assert raw.headers["x-conscience-action"] == "rewritten"  # reviewed before the headers
    assert engine.generation not in body
    events = _events(proxy_url, {"model": "gen", "input": QUESTION})
    assert [e["type"] for e in events] == _collapsed(TEXT_EVENTS, events)
    assert _deltas(events) == engine.rewrite
    done = events[-1]["response"]
    Response.model_validate(done)
    assert done["conscience"]["action"] == "rewritten"
    assert done["output"][0]["content"][0]["text"] == engine.rewrite
    assert "conscience" not in events[0]["response"]  # not known before the review is


def _collapsed(expected: list[str], events: list[dict[str, Any]]) -> list[str]:
    """The expected order with the delta event repeated as often as the stream has it."""
    deltas = sum(e["type"] == "response.output_text.delta" for e in events)
    at = expected.index("response.output_text.delta")
    return [*expected[:at], *[expected[at]] * deltas, *expected[at + 1 :]]


def test_the_sdk_reads_a_stream_and_its_final_response(
    engine: ScriptedEngine, proxy_url: str, tmp_path: Path
) -> None:
    client = _client(proxy_url)
    seen = [e.type for e in client.responses.create(model="gen", input=QUESTION, stream=True)]
    assert seen == _collapsed(TEXT_EVENTS, [{"type": t} for t in seen])
    with client.responses.stream(model="gen", input=QUESTION) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == engine.generation
    assert final.model_extra["conscience"]["judgement_id"] == _stored(tmp_path)[-1]["id"]


async def test_an_incremental_stream_reviews_windows_as_the_answer_grows(
    engine: ScriptedEngine, make_proxy: Any, tmp_path: Path
) -> None:
    engine.generation = "one two three four five six seven eight nine ten"
    url = make_proxy(stream_mode="incremental", stream_window_chars=10)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    async with client.responses.stream(model="gen", input=QUESTION) as stream:
        seen = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert seen == _collapsed(TEXT_EVENTS, [{"type": t} for t in seen])
    assert final.output_text == engine.generation
    reviewed = [r["messages"][1]["content"] for r in engine.of_kind("review")]
    assert len(reviewed) >= 3 and engine.generation in reviewed[-1]
    (row,) = _stored(tmp_path)  # one judgement per answer: the last review's
    assert final.model_extra["conscience"]["judgement_id"] == row["id"]


def test_an_incremental_stream_cut_by_a_late_verdict_is_incomplete(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.generation = "aaaa bbbb cccc dddd eeee ffff gggg hhhh"
    calls = {"n": 0}

    def judge(kind: str, body: dict[str, Any]) -> None:
        if kind == "review":
            calls["n"] += 1
            engine.verdict = "unethical" if calls["n"] >= 2 else "ethical"

    engine.handler = judge
    url = make_proxy(stream_mode="incremental", stream_window_chars=10, policy="rewrite")
    events = _events(url, {"model": "gen", "input": QUESTION})
    text = _deltas(events)
    # The first window passed and was released; the rest was held back and never sent.
    assert text and engine.generation.startswith(text) and text != engine.generation
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "content_filter"}
    assert last["response"]["conscience"]["action"] == "blocked"
    assert last["response"]["output"][0]["content"][0]["text"] == text
    Response.model_validate(last["response"])


def test_an_incremental_stream_blocked_before_release_serves_the_refusal(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.verdict = "unethical"
    url = make_proxy(stream_mode="incremental", stream_window_chars=1000, policy="block")
    events = _events(url, {"model": "gen", "input": QUESTION})
    assert _deltas(events) == REFUSAL and events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["conscience"]["action"] == "blocked"


# --- failures ---------------------------------------------------------------------------------


def _envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_failed_review_fails_closed(
    engine: ScriptedEngine, make_proxy: Any, tmp_path: Path
) -> None:
    engine.faults["review"] = Fault(status=500)
    url = make_proxy()
    with pytest.raises(openai.InternalServerError) as info:
        _client(url).responses.create(model="gen", input=QUESTION)
    assert info.value.status_code == 503 and info.value.body["code"] == "review_failed"
    # A buffered stream fails the same way, before any event is sent.
    response = _post(url, {"model": "gen", "input": QUESTION, "stream": True})
    assert _envelope(response, 503)["code"] == "review_failed"
    assert _stored(tmp_path) == []


def test_a_failed_review_in_an_incremental_stream_is_an_error_event(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.faults["review"] = Fault(status=500)
    url = make_proxy(stream_mode="incremental")
    events = _events(url, {"model": "gen", "input": QUESTION})
    assert _deltas(events) == "" and events[-1]["type"] == "error"
    assert events[-1]["code"] == "review_failed"
    with pytest.raises(openai.APIError, match="the conscience review failed"):
        list(_client(url).responses.create(model="gen", input=QUESTION, stream=True))


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_review_fails_open_where_configured(
    engine: ScriptedEngine, make_proxy: Any, tmp_path: Path, stream: bool
) -> None:
    engine.faults["review"] = Fault(status=500)
    url = make_proxy(on_review_error="open")
    body = {"model": "gen", "input": QUESTION, "stream": stream}
    raw = _post(url, body)
    assert raw.headers["x-conscience-verdict"] == "unreviewed"
    response = _events(url, body)[-1]["response"] if stream else raw.json()
    assert response["output"][0]["content"][0]["text"] == engine.generation
    assert response["conscience"]["action"] == "unreviewed"
    assert response["conscience"]["verdict"] is None
    assert _stored(tmp_path) == []


def test_a_failed_rewrite_blocks(engine: ScriptedEngine, proxy_url: str, tmp_path: Path) -> None:
    engine.verdict = "unethical"
    engine.faults["rewrite"] = Fault(status=500)
    response = _client(proxy_url).responses.create(model="gen", input=QUESTION)
    (part,) = response.output[0].content
    assert part.type == "refusal" and part.refusal == REFUSAL
    assert response.model_extra["conscience"]["action"] == "blocked"
    assert _stored(tmp_path)[0]["action"] == "blocked"


def test_upstream_errors_map_as_for_chat_completions(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    # Faults that come at once, through a proxy whose timeout a busy machine cannot reach; the
    # slow one through a proxy that gives up after 0.5 s.
    url, slow = make_proxy(upstream_timeout=30.0), make_proxy(upstream_timeout=0.5)
    engine.faults["generate"] = Fault(status=400, times=1)  # the upstream's own 4xx passes
    with pytest.raises(openai.BadRequestError, match="scripted fault 400"):
        _client(url).responses.create(model="gen", input=QUESTION)
    for fault, status, code, proxy in [
        (Fault(status=500, times=1), 502, "upstream_error", url),
        (Fault(status=401, times=1), 502, "upstream_auth_failed", url),
        (Fault(status=200, delay=1.5, times=1), 504, "upstream_timeout", slow),
        (Fault(status=200, body=b"\x00garbage", times=1), 502, None, url),
    ]:
        engine.faults["generate"] = fault
        response = _post(proxy, {"model": "gen", "input": QUESTION})
        error = _envelope(response, status)
        assert code is None or error["code"] == code
        assert "sk-upstream-secret" not in response.text


def test_client_keys_are_checked(make_proxy: Any) -> None:
    url = make_proxy(api_keys="key-one")
    with pytest.raises(openai.AuthenticationError):
        _client(url, "wrong").responses.create(model="gen", input=QUESTION)
    assert _client(url, "key-one").responses.create(model="gen", input=QUESTION).output_text


# --- input forms ------------------------------------------------------------------------------


def test_instructions_messages_parts_and_tool_turns_become_the_reviewed_conversation(
    engine: ScriptedEngine, proxy_url: str
) -> None:
    image = "data:image/png;base64,AAAA"
    items: list[dict[str, Any]] = [
        {"role": "developer", "content": "Answer briefly."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look at this"},
                {"type": "input_image", "image_url": image, "detail": "low"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
        {"role": "user", "content": QUESTION},
    ]
    response = _client(proxy_url).responses.create(
        model="gen", instructions="Be kind.", input=items, max_output_tokens=50, temperature=0.5
    )
    assert response.output_text == engine.generation
    (generated,) = engine.of_kind("generate")
    assert generated["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "developer", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look at this"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "shell", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        {"role": "user", "content": QUESTION},
    ]
    assert generated["max_tokens"] == 50 and generated["temperature"] == 0.5
    # The reviewer reads the whole conversation, turn by turn, instructions included.
    review = engine.of_kind("review")[0]["messages"][1]["content"]
    for said in ("Be kind.", "Answer briefly.", "Look at this", "a cat", QUESTION):
        assert said in review
    assert response.instructions == "Be kind." and response.max_output_tokens == 50


def test_function_tools_are_translated_and_calls_are_reviewed(
    engine: ScriptedEngine, proxy_url: str
) -> None:
    engine.tool_calls = [CALL]
    client = _client(proxy_url)
    response = client.responses.create(
        model="gen",
        input=QUESTION,
        tools=[SHELL_TOOL],
        tool_choice={"type": "function", "name": "shell"},
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    )
    (generated,) = engine.of_kind("generate")
    assert generated["tools"] == [
        {
            "type": "function",
            "function": {k: SHELL_TOOL[k] for k in ("name", "description", "parameters")},
        }
    ]
    assert generated["tool_choice"] == {"type": "function", "function": {"name": "shell"}}
    assert generated["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    }
    (call,) = response.output
    assert call.type == "function_call" and call.call_id == "call_1"
    assert call.name == "shell" and call.arguments == '{"cmd": "ls"}'
    assert "[tool call shell:" in engine.of_kind("review")[0]["messages"][1]["content"]
    events = _events(proxy_url, {"model": "gen", "input": QUESTION, "tools": [SHELL_TOOL]})
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    # An unethical call becomes the rewrite, as prose: no call is served.
    engine.verdict = "unethical"
    response = client.responses.create(model="gen", input=QUESTION, tools=[SHELL_TOOL])
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == engine.rewrite


def test_a_second_turn_sends_the_first_response_output_back_as_input(
    engine: ScriptedEngine, proxy_url: str
) -> None:
    """The SDK's way to continue without previous_response_id: output items back as input."""
    engine.tool_calls = [CALL]
    client = _client(proxy_url)
    ask = [{"role": "user", "content": QUESTION}]
    first = client.responses.create(model="gen", input=ask, tools=[SHELL_TOOL])
    engine.tool_calls = None
    result = {"type": "function_call_output", "call_id": "call_1", "output": "Paris"}
    second = client.responses.create(
        model="gen", input=[*ask, *first.output, result], tools=[SHELL_TOOL]
    )
    assert second.output_text == engine.generation
    assert engine.of_kind("generate")[1]["messages"] == [
        *ask,
        {"role": "assistant", "tool_calls": [CALL]},  # no content: None is not sent
        {"role": "tool", "tool_call_id": "call_1", "content": "Paris"},
    ]


def test_reasoning_usage_and_a_length_cut(engine: ScriptedEngine, proxy_url: str) -> None:
    message = {"role": "assistant", "content": "Paris", "reasoning_content": "I recall it."}

    def answer(kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return _completion(message, "length") if kind == "generate" else None

    engine.handler = answer
    response = _client(proxy_url).responses.create(model="gen", input=QUESTION)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "I recall it."
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.input_tokens == 7 and response.usage.output_tokens == 3
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert "I recall it." in engine.of_kind("review")[0]["messages"][1]["content"]
    events = _events(proxy_url, {"model": "gen", "input": QUESTION})
    kinds = [e["type"] for e in events]
    assert kinds[2:6] == [
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
    ]
    assert kinds[-1] == "response.incomplete" and events[-1]["response"]["conscience"]


# --- what cannot be reviewed, and malformed bodies ----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", "unsupported_tool"),
        ({"tools": [SHELL_TOOL, {"type": "file_search"}]}, "tools.1.type", "unsupported_tool"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "unsupported_tool"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
        ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"background": True}, "background", "unsupported_parameter"),
        (
            {"input": [{"type": "item_reference", "id": "msg_1"}]},
            "input.0.type",
            "unsupported_input_item",
        ),
        (
            {"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]},
            "input.0.type",
            "unsupported_input_item",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input.0.content.0",
            "unsupported_parameter",
        ),
    ],
)
def test_what_cannot_be_reviewed_is_refused_before_anything_is_generated(
    engine: ScriptedEngine,
    proxy_url: str,
    fields: dict[str, Any],
    param: str,
    code: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(proxy_url).responses.create(
            model="gen", input=QUESTION, extra_body=fields, stream=False
        )
    assert info.value.body["param"] == param and info.value.body["code"] == code
    assert info.value.body["type"] == "invalid_request_error"
    assert engine.requests == []


def test_malformed_bodies_are_400(proxy_url: str) -> None:
    url = proxy_url + "/v1/responses"
    assert _envelope(httpx.post(url, content=b"{not json"), 400)["code"] == "invalid_json"
    assert _envelope(httpx.post(url, json=[1]), 400)["code"] == "invalid_json"
    assert _envelope(httpx.post(url, json={"model": "gen"}), 400)["param"] == "input"
    for body, param in [
        ({"model": "gen", "input": QUESTION, "temperature": 5}, "temperature"),
        ({"model": "gen", "input": QUESTION, "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "gen", "input": [{"role": "wizard", "content": "x"}]}, None),
        ({"model": "gen", "input": [{"content": "x"}]}, "input.0.role"),
        ({"model": "gen", "input": []}, "input"),
        ({"model": "gen", "input": QUESTION, "text": {"format": {"type": "yaml"}}}, "text.format"),
    ]:
        error = _envelope(httpx.post(url, json=body), 400)
        assert param is None or error["param"] == param, (body, error)
