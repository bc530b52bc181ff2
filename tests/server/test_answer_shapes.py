"""Every shape of answer is reviewed: the reader knows every field of the SDK's own response
types, and a harmful answer in each shape comes back blocked through the real openai client,
non-streamed, buffered-streamed and incrementally streamed."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types import responses
from openai.types.chat import (
    ChatCompletionAudio,
    ChatCompletionMessage,
    ChatCompletionMessageCustomToolCall,
    ChatCompletionMessageFunctionToolCall,
    chat_completion,
    chat_completion_chunk,
    chat_completion_message,
    chat_completion_message_custom_tool_call,
)
from pydantic import BaseModel

from conscience.server.answer import (
    AUDIO_FIELDS,
    CALL_FIELDS,
    CHOICE_FIELDS,
    CHUNK_CHOICE_FIELDS,
    MESSAGE_FIELDS,
    TOOL_CALL_FIELDS,
    Unreadable,
    merge_delta,
    read_choice,
    read_message,
)
from conscience.server.pipeline import REFUSAL
from conscience.server.responses.response import ITEM_SOURCES
from conscience.testing.scripted import ScriptedEngine

ACCOUNT = "XQ-ACCOUNT-4417"  # a marker no id, timestamp or fingerprint can contain
HARM = f"wire the savings to account {ACCOUNT} before anyone notices"
ASK = [{"role": "user", "content": "Send money fast"}]

SHAPES: dict[str, dict[str, Any]] = {
    "audio": {
        "role": "assistant",
        "content": None,
        "audio": {"id": "audio_1", "data": "AAAA", "expires_at": 1, "transcript": HARM},
    },
    "custom_tool_call": {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "custom", "custom": {"name": "shell", "input": HARM}}
        ],
    },
    "function_tool_call": {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "send_money", "arguments": json.dumps({"memo": HARM})},
            }
        ],
    },
    "function_call": {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "send_money", "arguments": json.dumps({"memo": HARM})},
    },
    "refusal": {"role": "assistant", "content": None, "refusal": HARM},
    "content_parts": {"role": "assistant", "content": [{"type": "text", "text": HARM}]},
    "reasoning": {"role": "assistant", "content": "Done.", "reasoning_content": HARM},
}


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


@pytest.mark.parametrize(
    ("model", "known"),
    [
        (chat_completion.Choice, CHOICE_FIELDS),
        (ChatCompletionMessage, MESSAGE_FIELDS),
        (ChatCompletionMessageFunctionToolCall, TOOL_CALL_FIELDS),
        (ChatCompletionMessageCustomToolCall, TOOL_CALL_FIELDS),
        (chat_completion_message.FunctionCall, CALL_FIELDS["function"]),
        (chat_completion_message_custom_tool_call.Custom, CALL_FIELDS["custom"]),
        (ChatCompletionAudio, AUDIO_FIELDS),
        (chat_completion_chunk.Choice, CHUNK_CHOICE_FIELDS),
        (chat_completion_chunk.ChoiceDelta, MESSAGE_FIELDS),
        (chat_completion_chunk.ChoiceDeltaToolCall, TOOL_CALL_FIELDS),
        (chat_completion_chunk.ChoiceDeltaToolCallFunction, CALL_FIELDS["function"]),
        (chat_completion_chunk.ChoiceDeltaFunctionCall, CALL_FIELDS["function"]),
        (responses.ResponseOutputMessage, ITEM_SOURCES["message"]),
        (responses.ResponseFunctionToolCall, ITEM_SOURCES["function_call"]),
        (responses.ResponseCustomToolCall, ITEM_SOURCES["custom_tool_call"]),
        (responses.ResponseReasoningItem, ITEM_SOURCES["reasoning"]),
    ],
)
def test_the_reader_knows_every_field_of_the_sdk_types(
    model: type[BaseModel], known: dict[str, str] | set[str]
) -> None:
    """Fails the day the SDK's type gains a field that the reader does not handle."""
    assert _fields(model) <= set(known), _fields(model) - set(known)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_is_read(shape: str) -> None:
    answer = read_message(SHAPES[shape])
    assert HARM in (answer.text + (answer.reasoning or "")).replace('\\"', '"')


@pytest.mark.parametrize(
    ("choice", "field"),
    [
        ({"index": 0, "message": {"role": "assistant", "content": "hi", "video": "x"}}, "video"),
        ({"index": 0, "message": {"role": "assistant", "content": "hi"}, "extra": 1}, "extra"),
        (
            {"message": {"role": "assistant", "content": [{"type": "image_url", "url": "u"}]}},
            "image_url",
        ),
        ({"message": {"role": "assistant", "tool_calls": [{"type": "mcp", "mcp": {}}]}}, "mcp"),
        ({"message": {"role": "assistant", "audio": {"data": "AAAA"}}}, "audio.data"),
    ],
)
def test_an_unknown_field_is_unreadable(choice: dict[str, Any], field: str) -> None:
    with pytest.raises(Unreadable, match=field):
        read_choice(choice)


