"""Hostile HTTP input: the API fuzzed from its own OpenAPI schema, then hand-written cases.

Every answer is a 200 (valid input) or the OpenAI error envelope with a 4xx: never a 5xx, a
hang or a traceback; nothing is logged at ERROR, and the server is up afterwards. The run is
bounded (``FUZZ_EXAMPLES`` per operation, a deadline per example) to fit CI.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from proxy_harness import (
    ADMIN_KEY,
    LogRecorder,
    Proxy,
    assert_envelope,
    auth,
    recording_logs,
    running_proxy,
)

from conscience.server.app import create_app
from conscience.settings import Settings

# Examples per operation; CONSCIENCE_FUZZ_EXAMPLES raises it for a longer local run.
FUZZ_EXAMPLES = int(os.environ.get("CONSCIENCE_FUZZ_EXAMPLES", "100"))
CHAT = "/v1/chat/completions"
ASK = [{"role": "user", "content": "Hello?"}]

# The schema is the app's own; building the app does no I/O (the lifespan is not run here).
schema = schemathesis.openapi.from_dict(
    create_app(Settings(upstream_url="http://unused/v1")).openapi()
)
examples_run: Counter[str] = Counter()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, LogRecorder]]:
    """One proxy for the whole module: fuzzing sends thousands of requests."""
    with (
        running_proxy(tmp_path_factory.mktemp("fuzz")) as proxy,
        recording_logs(logging.WARNING) as logs,
    ):
        yield proxy, logs


def _check(response: Any) -> None:
    """A 2xx, or the envelope with a 4xx; never a 5xx; always the request id."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert response.headers.get("x-request-id"), response.headers
    if response.status_code >= 400:
        assert_envelope(response)


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=timedelta(seconds=5),  # a hang fails the example instead of the whole suite
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=list(HealthCheck),
)
def test_schema_fuzz(case: schemathesis.Case, target: tuple[Proxy, LogRecorder]) -> None:
    # With the admin key every generated request reaches validation and the handlers.
    response = case.call(base_url=target[0].url, headers=auth(ADMIN_KEY), timeout=10)
    examples_run[case.operation.label] += 1  # by operation (also counts wrong-method probes)
    _check(response)


# --- hand-written cases: (name, raw body, expected status) -------------------------------------


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "gen", "messages": ASK, **fields}).encode()


def _with_message(message: Any) -> bytes:
    return json.dumps({"model": "gen", "messages": [message]}).encode()


def _parts(*parts: Any) -> bytes:
    return _with_message({"role": "user", "content": list(parts)})


