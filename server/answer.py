"""What the judge reads of an answer: the whole choice the client will receive.

One function, ``read_choice``, turns a chat-completion choice into the text the judge reads:
the message's text and refusal, every tool call (``function`` and ``custom``), the legacy
``function_call``, the audio's transcript, citations, and the reasoning (read with the answer,
apart from it). A stream's deltas are merged into the same message shape (``merge_delta``) and
read by the same function, so a streamed answer is read exactly as its non-streamed twin.

Reviewed by construction: every field a choice or message may hold is in one of the tables
below, either read (its text goes to the judge) or form (it says how the answer is shaped, not
what it says: a role, an id, an index). A field in no table, holding anything, makes the choice
``Unreadable``: the pipeline blocks it rather than serve what the judge never read. A field that
is present but empty (``None``, ``""``, ``[]``) carries nothing and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHOICE_FIELDS",
    "CHUNK_CHOICE_FIELDS",
    "MESSAGE_FIELDS",
    "Answer",
    "Unreadable",
    "merge_delta",
    "read_choice",
    "read_message",
]

READ, FORM = "read", "form"

CHOICE_FIELDS = {
    "index": FORM,
    "message": READ,
    "finish_reason": FORM,
    "logprobs": FORM,  # the served tokens' probabilities: the text itself is read
    "stop_reason": FORM,  # vLLM: the stop string or token that ended the answer (not served text)
}
CHUNK_CHOICE_FIELDS = {**{k: v for k, v in CHOICE_FIELDS.items() if k != "message"}, "delta": READ}
MESSAGE_FIELDS = {
    "role": FORM,
    "content": READ,
    "refusal": READ,
    "reasoning_content": READ,  # vLLM's and llama.cpp's name for the reasoning
    "reasoning": READ,  # vLLM's newer name
    "tool_calls": READ,
    "function_call": READ,  # legacy ``functions``
    "audio": READ,  # its transcript; the audio data is the transcript spoken
    "annotations": READ,  # url citations: their titles and addresses are shown to users
}
TOOL_CALL_FIELDS = {"index": FORM, "id": FORM, "type": FORM, "function": READ, "custom": READ}
CALL_FIELDS = {"function": {"name", "arguments"}, "custom": {"name", "input"}}
AUDIO_FIELDS = {"id": FORM, "expires_at": FORM, "data": READ, "transcript": READ}
_TEXT_PARTS = {"text", "output_text"}


class Unreadable(ValueError):
    """A choice holds something the judge cannot read: it must not be served."""

    def __init__(self, field: str, why: str = "which the review does not read") -> None:
        self.field = field
        super().__init__(f"the answer holds {field!r}, {why}, so it is not served")


@dataclass(frozen=True)
class Answer:
    text: str  # everything the client will read or run, as the judge reads it
    reasoning: str | None  # the model's reasoning, judged with the answer


def _present(value: Any) -> bool:
    return value not in (None, "", [], {})


def _check(obj: dict[str, Any], known: dict[str, str] | set[str], where: str) -> None:
    for name, value in obj.items():
        if name not in known and _present(value):
            raise Unreadable(f"{where}{name}")


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Unreadable(where, "which is not text")
    return value


def _content(content: Any) -> list[str]:
    if content is None or isinstance(content, str):
        return [_string(content, "content")]
    if not isinstance(content, list):
        raise Unreadable("content", "which is neither text nor a list of parts")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            texts.append(_string(part.get("text"), f"content.{i}.text"))
        elif kind == "refusal":
            texts.append(_string(part.get("refusal"), f"content.{i}.refusal"))
        else:
            raise Unreadable(f"content.{i}.type={kind!r}", "a part the review does not read")
    return texts


def _call(call: Any, where: str) -> str:
    """A tool call as the judge reads it: ``[tool call name: arguments]``."""
    if not isinstance(call, dict):
        raise Unreadable(where, "which is not a tool call")
    _check(call, TOOL_CALL_FIELDS, f"{where}.")
    kind = call.get("type") or ("custom" if "custom" in call else "function")
    if kind not in CALL_FIELDS:
        raise Unreadable(f"{where}.type={kind!r}", "a kind of call the review does not read")
    body = call.get(kind) or {}
    if not isinstance(body, dict):
        raise Unreadable(f"{where}.{kind}", "which is not an object")
    _check(body, CALL_FIELDS[kind], f"{where}.{kind}.")
    name = _string(body.get("name"), f"{where}.{kind}.name")
    payload = "input" if kind == "custom" else "arguments"
    return f"[tool call {name}: {_string(body.get(payload), f'{where}.{kind}.{payload}')}]"


def _audio(audio: Any) -> str:
    if not isinstance(audio, dict):
        raise Unreadable("audio", "which is not an object")
    _check(audio, AUDIO_FIELDS, "audio.")
    transcript = _string(audio.get("transcript"), "audio.transcript")
    if _present(audio.get("data")) and not transcript.strip():
        raise Unreadable("audio.data", "audio without a transcript to read")
    return f"[spoken] {transcript}" if transcript else ""


def _annotations(annotations: Any) -> list[str]:
    if not isinstance(annotations, list):
        raise Unreadable("annotations", "which is not a list")
    texts = []
    for i, note in enumerate(annotations):
        kind = note.get("type") if isinstance(note, dict) else None
        if kind != "url_citation" or not isinstance(note.get("url_citation"), dict):
            raise Unreadable(f"annotations.{i}.type={kind!r}", "an annotation it does not read")
        _check(note, {"type", "url_citation"}, f"annotations.{i}.")
        citation = note["url_citation"]
        _check(citation, {"start_index", "end_index", "title", "url"}, f"annotations.{i}.")
        title = _string(citation.get("title"), f"annotations.{i}.title")
        texts.append(f"[cited {title} {_string(citation.get('url'), f'annotations.{i}.url')}]")
    return texts


def read_message(message: dict[str, Any]) -> Answer:
    """Everything a message says, as the judge reads it (``Unreadable`` if it holds a field
    the review does not know)."""
    _check(message, MESSAGE_FIELDS, "message.")
    texts = _content(message.get("content"))
    refusal = _string(message.get("refusal"), "refusal")
    if refusal and refusal not in texts:  # a block serves the refusal as content and refusal
        texts.append(refusal)
    if _present(message.get("audio")):
        texts.append(_audio(message["audio"]))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise Unreadable("tool_calls", "which is not a list")
    texts += [_call(call, f"tool_calls.{i}") for i, call in enumerate(calls)]
    if _present(message.get("function_call")):
        legacy = {"type": "function", "function": message["function_call"]}
        texts.append(_call(legacy, "function_call"))
    if _present(message.get("annotations")):
        texts += _annotations(message["annotations"])
    reasoning = "\n\n".join(
        _string(message.get(name), name)
        for name in ("reasoning_content", "reasoning")
        if _present(message.get(name))
    )
    text = "\n".join(t for t in texts if t).strip()
    return Answer(text=text, reasoning=reasoning or None)


def read_choice(choice: dict[str, Any]) -> Answer:
    """What the judge reads of one choice: its message, every field of it."""
    _check(choice, CHOICE_FIELDS, "")
    message = choice.get("message") or {}
    if not isinstance(message, dict):
        raise Unreadable("message", "which is not an object")
    return read_message(message)


_CONCATENATED = {"content", "refusal", "reasoning_content", "reasoning"}


def merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    """Add a stream chunk's ``delta`` to the message it is building, as OpenAI's SDK does:
    text concatenates, tool calls merge by ``index``. A field this function does not know is
    kept as sent, for ``read_message`` to refuse."""
    for name, value in delta.items():
        if value is None:
            continue
        if name in _CONCATENATED and isinstance(value, str):
            message[name] = (message.get(name) or "") + value
        elif name == "tool_calls" and isinstance(value, list):
            calls: list[dict[str, Any]] = message.setdefault("tool_calls", [])
            for piece in value:
                _merge_call(calls, piece)
        elif name == "function_call" and isinstance(value, dict):
            _merge_text(message.setdefault("function_call", {}), value)
        elif name == "audio" and isinstance(value, dict):
            _merge_text(message.setdefault("audio", {}), value, concatenated={"data", "transcript"})
        else:
            message[name] = value


def _merge_text(
    into: dict[str, Any],
    piece: dict[str, Any],
    concatenated: set[str] = frozenset({"arguments", "input"}),  # type: ignore[assignment]
) -> None:
    for key, value in piece.items():
        if value is None:
            continue
        if key in concatenated and isinstance(value, str):
            into[key] = (into.get(key) or "") + value
        else:
            into[key] = value


def _merge_call(calls: list[dict[str, Any]], piece: Any) -> None:
    if not isinstance(piece, dict):
        calls.append({"unreadable": piece})  # read_message refuses it
        return
    index = piece.get("index")
    if not isinstance(index, int) or index < 0:
        index = len(calls)
    while len(calls) <= index:
        calls.append({})
    call = calls[index]
    for key, value in piece.items():
        if key == "index" or value is None:
            continue
        if key in CALL_FIELDS and isinstance(value, dict):
            _merge_text(call.setdefault(key, {}), value)
        else:
            call[key] = value
