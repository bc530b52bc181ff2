"""A Response as the Responses API streams it: ``event:``/``data:`` pairs with a
``sequence_number``, from ``response.created`` to ``response.completed`` (or
``response.incomplete``), whose response carries the ``conscience`` object.

- buffered: the answer was reviewed (and the policy applied) before the first event; the
  events replay the reviewed Response.
- incremental: the events follow ``server.chat.streaming.incremental_chunks`` (the chat stream that
  releases text only after the answer so far passed review), translated chunk by chunk, so
  both APIs release exactly the same text after exactly the same reviews.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from conscience.errors import ConscienceError
from conscience.server.chat.protocol import ChatCompletionRequest
from conscience.server.chat.streaming import incremental_chunks
from conscience.server.errors import ApiError, client_message
from conscience.server.errors import status_of as error_status
from conscience.server.pipeline import Options, Pipeline
from conscience.server.responses.request import ResponsesRequest
from conscience.server.responses.response import message_item, new_id, shell, status_of

__all__ = ["buffered_events", "incremental_events"]

log = logging.getLogger("conscience.server")

_PIECE_CHARS = 24  # how much text one synthesized delta carries, as in server.chat.streaming


def _pieces(text: str) -> list[str]:
    return [text[i : i + _PIECE_CHARS] for i in range(0, len(text), _PIECE_CHARS)]


class _Events:
    """Numbered events of one Response."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.sequence = 0

    def emit(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        line = json.dumps(data, ensure_ascii=False)
        return f"event: {kind}\ndata: {line}\n\n".encode()

    def start(self) -> Iterator[bytes]:
        snapshot = {k: v for k, v in self.response.items() if k != "conscience"}
        snapshot.update(status="in_progress", output=[], usage=None, incomplete_details=None)
        yield self.emit("response.created", response=snapshot)
        yield self.emit("response.in_progress", response=snapshot)

    def added(self, index: int, item: dict[str, Any]) -> bytes:
        return self.emit("response.output_item.added", output_index=index, item=item)

    def text_opened(self, index: int, item_id: str) -> bytes:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return self.emit(
            "response.content_part.added",
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=part,
        )

    def text_delta(self, index: int, item_id: str, piece: str) -> bytes:
        return self.emit(
            "response.output_text.delta",
            item_id=item_id,
            output_index=index,
            content_index=0,
            delta=piece,
            logprobs=[],
        )

    def message_done(self, index: int, item: dict[str, Any]) -> Iterator[bytes]:
        part = item["content"][0]
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if part["type"] == "refusal":
            yield self.emit("response.refusal.done", **ids, refusal=part["refusal"])
        else:
            yield self.emit("response.output_text.done", **ids, text=part["text"], logprobs=[])
        yield self.emit("response.content_part.done", **ids, part=part)
        yield self.emit("response.output_item.done", output_index=index, item=item)

    def item(self, index: int, item: dict[str, Any]) -> Iterator[bytes]:
        """Every event of one finished output item, as the API streams it."""
        ids = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            yield self.added(index, {**item, "status": "in_progress", "content": []})
            part = item["content"][0]
            if part["type"] == "refusal":
                at = {**ids, "content_index": 0}
                opened = {"type": "refusal", "refusal": ""}
                yield self.emit("response.content_part.added", **at, part=opened)
                yield self.emit("response.refusal.delta", **at, delta=part["refusal"])
            else:
                yield self.text_opened(index, item["id"])
                for piece in _pieces(part["text"]):
                    yield self.text_delta(index, item["id"], piece)
            yield from self.message_done(index, item)
            return
        if item["type"] == "custom_tool_call":
            yield self.added(index, {**item, "input": ""})
            yield self.emit("response.custom_tool_call_input.delta", **ids, delta=item["input"])
            yield self.emit("response.custom_tool_call_input.done", **ids, input=item["input"])
        if item["type"] == "function_call":
            yield self.added(index, {**item, "status": "in_progress", "arguments": ""})
            arguments = item["arguments"]
            yield self.emit("response.function_call_arguments.delta", **ids, delta=arguments)
            yield self.emit(
                "response.function_call_arguments.done",
                **ids,
                arguments=arguments,
                name=item["name"],
            )
        elif item["type"] == "reasoning":
            yield self.added(index, {**item, "status": "in_progress", "content": []})
            for content_index, part in enumerate(item["content"]):
                at = {**ids, "content_index": content_index}
                yield self.emit("response.reasoning_text.delta", **at, delta=part["text"])
                yield self.emit("response.reasoning_text.done", **at, text=part["text"])
        yield self.emit("response.output_item.done", output_index=index, item=item)

    def finish(self) -> bytes:
        done = self.response["status"] == "completed"
        kind = "response.completed" if done else "response.incomplete"
        return self.emit(kind, response=self.response)

    def error(self, message: str, code: str | None) -> bytes:
        # The flat fields are the API's error event; "error" makes OpenAI's SDK raise, as it
        # does on a chat stream's error chunk.
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        return self.emit("error", code=code, message=message, param=None, error=error)


async def buffered_events(response: dict[str, Any]) -> AsyncIterator[bytes]:
    """A reviewed Response replayed as its stream of events."""
    events = _Events(response)
    for frame in events.start():
        yield frame
    for index, item in enumerate(response["output"]):
        for frame in events.item(index, item):
            yield frame
    yield events.finish()


async def incremental_events(
    pipeline: Pipeline,
    chat: ChatCompletionRequest,
    options: Options,
    request_id: str,
    request: ResponsesRequest,
    scrub: Callable[[str], str],
) -> AsyncIterator[bytes]:
    """The incremental chat stream's released text as one streamed message item."""
    response = shell(request, int(time.time()), request.model)
    events = _Events(response)
    for frame in events.start():
        yield frame
    item_id = new_id("msg")
    yield events.added(0, {**message_item("", "in_progress", item_id), "content": []})
    yield events.text_opened(0, item_id)
    text, finish, conscience = "", None, None
    try:
        async for raw in incremental_chunks(pipeline, chat, options, request_id):
            if raw.startswith(b"data: [DONE]"):
                break
            chunk = json.loads(raw.removeprefix(b"data: "))
            conscience = chunk.get("conscience", conscience)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    text += piece
                    yield events.text_delta(0, item_id, piece)
                finish = choice.get("finish_reason") or finish
    except ApiError as exc:  # after the headers, a failure can only be told in the stream
        yield events.error(scrub(exc.message), exc.code)
        return
    except ConscienceError as exc:
        log.warning("stream failed: %s", scrub(str(exc)))
        yield events.error(scrub(client_message(exc)), error_status(exc)[1])
        return
    status, incomplete = status_of(finish, text)
    item = message_item(text, status, item_id)
    for frame in events.message_done(0, item):
        yield frame
    response.update(
        status=status, incomplete_details=incomplete, output=[item], conscience=conscience
    )
    yield events.finish()