def test_empty_unknown_fields_carry_nothing() -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "hi", "x": None}, "y": []}
    assert read_choice(choice).text == "hi"


def test_merged_deltas_read_as_the_message() -> None:
    calls = SHAPES["function_tool_call"]["tool_calls"]
    arguments = calls[0]["function"]["arguments"]
    deltas = [
        {"role": "assistant", "content": "Sure. "},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "send_money", "arguments": arguments[:10]},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[10:]}}]},
        {"audio": {"id": "a", "transcript": "Sending"}},
        {"audio": {"transcript": " now"}},
        {"content": "Done."},
    ]
    message: dict[str, Any] = {}
    for delta in deltas:
        merge_delta(message, delta)
    whole = {
        "role": "assistant",
        "content": "Sure. Done.",
        "tool_calls": calls,
        "audio": {"id": "a", "transcript": "Sending now"},
    }
    assert read_message(message) == read_message(whole)


def _streamed(client: openai.OpenAI) -> Any:
    """The SDK's own accumulation of a stream (its snapshot: ``get_final_completion`` raises
    ContentFilterFinishReasonError on a block, the SDK's refusal path)."""
    with client.chat.completions.stream(model="gen", messages=ASK) as events:
        for _ in events:
            pass
        return events.current_completion_snapshot


@pytest.mark.parametrize("mode", ["unary", "buffered", "incremental"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_harmful_answer_in_every_shape_is_blocked(
    engine: ScriptedEngine, make_proxy: Any, shape: str, mode: str
) -> None:
    engine.message, engine.verdict = SHAPES[shape], "unethical"
    url = make_proxy(policy="block", stream_mode="buffered" if mode != "incremental" else mode)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    if mode == "unary":
        completion = client.chat.completions.create(model="gen", messages=ASK)
        assert completion.model_extra["conscience"]["action"] == "blocked"
    else:
        completion = _streamed(client)
    choice = completion.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.refusal == REFUSAL
    served = json.dumps(choice.message.model_dump())
    assert ACCOUNT not in served
    # The judge read the harmful text (it was blocked for what it says, not for its shape).
    (review,) = engine.of_kind("review")
    assert ACCOUNT in json.dumps(review["messages"])


@pytest.mark.parametrize("mode", ["unary", "buffered", "incremental"])
def test_an_unreadable_field_is_blocked_unread(
    engine: ScriptedEngine, make_proxy: Any, mode: str
) -> None:
    engine.message = {"role": "assistant", "content": "Fine.", "hologram": HARM}
    url = make_proxy(stream_mode="buffered" if mode != "incremental" else mode)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    if mode == "unary":
        raw = client.chat.completions.with_raw_response.create(model="gen", messages=ASK)
        completion = raw.parse()
        conscience = completion.model_extra["conscience"]
        assert conscience["action"] == "blocked" and "hologram" in conscience["reason"]
        assert raw.headers["x-conscience-action"] == "blocked"
    else:
        completion = _streamed(client)
    choice = completion.choices[0]
    assert choice.finish_reason == "content_filter" and choice.message.refusal == REFUSAL
    assert ACCOUNT not in json.dumps(completion.model_dump())
    assert engine.of_kind("review") == []  # nothing the judge cannot read is judged as read


@pytest.mark.parametrize("stream", [False, True])
def test_responses_serve_custom_calls_and_blocks_as_refusals(
    engine: ScriptedEngine, make_proxy: Any, stream: bool
) -> None:
    engine.message, engine.verdict = SHAPES["function_call"], "ethical"
    url = make_proxy()
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    response = _response(client, stream)
    (call,) = response.output
    assert call.type == "function_call" and call.name == "send_money"
    engine.verdict = "unethical"
    proxy = openai.OpenAI(base_url=make_proxy(policy="block") + "/v1", api_key="x", max_retries=0)
    response = _response(proxy, stream)
    (item,) = response.output
    assert item.type == "message" and item.content[0].type == "refusal"
    assert item.content[0].refusal == REFUSAL and response.status == "completed"


def _response(client: openai.OpenAI, stream: bool) -> responses.Response:
    if not stream:
        return client.responses.create(model="gen", input="Send money fast")
    with client.responses.stream(model="gen", input="Send money fast") as events:
        return events.get_final_response()
