"""Hostile bodies for ``POST /v1/responses``: a 200 or the OpenAI error envelope with a 4xx,
never a 5xx or a traceback, streamed or not, buffered or incremental; nothing logged at ERROR.

The schema-driven fuzzing of the route is ``test_fuzz.test_schema_fuzz``: the route describes
its body in the OpenAPI document (``routes._RESPONSES_BODY``), which is checked here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from proxy_harness import (
    LogRecorder,
    Proxy,
    assert_envelope,
    auth,
    recording_logs,
    running_proxy,
)

from conscience.server.app import create_app
from conscience.settings import Settings

PATH = "/v1/responses"
DEEP = 10_000


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "gen", "input": "Hello?", **fields}).encode()


def _items(*items: Any) -> bytes:
    return json.dumps({"model": "gen", "input": list(items)}).encode()


def _parts(*parts: Any) -> bytes:
    return _items({"role": "user", "content": list(parts)})


CASES: list[tuple[str, bytes, int]] = [
    ("empty body", b"", 400),
    ("not JSON", b"{model: gen}", 400),
    ("top-level list", b"[1]", 400),
    (
        "deep nesting in input",
        b'{"model": "gen", "input": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        400,
    ),
    ("invalid UTF-8", _body().replace(b"Hello?", b"Hel\xff\xfelo"), 400),
    ("lone surrogate", _body().replace(b"Hello?", b"\\ud800"), 400),
    ("NUL character", _body().replace(b"Hello?", b"a\\u0000b"), 200),
    ("NaN temperature", _body()[:-1] + b', "temperature": NaN}', 400),
    ("no input", json.dumps({"model": "gen"}).encode(), 400),
    ("input a number", _body(input=5), 400),
    ("input an object", _body(input={"role": "user", "content": "x"}), 400),
    ("input null", _body(input=None), 400),
    ("empty input", _body(input=[]), 400),
    ("empty input with instructions", _body(input=[], instructions="Say hi."), 200),
    ("empty string input", _body(input=""), 200),
    ("5000 items", _items(*[{"role": "user", "content": "x"}] * 5000), 400),
    ("an item a string", _items("hello"), 400),
    ("an item null", _items(None), 400),
    ("no role", _items({"content": "x"}), 400),
    ("unknown role", _items({"role": "tool", "content": "x"}), 400),
    ("unknown item type", _items({"type": "hologram"}), 400),
    ("built-in call item", _items({"type": "computer_call", "id": "c"}), 400),
    ("function_call without call_id", _items({"type": "function_call", "name": "f"}), 400),
    ("function_call_output without call_id", _items({"type": "function_call_output"}), 400),
    (
        "function_call_output a number",
        _items({"type": "function_call_output", "call_id": "c", "output": 5}),
        400,
    ),
    ("part without type", _parts({"text": "x"}), 400),
    ("part text a number", _parts({"type": "input_text", "text": 5}), 400),
    ("part of unknown type", _parts({"type": "hologram"}), 400),
    ("image by file id", _parts({"type": "input_image", "file_id": "file_1"}), 400),
    ("image url a number", _parts({"type": "input_image", "image_url": 5}), 400),
    (
        "assistant with an image",
        _items({"role": "assistant", "content": [{"type": "input_image"}]}),
        400,
    ),
    ("parts: empty list", _parts(), 200),
    ("tools a string", _body(tools="x"), 400),
    ("a tool without type", _body(tools=[{"name": "f"}]), 400),
    ("a built-in tool", _body(tools=[{"type": "web_search"}]), 400),
    ("a function tool without name", _body(tools=[{"type": "function"}]), 400),
    ("tool_choice a number", _body(tool_choice=5), 400),
    ("tool_choice a hosted tool", _body(tool_choice={"type": "file_search"}), 400),
    ("text.format unknown", _body(text={"format": {"type": "yaml"}}), 400),
    ("text.format a string", _body(text={"format": "json"}), 400),
    ("text a string", _body(text="x"), 400),
    ("reasoning a string", _body(reasoning="high"), 400),
    ("previous_response_id", _body(previous_response_id="resp_1"), 400),
    ("conversation", _body(conversation={"id": "conv_1"}), 400),
    ("background", _body(background=True), 400),
    ("background false", _body(background=False), 200),
    ("negative max_output_tokens", _body(max_output_tokens=-1), 400),
    ("temperature a string", _body(temperature="hot"), 400),
    ("conscience unknown key", _body(conscience={"verdict": "ethical"}), 400),
    ("conscience.policy unknown", _body(conscience={"policy": "ignore"}), 400),
    ("n a string (a chat field, dropped)", _body(n="x"), 200),
    ("logprobs a string (passed, refused as chat)", _body(logprobs="x"), 400),
    (
        "every optional field null",
        _body(instructions=None, tools=None, text=None, stream=None),
        200,
    ),
    ("odd Responses-only fields", _body(store=5, include=[{}], metadata=[], truncation=1), 200),
]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, LogRecorder]]:
    with (
        running_proxy(tmp_path_factory.mktemp("responses-fuzz")) as proxy,
        recording_logs(logging.WARNING) as logs,
    ):
        yield proxy, logs


def _as_stream(raw: bytes) -> bytes:
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return raw
    if not isinstance(payload, dict) or "stream" in payload:
        return raw
    return json.dumps({**payload, "stream": True}).encode()


def _send(url: str, raw: bytes) -> httpx.Response:
    headers = {**auth(), "Content-Type": "application/json"}
    return httpx.post(url + PATH, content=raw, headers=headers, timeout=30)


def _check(response: httpx.Response, status: int, name: str) -> None:
    assert response.status_code == status, (name, response.text[:300])
    assert response.headers.get("x-request-id")
    if status >= 400:
        assert_envelope(response)
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert '"type": "error"' not in response.text, (name, response.text[-300:])


@pytest.mark.parametrize(("name", "raw", "status"), CASES, ids=[c[0] for c in CASES])
def test_hostile_body(
    name: str, raw: bytes, status: int, target: tuple[Proxy, LogRecorder]
) -> None:
    for body in (raw, _as_stream(raw)):  # a stream is refused the same way, before it starts
        _check(_send(target[0].url, body), status, name)


def test_incremental_streams_refuse_the_same_input(tmp_path: Path) -> None:
    with running_proxy(tmp_path, stream_mode="incremental") as proxy:
        for name, raw, status in CASES:
            _check(_send(proxy.url, _as_stream(raw)), status, name)


def test_the_route_is_in_the_schema_the_fuzzer_reads() -> None:
    document = create_app(Settings(upstream_url="http://unused/v1")).openapi()
    body = document["paths"][PATH]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["required"]) == {"model", "input"}
    assert "$ref" not in json.dumps(body)  # resolvable from the document's own root


def test_the_server_survived(target: tuple[Proxy, LogRecorder]) -> None:
    proxy, logs = target
    assert httpx.get(proxy.url + "/health", timeout=5).status_code == 200
    assert _send(proxy.url, _body()).status_code == 200
    assert logs.errors() == []
