"""A Responses API request and the chat-completions request it means: ``instructions`` and
``input`` become the messages (what the upstream generates from and the reviewer reads),
function tools become chat tools.

What the proxy cannot review is refused with a 400 rather than served unreviewed: built-in
tools that the upstream would run (web search, file search, ...), and state that only an
upstream holds (``previous_response_id``, ``conversation``, ``item_reference``, stored prompts,
``background``). docs/decisions.md, "The Responses API", has the reasons.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from conscience.server.chat.protocol import ChatCompletionRequest, ConscienceOptions
from conscience.server.errors import ApiError

__all__ = ["InputItem", "InputPart", "ResponsesRequest", "to_chat_request"]


class InputPart(BaseModel):
    """One part of an input message's content (input_text, input_image, output_text, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None  # typed because the reviewer reads it


class InputItem(BaseModel):
    """One input item: a message (``type`` "message" or absent), a function call or its output.
    Other item types are refused by name in ``_messages``."""

    model_config = ConfigDict(extra="allow")

    type: str | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[InputPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputPart] | None = None


class ResponsesRequest(BaseModel):
    """The Responses API request, as far as the proxy must understand it; the rest is in
    ``_DROPPED`` (meaningless to chat completions), ``_REFUSED`` (unreviewable) or passed to
    the upstream unchanged, as ``/v1/chat/completions`` does with unknown fields."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=512)
    input: str | Annotated[list[InputItem], Field(max_length=4096)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    stream: bool | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    text: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None
    conscience: ConscienceOptions | None = None


# Responses-only fields with no chat-completions meaning: accepted, not sent upstream. `store`
# asks the upstream to keep the Response: the proxy keeps judgements, never Response objects.
_DROPPED = {
    "include",
    "max_tool_calls",
    "metadata",
    "n",
    "prompt_cache_retention",
    "store",
    "stream_options",
    "top_logprobs",
    "truncation",
}
# Fields that need state only an upstream holds: the proxy could not review what they add.
_REFUSED = {
    "conversation": "the proxy keeps no conversations; send the whole conversation as input",
    "prompt": "the proxy cannot resolve stored prompt templates; send the text as input",
}
_STATEFUL = "the proxy keeps no earlier responses, so it could not review their history"
_BUILT_IN = (
    "runs inside the upstream, where the proxy cannot review what it fetches or does; "
    "only function tools are served"
)
_TEXT_PARTS = {"input_text", "output_text", "text"}


def _refuse(param: str, message: str, code: str = "unsupported_parameter") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def _text_of(parts: str | list[InputPart] | None, param: str) -> str:
    """The text of content (or a function call's output) that only text can carry."""
    if parts is None or isinstance(parts, str):
        return parts or ""
    texts = []
    for i, part in enumerate(parts):
        if part.type == "refusal":
            texts.append(str((part.model_extra or {}).get("refusal") or ""))
        elif part.type in _TEXT_PARTS:
            texts.append(part.text or "")
        else:
            raise _refuse(f"{param}.{i}.type", f"{part.type!r} cannot appear here")
    return "".join(texts)


def _chat_part(part: InputPart, param: str) -> dict[str, Any]:
    """A user/system message's part as chat completions spells it."""
    extra = part.model_extra or {}
    if part.type in _TEXT_PARTS:
        return {"type": "text", "text": part.text or ""}
    if part.type == "input_image" and isinstance(extra.get("image_url"), str):
        image = {"url": extra["image_url"]}
        if isinstance(extra.get("detail"), str):
            image["detail"] = extra["detail"]
        return {"type": "image_url", "image_url": image}
    if part.type == "input_file" and isinstance(extra.get("file_data"), str):
        file = {k: extra[k] for k in ("file_data", "filename") if isinstance(extra.get(k), str)}
        return {"type": "file", "file": file}
    if part.type == "input_audio" and isinstance(extra.get("input_audio"), dict):
        return {"type": "input_audio", "input_audio": extra["input_audio"]}
    # A file_id or image file_id names a file stored upstream: the proxy cannot see it.
    raise _refuse(param, f"content part {part.type!r} is not supported (send the data inline)")


def _message(item: InputItem, param: str) -> dict[str, Any]:
    if item.role is None:
        raise _refuse(f"{param}.role", "a message needs a role", "invalid_value")
    if item.role == "assistant":
        return {"role": "assistant", "content": _text_of(item.content, f"{param}.content")}
    content: str | list[dict[str, Any]] = ""
    if isinstance(item.content, str):
        content = item.content
    elif item.content is not None:
        content = [_chat_part(part, f"{param}.content.{i}") for i, part in enumerate(item.content)]
    return {"role": item.role, "content": content}


def _messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The conversation the answer replies to: what the upstream generates from and the
    reviewer reads."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        return [*messages, {"role": "user", "content": request.input}]
    for i, item in enumerate(request.input):
        param = f"input.{i}"
        kind = item.type or "message"
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            if not item.call_id or not item.name:
                raise _refuse(param, "a function_call needs call_id and name", "invalid_value")
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments or ""},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # one turn, several calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not item.call_id:
                raise _refuse(param, "a function_call_output needs call_id", "invalid_value")
            output = _text_of(item.output, f"{param}.output")
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        elif kind == "reasoning":
            continue  # an earlier turn's reasoning: neither sent upstream nor reviewed
        elif kind == "item_reference":
            raise _refuse(f"{param}.type", _STATEFUL, "unsupported_input_item")
        else:
            message = f"input item {kind!r} is not supported: {_BUILT_IN}"
            raise _refuse(f"{param}.type", message, "unsupported_input_item")
    if not messages:
        raise _refuse("input", "nothing to answer (no input and no instructions)", "invalid_value")
    return messages


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            message = f"the built-in tool {tool.get('type')!r} {_BUILT_IN}"
            raise _refuse(f"tools.{i}.type", message, "unsupported_tool")
        if not isinstance(tool.get("name"), str):
            raise _refuse(f"tools.{i}.name", "a function tool needs a name", "invalid_value")
        keys = ("name", "description", "parameters", "strict")
        function = {k: tool[k] for k in keys if k in tool}
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    message = f"{choice.get('type')!r} is not supported (only function tools are served)"
    raise _refuse("tool_choice", message, "unsupported_tool")


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    form = text.get("format")
    if form is None or (isinstance(form, dict) and form.get("type") == "text"):
        return None
    if isinstance(form, dict) and form.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(form, dict) and form.get("type") == "json_schema":
        keys = ("name", "schema", "description", "strict")
        return {"type": "json_schema", "json_schema": {k: form[k] for k in keys if k in form}}
    raise _refuse("text.format", "must be text, json_object or json_schema", "invalid_value")


def to_chat_request(request: ResponsesRequest) -> ChatCompletionRequest:
    """The chat-completions request a Responses request means; 400 where there is none."""
    extra = dict(request.model_extra or {})
    if request.previous_response_id is not None:
        raise _refuse("previous_response_id", _STATEFUL)
    for name, reason in _REFUSED.items():
        if extra.get(name) is not None:
            raise _refuse(name, reason)
    if extra.get("background"):
        raise _refuse("background", "the proxy keeps no responses to poll")
    body: dict[str, Any] = {k: v for k, v in extra.items() if k not in _DROPPED}
    body.pop("background", None)
    body.update(model=request.model, messages=_messages(request))
    optional = {
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
        "tools": _tools(request.tools) if request.tools else None,
        "tool_choice": _tool_choice(request.tool_choice) if request.tool_choice else None,
        "parallel_tool_calls": request.parallel_tool_calls if request.tools else None,
        "response_format": _response_format(request.text) if request.text else None,
        "reasoning_effort": (request.reasoning or {}).get("effort"),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if request.conscience is not None:
        body["conscience"] = request.conscience
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # a passed-through field the chat request cannot take
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_value") from exc
