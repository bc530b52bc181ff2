"""Every other ``/v1/*`` route passes through to the upstream: embeddings, rerank, score, ...

``install(app)`` makes the passthrough the app's fallback (Starlette's ``router.default``): it
sees only requests that no route of the proxy matched, so the proxy's own routes (chat
completions, completions, responses, models, the admin API) keep precedence whatever order
their routers are included in, and a path the proxy serves with another method stays the
proxy's 405. Paths outside ``/v1/`` stay the proxy's 404.

What a forwarded request is:

- the client's key is checked first (``require_client``); the upstream gets the proxy's own
  upstream key (the engine client's), never the client's ``Authorization`` (nor its cookies or
  other key headers); the proxy's request id goes along as ``X-Request-ID``;
- method, path below ``/v1/``, query string and body go unchanged (the body is read whole,
  under the body-size limit), and so do the other headers, but for hop-by-hop ones;
- ``Accept-Encoding`` is the client's (``identity`` when it sent none), and a 2xx body comes
  back byte for byte as it arrives (streamed: SSE stays SSE; gzip stays gzip, with its
  ``Content-Encoding`` and ``Content-Length``); a streamed request (``"stream": true``) is
  sent with ``Connection: close`` (llama.cpp closes such a connection without saying so);
- the upstream's 4xx (404 included) and 501 are its own answer (status, body,
  ``Content-Type`` and ``Retry-After``) with the upstream key scrubbed from it. Its 401/403
  (the proxy's key was refused), 3xx and other 5xx are a 502 envelope, unreachable is 502,
  a timeout 504 (the engine client's timeout, between two reads), as for chat completions.
  A stream that breaks after its headers went out is cut off, never ended cleanly.

Not forwarded, whatever the upstream offers: routes where the model writes text the proxy
would pass unreviewed (``chat/*``, ``completions/*``, ``responses/*``, ``messages``,
``batches``, ``threads``, ``realtime``: 403 ``not_reviewed``), the engine's administration
(``load_lora_adapter``, ``unload_lora_adapter``: 403 ``upstream_admin``; the admin API
publishes adapters), and dot segments (400). Only ``/v1/`` is forwarded: an engine's root
routes (vLLM's ``/tokenize``, llama.cpp's ``/slots``) are not reachable through the proxy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from urllib.parse import unquote

import anyio
import httpx
from fastapi import FastAPI
from opentelemetry.propagate import inject
from pydantic_core import from_json
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from conscience.client import EngineClient
from conscience.errors import EngineStatusError
from conscience.server.auth import require_client
from conscience.server.errors import ApiError

__all__ = ["NOT_REVIEWED", "UPSTREAM_ADMIN", "install"]

log = logging.getLogger("conscience.server")

PREFIX = "/v1/"
# First path segments (below /v1/) that make the model write text the proxy does not review.
NOT_REVIEWED = frozenset(
    {"chat", "completions", "responses", "messages", "batches", "threads", "realtime"}
)
UPSTREAM_ADMIN = frozenset({"load_lora_adapter", "unload_lora_adapter"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never sent upstream: the client's credentials, what httpx sets itself, and what we replace.
_NOT_SENT = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-request-id",
    "accept-encoding",
}
# Never sent back: what the proxy's server sets itself, and the upstream's own request id.
_NOT_RETURNED = HOP_BY_HOP | {"server", "date", "x-request-id", "set-cookie", "location"}
_ERROR_HEADERS = ("content-type", "retry-after")
_ROUTE = SimpleNamespace(path="/v1/{path:path}")  # the metrics' route label: one series


def install(app: FastAPI) -> None:
    """Make the passthrough the fallback of ``app``'s router (whatever routes are added)."""
    app.router.default = _Passthrough(app.router.default)