DEEP = 10_000
RAW_CASES: list[tuple[str, bytes, int]] = [
    # not JSON, or JSON that nothing downstream could encode again
    ("empty body", b"", 400),
    ("not JSON", b"{model: gen}", 400),
    ("trailing garbage", _body() + b" x", 400),
    ("top-level list", b"[1, 2]", 400),
    ("top-level string", b'"hello"', 400),
    ("top-level null", b"null", 400),
    ("deep nesting, top level", b"[" * DEEP + b"]" * DEEP, 400),
    ("deep nesting, object", b'{"a":' * DEEP + b"1" + b"}" * DEEP, 400),
    (
        "deep nesting in an unknown field",
        _body()[:-1] + b', "x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        400,
    ),
    (
        "deep nesting in content",
        b'{"model": "gen", "messages": [{"role": "user", "content": '
        + b"[" * DEEP
        + b"]" * DEEP
        + b"}]}",
        400,
    ),
    ("invalid UTF-8 in a string", _body().replace(b"Hello?", b"Hel\xff\xfelo"), 400),
    ("overlong UTF-8", _body().replace(b"Hello?", b"\xc0\xaf"), 400),
    ("UTF-16 body", _body().decode().encode("utf-16"), 400),
    ("lone high surrogate", _body().replace(b"Hello?", b"\\ud800"), 400),
    ("lone low surrogate", _body().replace(b"Hello?", b"\\udc00x"), 400),
    ("surrogate pair (an emoji)", _body().replace(b"Hello?", b"\\ud83d\\ude00"), 200),
    ("NUL character", _body().replace(b"Hello?", b"a\\u0000b"), 200),
    ("NaN", _body()[:-1] + b', "seed": NaN}', 400),
    ("Infinity temperature", _body()[:-1] + b', "temperature": Infinity}', 400),
    ("5000-digit integer", _body()[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}", 400),
    # wrong types
    ("model a number", json.dumps({"model": 5, "messages": ASK}).encode(), 400),
    ("messages a string", json.dumps({"model": "gen", "messages": "hi"}).encode(), 400),
    ("messages an object", json.dumps({"model": "gen", "messages": ASK[0]}).encode(), 400),
    ("temperature a string", _body(temperature="hot"), 400),
    ("n a float", _body(n=2.5), 400),
    ("n too large", _body(n=10_000), 400),
    ("stream a list", _body(stream=[True]), 400),
    ("stream_options a string", _body(stream=True, stream_options="x"), 400),
    ("message a string", _with_message("hello"), 400),
    ("name a number", _with_message({"role": "user", "content": "x", "name": 5}), 400),
    ("tool_calls a number", _with_message({"role": "assistant", "tool_calls": 5}), 400),
    ("tool_calls an object", _with_message({"role": "assistant", "tool_calls": {"a": 1}}), 400),
    (
        "tool call function a string",
        _with_message({"role": "assistant", "tool_calls": [{"function": "rm -rf"}]}),
        400,
    ),
    (
        "tool call arguments an object",
        _with_message({"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}),
        400,
    ),
    # empty, negative, too many
    ("no fields", b"{}", 400),
    ("empty messages", _body(messages=[]), 400),
    ("empty model", _body(model=""), 400),
    ("empty content", _with_message({"role": "user", "content": ""}), 200),
    ("negative max_tokens", _body(max_tokens=-1), 400),
    ("zero max_tokens", _body(max_tokens=0), 400),
    ("negative max_completion_tokens", _body(max_completion_tokens=-5), 400),
    ("negative n", _body(n=-1), 400),
    ("negative top_logprobs", _body(top_logprobs=-1), 400),
    ("huge max_tokens", _body(max_tokens=10**30), 200),
    ("4000 messages", _body(messages=ASK * 4000), 200),
    ("5000 messages", _body(messages=ASK * 5000), 400),
    ("3.5 MB of content", _body(messages=[{"role": "user", "content": "a" * 3_500_000}]), 200),
    ("4.5 MB of content", _body(messages=[{"role": "user", "content": "a" * 4_500_000}]), 413),
    # roles
    ("unknown role", _with_message({"role": "wizard", "content": "x"}), 400),
    ("role a number", _with_message({"role": 1, "content": "x"}), 400),
    ("no role", _with_message({"content": "x"}), 400),
    # null everywhere
    ("model and messages null", json.dumps({"model": None, "messages": None}).encode(), 400),
    ("a null message", _with_message(None), 400),
    ("null role", _with_message({"role": None, "content": "x"}), 400),
    ("null content", _with_message({"role": "user", "content": None}), 200),
    (
        "every optional field null",
        _body(n=None, stream=None, temperature=None, max_tokens=None, conscience=None, tools=None),
        200,
    ),
    # content as a list of odd parts
    (
        "parts: text a number",
        _with_message({"role": "user", "content": [{"type": "text", "text": 5}]}),
        400,
    ),
    (
        "parts: text a list",
        _with_message({"role": "user", "content": [{"type": "text", "text": ["a"]}]}),
        400,
    ),
    ("parts: no type", _with_message({"role": "user", "content": [{"text": "x"}]}), 400),
    ("parts: bare strings", _with_message({"role": "user", "content": ["a", "b"]}), 400),
    ("parts: nulls", _with_message({"role": "user", "content": [None]}), 400),
    ("parts: empty list", _with_message({"role": "user", "content": []}), 200),
    (
        "parts: image and unknown types",
        _parts(
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "hologram", "depth": [1, {"x": None}]},
            {"type": "text", "text": None},
        ),
        200,
    ),
    # the conscience key with wrong types
    ("conscience a string", _body(conscience="rewrite"), 400),
    ("conscience a number", _body(conscience=5), 400),
    ("conscience a list", _body(conscience=["wwjd"]), 400),
    ("conscience.framework a number", _body(conscience={"framework": 5}), 400),
    ("conscience.framework unknown", _body(conscience={"framework": "../../etc/passwd"}), 400),
    ("conscience.policy unknown", _body(conscience={"policy": "ignore"}), 400),
    ("conscience.policy null", _body(conscience={"policy": None}), 200),
    ("conscience unknown key", _body(conscience={"verdict": "ethical"}), 400),
    # unknown OpenAI fields of any shape pass upstream
    ("odd unknown fields", _body(tools="x", seed="x", user={"a": []}), 200),
    # response_format is read by the proxy (a rewrite keeps the asked format): it must be an object
    ("response_format not an object", _body(response_format=5), 400),
]


@pytest.mark.parametrize(("name", "raw", "status"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_hostile_body(
    name: str, raw: bytes, status: int, target: tuple[Proxy, LogRecorder]
) -> None:
    # A valid body is also sent as a stream; an invalid one must be refused before streaming.
    bodies = [raw, raw[:-1] + b', "stream": true}'] if status == 200 else [raw]
    for body in bodies:
        response = httpx.post(
            target[0].url + CHAT,
            content=body,
            headers={**auth(), "Content-Type": "application/json"},
            timeout=30,
        )
        _check(response)
        assert response.status_code == status, (name, response.text[:300])


def test_chunked_body_over_the_limit_is_refused_as_it_arrives(
    target: tuple[Proxy, LogRecorder],
) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"model": "gen", "messages": [{"role": "user", "content": "'
        for _ in range(200):  # 20 MB, five times the limit
            sent += 100_000
            yield b"x" * 100_000
        yield b'"}]}'

    # A client key: the chat route checks it first; admin routes read their body before auth.
    for path in (CHAT, "/admin/adapter", "/admin/purge"):
        sent = 0
        try:
            response = httpx.post(
                target[0].url + path, content=chunks(), headers=auth(), timeout=30
            )
        except httpx.TransportError:
            continue  # the server answered 413 and closed while we were still sending
        assert_envelope(response, range(413, 414))


def test_admin_query_and_body_edges(target: tuple[Proxy, LogRecorder]) -> None:
    url, admin = target[0].url, auth(ADMIN_KEY)
    for params in (
        {"offset": str(2**63)},
        {"offset": str(2**70)},
        {"offset": "-1"},
        {"limit": "0"},
        {"limit": "1e3"},
        {"since": "yesterday"},
        {"until": "9999-99-99"},
        {"verdict": "evil"},
    ):
        assert_envelope(httpx.get(url + "/admin/judgements", params=params, headers=admin))
    far = {"since": "0001-01-01T00:00:00-14:00", "until": "9999-12-31T23:59:59+14:00"}
    assert httpx.get(url + "/admin/judgements", params=far, headers=admin).status_code == 200
    for raw in (b"", b"[]", b'{"older_than_days": "x"}', b'{"older_than_days": 0}', b"\xff"):
        response = httpx.post(url + "/admin/purge", content=raw, headers=admin)
        assert_envelope(response)
    huge = httpx.post(url + "/admin/purge", json={"older_than_days": 10**30}, headers=admin)
    assert huge.status_code == 200 and huge.json()["deleted"] == 0
    for judgement_id in ("%00", "%ed%a0%80", "%ff", "x" * 4000, "..%2F..%2Fetc"):
        response = httpx.get(url + "/admin/judgements/" + judgement_id, headers=admin)
        assert_envelope(response, range(404, 405))


END = b"\r\n\r\n"


def test_hostile_headers(target: tuple[Proxy, LogRecorder]) -> None:
    host, port = target[0].url.removeprefix("http://").split(":")
    requests = [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + b"k" * 60_000
        + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: \xff<script>\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    ]
    for raw in requests:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(raw)
            status_line = sock.recv(65536).split(b"\r\n", 1)[0]
        status = int(status_line.split()[1])
        assert 200 <= status < 500, (raw[:80], status_line)


def test_a_client_that_promises_more_body_and_leaves_is_no_server_error(
    target: tuple[Proxy, LogRecorder],
) -> None:
    host, port = target[0].url.removeprefix("http://").split(":")
    head = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth()['Authorization']}\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b'Content-Length: 1000\r\n\r\n{"model"')
    assert httpx.get(target[0].url + "/health", timeout=5).status_code == 200


def _as_stream(raw: bytes) -> bytes:
    """The same body asking for a stream, where it is a JSON object that does not say already."""
    try:
        payload = json.loads(raw.decode("utf-8"))  # strictly: json.loads would take UTF-16
    except (ValueError, RecursionError):
        return raw
    if not isinstance(payload, dict) or "stream" in payload:
        return raw
    return json.dumps({**payload, "stream": True}).encode()


def test_incremental_streams_refuse_the_same_input(tmp_path: Any) -> None:
    with running_proxy(tmp_path, stream_mode="incremental") as proxy:
        for name, raw, status in RAW_CASES:
            if status == 200 or len(raw) > 100_000:
                continue
            response = httpx.post(
                proxy.url + CHAT, content=_as_stream(raw), headers=auth(), timeout=30
            )
            assert response.status_code == status, (name, response.text[:300])
            assert_envelope(response)


def test_the_server_survived(target: tuple[Proxy, LogRecorder]) -> None:
    """Last in the module: the proxy still answers and never logged an ERROR."""
    proxy, logs = target
    assert httpx.get(proxy.url + "/health", timeout=5).status_code == 200
    chat = httpx.post(proxy.url + CHAT, json={"model": "gen", "messages": ASK}, headers=auth())
    assert chat.status_code == 200
    assert logs.errors() == []
    total = sum(examples_run.values())
    print(
        f"\nfuzz: {total} schema examples over {len(examples_run)} operations, "
        f"{len(RAW_CASES)} hand-written bodies; 0 failures"
    )
    for operation, count in sorted(examples_run.items()):
        print(f"  {operation}: {count}")


@pytest.mark.postgres
def test_nul_characters_with_postgres(tmp_path: Any) -> None:
    store_url = os.environ.get("CONSCIENCE_TEST_POSTGRES_URL")
    if not store_url:
        pytest.skip("CONSCIENCE_TEST_POSTGRES_URL is not set")
    with running_proxy(tmp_path, store_url=store_url) as proxy:
        for raw in (
            _body().replace(b"Hello?", b"a\\u0000b"),  # in the conversation
            _body(tools=[{"x": "\u0000"}]),  # in a field passed upstream and stored
        ):
            response = httpx.post(proxy.url + CHAT, content=raw, headers=auth(), timeout=30)
            assert response.status_code == 200, response.text
        proxy.engine.generation = "an answer with a \u0000 in it"  # from the upstream
        response = httpx.post(proxy.url + CHAT, content=_body(), headers=auth(), timeout=30)
        assert response.status_code == 200, response.text
