"""Hostile input on the routes of issue 17 beyond the schema fuzz (test_fuzz.py covers
``/v1/completions`` from its OpenAPI schema): hand-written completion bodies, and requests the
passthrough must refuse or forward without a 5xx, a traceback, an ERROR log line or a key."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from proxy_harness import (
    SECRETS,
    UPSTREAM_KEY,
    LogRecorder,
    Proxy,
    assert_envelope,
    auth,
    recording_logs,
    running_proxy,
)

from conscience.testing.scripted import Fault

COMPLETIONS = "/v1/completions"
DEEP = 10_000


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, LogRecorder]]:
    with (
        running_proxy(tmp_path_factory.mktemp("hostile")) as proxy,
        recording_logs(logging.WARNING) as logs,
    ):
        yield proxy, logs


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "gen", "prompt": "Hello", **fields}).encode()


CASES: list[tuple[str, bytes, int]] = [
    ("not JSON", b"{prompt: 1}", 400),
    ("top-level list", b"[]", 400),
    (
        "deep nesting in the prompt",
        b'{"model": "gen", "prompt": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        400,
    ),
    ("lone surrogate", _body().replace(b"Hello", b"\\ud800"), 400),
    ("NaN temperature", _body()[:-1] + b', "temperature": NaN}', 400),
    ("no prompt", json.dumps({"model": "gen"}).encode(), 400),
    ("prompt null", _body(prompt=None), 400),
    ("prompt a number", _body(prompt=5), 400),
    ("prompt an object", _body(prompt={"text": "x"}), 400),
    ("prompt tokens", _body(prompt=[1, 2, 3]), 400),
    ("prompt token batches", _body(prompt=[[1], [2]]), 400),
    ("prompt mixed", _body(prompt=["a", 1]), 400),
    ("prompt list of nulls", _body(prompt=[None]), 400),
    ("prompt empty list", _body(prompt=[]), 400),
    ("batch too large", _body(prompt=["a"] * 65), 400),
    ("n too large", _body(n=17), 400),
    ("n a float", _body(n=2.5), 400),
    ("suffix", _body(suffix="end"), 400),
    ("echo a list", _body(echo=[True]), 400),
    ("logprobs negative", _body(logprobs=-1), 400),
    ("conscience a string", _body(conscience="off"), 400),
    ("conscience unknown framework", _body(conscience={"framework": "../x"}), 400),
    ("empty prompt", _body(prompt=""), 200),
    ("NUL in the prompt", _body().replace(b"Hello", b"a\\u0000b"), 200),
    ("batch of 64", _body(prompt=["a"] * 32, n=2), 200),
    ("echo and logprobs", _body(echo=True, logprobs=2), 200),
    ("suffix empty", _body(suffix=""), 200),
    ("odd unknown fields", _body(stop=5, seed="x", user={"a": []}, best_of=2), 200),
]


@pytest.mark.parametrize(("name", "raw", "status"), CASES, ids=[c[0] for c in CASES])
def test_hostile_completion_bodies(
    name: str, raw: bytes, status: int, target: tuple[Proxy, LogRecorder]
) -> None:
    bodies = [raw, raw[:-1] + b', "stream": true}'] if status == 200 else [raw]
    for body in bodies:
        response = httpx.post(target[0].url + COMPLETIONS, content=body, headers=auth(), timeout=30)
        assert response.status_code == status, (name, response.text[:300])
        if status >= 400:
            assert_envelope(response)


def _raw(proxy: Proxy, request: bytes) -> bytes:
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_hostile_passthrough_requests(target: tuple[Proxy, LogRecorder]) -> None:
    proxy = target[0]
    key = auth()["Authorization"].encode()
    for path in (
        b"/v1/../admin/adapter",
        b"/v1/%2e%2e/admin/adapter",
        b"/v1/%2E%2E%2Fadmin%2Fadapter",
        b"/v1/embeddings/../../admin/pairs",
        b"/v1/./embeddings",
        b"/v1//embeddings",
        b"/v1/%00",
        b"/v1/" + b"a" * 8000,
        b"/v1/\xff\xfe",
    ):
        answer = _raw(
            proxy, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + key + b"\r\n\r\n"
        )
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, (path[:60], answer[:200])
        assert b"Traceback" not in answer
    # Smuggling: both framings; the proxy's server refuses or reads one body, never two requests.
    smuggled = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: " + key + b"\r\n"
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /v1/load_lora_adapter HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    first = _raw(proxy, smuggled).split(b"\r\n", 1)[0]
    assert int(first.split(b" ")[1]) < 500, first
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
        response = httpx.request(method, proxy.url + "/v1/no-such-route", headers=auth())
        assert response.status_code == 404 or method in ("HEAD", "OPTIONS"), response.text
        assert response.status_code < 500


def test_no_key_leaks_through_the_passthrough(tmp_path: Any) -> None:
    with recording_logs() as logs, running_proxy(tmp_path) as proxy:
        seen: list[str] = []
        # The upstream echoes the proxy's upstream key in its errors, of every kind.
        echo = json.dumps({"error": {"message": f"bad key {UPSTREAM_KEY}"}}).encode()
        for status in (400, 401, 404, 429, 500):
            proxy.engine.faults = {"generate": Fault(status=status, body=echo, times=1)}
            response = httpx.post(
                proxy.url + COMPLETIONS, content=_body(), headers=auth(), timeout=10
            )
            seen.append(response.text + str(response.headers))
        for path in ("/v1/embeddings", "/v1/no-such-route", "/v1/messages"):
            response = httpx.post(
                proxy.url + path, json={"model": "gen", "input": "a"}, headers=auth()
            )
            seen.append(response.text + str(response.headers))
    for text in [*seen, logs.text()]:
        for secret in SECRETS:
            assert secret not in text


def test_the_server_survived(target: tuple[Proxy, LogRecorder]) -> None:
    proxy, logs = target
    assert httpx.get(proxy.url + "/health", timeout=5).status_code == 200
    response = httpx.post(proxy.url + COMPLETIONS, content=_body(), headers=auth())
    assert response.status_code == 200
    assert logs.errors() == []
