"""A reviewed chat completion as a Responses API ``Response`` object.

The ``conscience`` object rides at the top level of the Response (as on a chat completion);
the Response schema has no other place for a verdict, and OpenAI's SDK keeps unknown top-level
keys (``response.model_extra["conscience"]``). A blocked answer is a ``refusal`` content part
(what a chat completion's ``message.refusal`` says) in a completed response: a refusal is a
whole answer, and ``responses.parse()`` passes it through instead of parsing it. Only
an answer cut off after part of it went out (incremental streaming) or by the token limit is
``incomplete``, with ``content_filter`` or ``max_output_tokens`` as the reason.
"""

from __future__ import annotations

import uuid
from typing import Any

from conscience.server.pipeline import REFUSAL
from conscience.server.responses.request import ResponsesRequest

__all__ = [
    "message_item",
    "new_id",
    "output_items",
    "shell",
    "status_of",
    "to_response",
    "usage_of",
]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def shell(request: ResponsesRequest, created: float, model: str) -> dict[str, Any]:
    """The Response before its output: what ``response.created`` shows, and the request's
    settings echoed as the API does."""
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": request.reasoning,
        "temperature": request.temperature,
        "text": request.text or {"format": {"type": "text"}},
        "tool_choice": request.tool_choice or "auto",
        "tools": request.tools or [],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
        "metadata": {},
    }


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


# Where each field of an output item the proxy serves comes from: a field of the reviewed chat
# message (read by server.answer), or "form" (ids, status, the item's type). Every field of the
# SDK's own models is named here (tests/server/test_answer_shapes.py checks).
ITEM_SOURCES: dict[str, dict[str, str]] = {
    "message": {
        "id": "form", "content": "content, refusal", "role": "form", "status": "form",
        "type": "form", "phase": "form (not set)",
    },
    "function_call": {
        "arguments": "tool_calls.function.arguments, function_call.arguments",
        "call_id": "form", "name": "tool_calls.function.name, function_call.name",
        "type": "form", "id": "form", "async_": "form (not set)", "caller": "form (not set)",
        "namespace": "form (not set)", "status": "form",
    },
    "custom_tool_call": {
        "call_id": "form", "input": "tool_calls.custom.input", "name": "tool_calls.custom.name",
        "type": "form", "id": "form", "async_": "form (not set)", "caller": "form (not set)",
        "namespace": "form (not set)",
    },
    "reasoning": {
        "id": "form", "summary": "form (empty)", "type": "form",
        "content": "reasoning_content, reasoning", "encrypted_content": "form (not set)",
        "status": "form",
    },
}  # fmt: skip


def message_item(
    text: str, status: str = "completed", item_id: str | None = None, refusal: bool = False
) -> dict[str, Any]:
    """A message item of one part: the text, or (``refusal``) a refusal part, which the SDK's
    ``responses.parse()`` passes through unparsed."""
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    if refusal:
        part = {"type": "refusal", "refusal": text}
    return {
        "type": "message",
        "id": item_id or new_id("msg"),
        "role": "assistant",
        "status": status,
        "content": [part],
    }


def output_items(message: dict[str, Any], status: str = "completed") -> list[dict[str, Any]]:
    """A chat message as output items: its reasoning, its text, then its tool calls."""
    items: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        items.append(
            {
                "type": "reasoning",
                "id": new_id("rs"),
                "summary": [],
                "content": [{"type": "reasoning_text", "text": reasoning}],
                "status": "completed",
            }
        )
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    if isinstance(message.get("function_call"), dict):
        calls.append({"type": "function", "function": message["function_call"]})
    text, refusal = _text(message), message.get("refusal")
    if isinstance(refusal, str) and refusal:
        items.append(message_item(refusal, status, refusal=True))
        if text == refusal:  # a block says it as content too
            text = ""
    if text or not (calls or items):
        items.append(message_item(text, status))
    for call in calls:
        if call.get("type") == "custom":
            custom = call.get("custom") or {}
            items.append(
                {
                    "type": "custom_tool_call",
                    "id": new_id("ctc"),
                    "call_id": call.get("id") or new_id("call"),
                    "name": custom.get("name") or "",
                    "input": custom.get("input") or "",
                }
            )
            continue
        function = call.get("function") or {}
        items.append(
            {
                "type": "function_call",
                "id": new_id("fc"),
                "call_id": call.get("id") or new_id("call"),
                "name": function.get("name") or "",
                "arguments": function.get("arguments") or "",
                "status": "completed",
            }
        )
    return items


def status_of(finish: str | None, text: str) -> tuple[str, dict[str, str] | None]:
    """The Response's status and incomplete_details for a chat finish_reason."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter" and text != REFUSAL:  # cut off after text went out
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def usage_of(usage: Any) -> dict[str, Any] | None:
    """Chat-completions usage in the Responses API's names."""
    if not isinstance(usage, dict):
        return None

    def count(source: Any, key: str) -> int:
        value = source.get(key) if isinstance(source, dict) else None
        return value if isinstance(value, int) else 0

    prompt, completion = count(usage, "prompt_tokens"), count(usage, "completion_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": count(usage.get("prompt_tokens_details"), "cached_tokens"),
            "cache_write_tokens": 0,  # chat completions do not report it
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": count(usage.get("completion_tokens_details"), "reasoning_tokens")
        },
        "total_tokens": count(usage, "total_tokens") or prompt + completion,
    }


def to_response(completion: dict[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """The reviewed completion's first choice (a Responses request asks for one) as a
    Response, with the completion's ``conscience`` object."""
    created = completion.get("created")
    model = completion.get("model")
    response = shell(
        request,
        created if isinstance(created, int | float) else 0,
        model if isinstance(model, str) else request.model,
    )
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status, incomplete = status_of(choice.get("finish_reason"), _text(message))
    response.update(
        status=status,
        incomplete_details=incomplete,
        output=output_items(message, status),
        usage=usage_of(completion.get("usage")),
        conscience=completion.get("conscience"),
    )
    return response