class _Passthrough:
    def __init__(self, not_found: ASGIApp) -> None:
        self.not_found = not_found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.not_found(scope, receive, send)
            return
        scope["route"] = _ROUTE
        request = Request(scope, receive)
        await require_client(request)
        path = _upstream_path(scope)
        body = await request.body()  # its size is bounded as it arrives (server.middleware)
        client: EngineClient = request.app.state.pipeline.client
        response = await _send(client, request, path, body)
        try:
            if response.status_code >= 300:
                await _answer_error(response, request.app.state.scrub, scope, receive, send)
            else:
                await _stream(response, send)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()


def _upstream_path(scope: Scope) -> str:
    """The raw path below ``/v1/`` (still percent-encoded), after refusing what is not
    forwarded. The checks read it decoded, as the upstream will."""
    raw = scope.get("raw_path") or scope["path"].encode()
    raw_path = raw.decode("latin-1")[len(PREFIX) :]
    segments = unquote(raw_path).removesuffix("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise ApiError(400, "the path has an empty or dot segment", code="invalid_path")
    first = segments[0].lower()
    if first in NOT_REVIEWED:
        raise ApiError(
            403,
            f"{PREFIX}{first} is not forwarded: the model would write text that the "
            "conscience does not review",
            code="not_reviewed",
        )
    if first in UPSTREAM_ADMIN:
        raise ApiError(
            403,
            f"{PREFIX}{first} administers the engine and is not forwarded "
            "(the admin API publishes adapters)",
            code="upstream_admin",
        )
    return raw_path


def _streams(body: bytes) -> bool:
    try:
        payload = from_json(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and bool(payload.get("stream"))


def _headers(headers: Headers, request_id: str, streamed: bool) -> list[tuple[str, str]]:
    """The client's headers as the upstream gets them."""
    listed = {name.strip().lower() for name in headers.get("connection", "").split(",")}
    sent = [
        (name, value)
        for name, value in headers.items()
        if name not in _NOT_SENT and name not in listed
    ]
    trace: dict[str, str] = {}
    inject(trace)  # the current trace context, as the engine client sends it (server.tracing)
    sent = [(name, value) for name, value in sent if name not in trace] + list(trace.items())
    sent.append(("x-request-id", request_id))
    sent.append(("accept-encoding", headers.get("accept-encoding", "identity")))
    if streamed:
        sent.append(("connection", "close"))
    return sent


async def _send(client: EngineClient, request: Request, path: str, body: bytes) -> httpx.Response:
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = f"{client.base_url}/{path}" + (f"?{query}" if query else "")
    headers = _headers(request.headers, request.state.request_id, _streams(body))
    # The engine client's pooled connection: its upstream key, timeouts and error mapping.
    http = client._http
    outgoing = http.build_request(request.method, url, content=body, headers=headers)
    with client._engine_errors():
        return await http.send(outgoing, stream=True)


async def _stream(response: httpx.Response, send: Send) -> None:
    headers = [
        (name, value)
        for name, value in response.headers.raw
        if name.decode("latin-1").lower() not in _NOT_RETURNED
    ]
    start = {"type": "http.response.start", "status": response.status_code, "headers": headers}
    await send(start)
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError as exc:
        # The status is out: the only way left to say it failed is to leave the body
        # unfinished, which makes the server cut the connection (no clean end of a chunked
        # body, or fewer bytes than its Content-Length).
        log.warning("the upstream broke a passthrough response: %s", type(exc).__name__)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _answer_error(
    response: httpx.Response,
    scrub: Callable[[str], str],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    await response.aread()
    status = response.status_code
    if status in (401, 403) or not (400 <= status < 500 or status == 501):
        # Not the client's fault, and no redirect to the upstream's own address: a 502. A 501
        # is the upstream's answer, like its 404: it lacks the feature (llama.cpp's
        # embeddings without --embeddings).
        raise EngineStatusError(status, response.text[:200] or response.reason_phrase)
    # The upstream's own answer, re-encoded (httpx decoded any gzip), without our key.
    headers = {name: response.headers[name] for name in _ERROR_HEADERS if name in response.headers}
    answer = Response(scrub(response.text), status_code=status, headers=headers)
    await answer(scope, receive, send)
