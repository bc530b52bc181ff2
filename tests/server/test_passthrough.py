"""Every other ``/v1/*`` route passes through to the upstream, through the real `openai` client
and raw HTTP: body, query, method and headers unchanged, the client's key checked and never
sent on, the proxy's upstream key never shown, streams streamed, and the upstream's own answer
(404 included) where it has no such route."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from conscience.testing.scripted import ScriptedEngine, free_port, serve_in_thread

UPSTREAM_KEY = "sk-upstream-secret"  # what make_proxy gives the proxy
CLIENT_KEY = "sk-client-key"
RELEASE_TIMEOUT_S = 10.0


@pytest.fixture
def seen() -> list[dict[str, Any]]:
    """What the upstream received: method, path, query, headers, body, per request."""
    return []


@pytest.fixture
def release() -> threading.Event:
    return threading.Event()


@pytest.fixture
def engine_url(
    engine: ScriptedEngine, seen: list[dict[str, Any]], release: threading.Event
) -> Iterator[str]:
    app = engine.app()

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        body = await request.body()
        seen.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        return await call_next(request)

    @app.api_route("/v1/echo/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(rest: str, request: Request) -> Response:
        body = (await request.body()).decode()
        return JSONResponse({"method": request.method, "rest": rest, "body": body})

    @app.get("/v1/stream")
    async def stream() -> Response:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            # The second event waits for the test to have received the first: a proxy that
            # buffered the response would never hand it over, and the test would time out.
            released = await asyncio.to_thread(release.wait, RELEASE_TIMEOUT_S)
            yield b"data: two\n\n" if released else b"data: never released\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/gzipped")
    async def gzipped(request: Request) -> Response:
        payload = json.dumps({"data": "x" * 1000}).encode()
        if "gzip" not in request.headers.get("accept-encoding", ""):
            return Response(payload, media_type="application/json")
        return Response(
            gzip.compress(payload),
            media_type="application/json",
            headers={"Content-Encoding": "gzip"},
        )

    @app.get("/v1/fail/{status}")
    async def fail(status: int) -> Response:
        error = {"message": f"refused, key {UPSTREAM_KEY}", "type": "x", "code": status}
        headers = {"Retry-After": "7", "X-Upstream-Note": "kept"} if status == 429 else {}
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    @app.get("/v1/redirect")
    async def redirect() -> Response:
        return Response(status_code=307, headers={"Location": "http://upstream.internal/v1/x"})

    with serve_in_thread(app) as url:
        yield url + "/v1"


def _client(url: str, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=15)


def _vector(text: str) -> list[float]:
    """The scripted engine's embedding of ``text``, as float32 (what base64 carries)."""
    digest = hashlib.sha256(json.dumps(text).encode()).digest()
    return list(struct.unpack("<8f", struct.pack("<8f", *[b / 255 for b in digest[:8]])))


def test_embeddings_pass_through_with_the_proxys_key_only(
    make_proxy, seen: list[dict[str, Any]]
) -> None:
    url = make_proxy(api_keys=CLIENT_KEY)
    client = _client(url)
    raw = client.embeddings.with_raw_response.create(model="gen", input=["a", "b"])
    embeddings = raw.parse()
    assert [d.embedding for d in embeddings.data] == [_vector("a"), _vector("b")]
    floats = client.embeddings.create(model="gen", input="a", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(_vector("a"))
    # The upstream got the client's body unchanged, with the proxy's key and request id.
    (first, second) = [s for s in seen if s["path"] == "/v1/embeddings"]
    assert json.loads(first["body"]) == {
        "model": "gen",
        "input": ["a", "b"],
        "encoding_format": "base64",
    }
    for request in (first, second):
        assert request["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert CLIENT_KEY not in json.dumps(request["headers"])
    assert first["headers"]["x-request-id"] == raw.headers["x-request-id"]
    assert UPSTREAM_KEY not in raw.http_response.text + str(raw.headers)


def test_the_client_key_is_checked_before_anything_goes_upstream(
    make_proxy, seen: list[dict[str, Any]]
) -> None:
    url = make_proxy(api_keys=CLIENT_KEY)
    for key in ("wrong", UPSTREAM_KEY):
        with pytest.raises(openai.AuthenticationError):
            _client(url, key).embeddings.create(model="gen", input="a")
    response = httpx.post(url + "/v1/no-such-route", json={})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert seen == []


def test_a_route_the_upstream_lacks_gets_the_upstreams_answer(
    engine_url: str, proxy_url: str
) -> None:
    direct = httpx.post(engine_url + "/no-such-route", json={"x": 1})
    assert direct.status_code == 404
    with pytest.raises(openai.NotFoundError) as info:
        _client(proxy_url).post("/no-such-route", body={"x": 1}, cast_to=httpx.Response)
    assert info.value.response.json() == direct.json()  # the upstream's body, not ours
    response = httpx.delete(proxy_url + "/v1/no-such-route")
    assert response.status_code == 404 and response.json() == direct.json()


def test_method_path_query_body_and_headers_pass_unchanged(
    proxy_url: str, seen: list[dict[str, Any]]
) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        response = httpx.request(
            method,
            proxy_url + "/v1/echo/a%20b/c?x=1&y=%C3%A9&x=2",
            content=b"raw \x00 bytes" if method != "GET" else None,
            headers={
                "Authorization": f"Bearer {CLIENT_KEY}",
                "Cookie": "session=1",
                "X-Api-Key": CLIENT_KEY,
                "OpenAI-Organization": "org-1",
                "X-Custom": "kept",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped",
                "Content-Type": "application/octet-stream",
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["method"] == method and response.json()["rest"] == "a b/c"
        got = seen[-1]
        assert got["method"] == method and got["query"] == "x=1&y=%C3%A9&x=2"
        assert got["body"] == (b"raw \x00 bytes" if method != "GET" else b"")
        headers = got["headers"]
        assert headers["x-custom"] == "kept" and headers["openai-organization"] == "org-1"
        assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        for dropped in ("cookie", "x-api-key", "x-hop"):
            assert dropped not in headers
        # httpx's default, as the client sent it (with zstd where zstandard is installed)
        with httpx.Client() as default:
            assert headers["accept-encoding"] == default.headers["accept-encoding"]


def test_a_streamed_response_is_streamed(proxy_url: str, release: threading.Event) -> None:
    with httpx.stream("GET", proxy_url + "/v1/stream", timeout=RELEASE_TIMEOUT_S * 2) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first == "data: one"  # arrived while the upstream still holds the rest
        release.set()
        rest = [line for line in lines if line]
    assert rest == ["data: two", "data: [DONE]"]


def _raw_upstream(answer: bytes) -> str:
    """An upstream that answers every request with ``answer`` and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/v1"


@pytest.mark.parametrize(
    "framing",
    [b"Transfer-Encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n", b"Content-Length: 99\r\n\r\n{"],
)
def test_a_response_the_upstream_breaks_is_cut_off(make_proxy, framing: bytes) -> None:
    url = make_proxy(upstream_url=_raw_upstream(b"HTTP/1.1 200 OK\r\n" + framing))
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("GET", url + "/v1/anything", timeout=10) as response,
    ):
        assert response.status_code == 200
        response.read()  # never a clean end: the client knows the body is incomplete
    assert httpx.get(url + "/health").status_code == 200


def test_gzip_passes_as_gzip(proxy_url: str, seen: list[dict[str, Any]]) -> None:
    response = httpx.get(proxy_url + "/v1/gzipped", headers={"Accept-Encoding": "gzip"})
    assert seen[-1]["headers"]["accept-encoding"] == "gzip"
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) < 1000  # the compressed bytes, unchanged
    assert response.json() == {"data": "x" * 1000}
    # A client that names no encoding gets none: the upstream is asked for identity.
    host, port = proxy_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /v1/gzipped HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = sock.recv(65536).split(b"\r\n\r\n", 1)[0].lower()
    assert seen[-1]["headers"]["accept-encoding"] == "identity"
    assert b" 200 " in head and b"content-encoding" not in head


def test_the_upstreams_errors(proxy_url: str) -> None:
    # Its 4xx is its own answer, without the proxy's upstream key.
    limited = httpx.get(proxy_url + "/v1/fail/429")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert "x-upstream-note" not in limited.headers
    assert limited.json()["error"]["message"] == "refused, key ***"
    assert httpx.get(proxy_url + "/v1/fail/422").status_code == 422
    unsupported = httpx.get(proxy_url + "/v1/fail/501")  # it lacks the feature: its answer
    assert unsupported.status_code == 501 and unsupported.json()["error"]["code"] == 501
    # Refusing the proxy's key, failing, or redirecting to itself is a broken upstream: 502.
    for path, code in (
        ("/v1/fail/401", "upstream_auth_failed"),
        ("/v1/fail/403", "upstream_auth_failed"),
        ("/v1/fail/500", "upstream_error"),
        ("/v1/redirect", "upstream_error"),
    ):
        response = httpx.get(proxy_url + path)
        assert response.status_code == 502, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == code and UPSTREAM_KEY not in response.text
        assert "location" not in response.headers


def test_an_unreachable_or_slow_upstream(make_proxy, release: threading.Event) -> None:
    down = make_proxy(upstream_url=f"http://127.0.0.1:{free_port()}/v1")
    response = httpx.post(down + "/v1/embeddings", json={"model": "gen", "input": "a"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    slow = make_proxy(upstream_timeout=0.5)
    # The headers come; the upstream then stalls past the timeout: the stream is cut.
    with (
        httpx.stream("GET", slow + "/v1/stream", timeout=10) as stalled,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        stalled.read()
    release.set()  # let the upstream finish the stream it still holds


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("POST", "/v1/messages", "not_reviewed"),
        ("POST", "/v1/Messages", "not_reviewed"),
        ("POST", "/v1/chat/completions/batch", "not_reviewed"),
        ("POST", "/v1/chat%2Fcompletions%2Fbatch", "not_reviewed"),
        ("POST", "/v1/completions/render", "not_reviewed"),
        ("GET", "/v1/responses/resp_1", "not_reviewed"),
        ("POST", "/v1/batches", "not_reviewed"),
        ("POST", "/v1/threads/t/runs", "not_reviewed"),
        ("POST", "/v1/load_lora_adapter", "upstream_admin"),
        ("POST", "/v1/unload_lora_adapter", "upstream_admin"),
    ],
)
def test_routes_that_would_go_unreviewed_are_not_forwarded(
    proxy_url: str, seen: list[dict[str, Any]], method: str, path: str, code: str
) -> None:
    response = httpx.request(method, proxy_url + path, json={"model": "gen"})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == code
    assert seen == []


def test_dot_segments_never_reach_the_upstream(proxy_url: str, seen: list[dict[str, Any]]) -> None:
    host, port = proxy_url.removeprefix("http://").split(":")
    for path in ("/v1/../health", "/v1/%2e%2e/health", "/v1/a/./b", "/v1/a//b"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            status_line = sock.recv(65536).split(b"\r\n", 1)[0]
        assert b" 400 " in status_line, (path, status_line)
    assert seen == []


def test_the_proxys_own_routes_keep_precedence(
    engine: ScriptedEngine, proxy_url: str, seen: list[dict[str, Any]]
) -> None:
    client = _client(proxy_url)
    assert [m.owned_by for m in client.models.list()] == ["conscience"]
    chat = client.chat.completions.create(
        model="gen", messages=[{"role": "user", "content": "Hi?"}]
    )
    assert chat.model_extra["conscience"]["judgement_id"]  # reviewed, not forwarded
    completion = client.completions.create(model="gen", prompt="Hi?")
    assert completion.model_extra["conscience"]["judgement_id"]
    # A path the proxy serves with another method is the proxy's 405, outside /v1 its 404.
    assert httpx.post(proxy_url + "/v1/models").status_code == 405
    outside = httpx.get(proxy_url + "/nowhere")
    assert outside.status_code == 404 and outside.json()["error"]["type"] == "not_found_error"


def test_the_body_limit_applies(make_proxy, seen: list[dict[str, Any]]) -> None:
    url = make_proxy(max_body_bytes=2000)
    big = {"model": "gen", "input": "x" * 5000}
    response = httpx.post(url + "/v1/embeddings", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: refused as it arrives
        yield b'{"model": "gen", "input": "'
        yield b"y" * 5000
        yield b'"}'

    response = httpx.post(url + "/v1/embeddings", content=chunked())
    assert response.status_code == 413
    assert seen == []


def test_metrics_count_the_passthrough_as_one_route(proxy_url: str) -> None:
    for path in ("/v1/echo/a", "/v1/echo/b", "/v1/no-such-route"):
        httpx.get(proxy_url + path)
    metrics = httpx.get(proxy_url + "/metrics").text
    assert 'route="/v1/{path:path}"' in metrics
    assert "/v1/echo/a" not in metrics


async def test_the_async_client(proxy_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key="x", max_retries=0)
    embeddings = await client.embeddings.create(model="gen", input=["z"])
    assert embeddings.data[0].embedding == _vector("z")  # the SDK asked for base64
