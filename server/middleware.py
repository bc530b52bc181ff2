"""Request context as a plain ASGI middleware: a request id on every response and log line,
the body-size limit (by Content-Length, and on the bytes as they arrive), request metrics.
(Starlette's ``BaseHTTPMiddleware`` costs about a millisecond a request; this costs almost
nothing.)"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conscience.server.errors import error_response

__all__ = ["RequestContext"]

log = logging.getLogger("conscience.server")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"")
        request_id = given.decode() if _REQUEST_ID.match(given) else "req_" + uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        length = headers.get(b"content-length")
        started = time.perf_counter()
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            response = error_response(
                413,
                f"request body larger than {self.max_body_bytes} bytes",
                code="request_too_large",
            )
            await response(scope, receive, send_with_id)
        else:
            await self.app(scope, _limited(receive, self.max_body_bytes), send_with_id)
        self._observe(scope, status["code"], request_id, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, request_id: str, seconds: float) -> None:
        app: Any = scope.get("app")
        pipeline = getattr(getattr(app, "state", None), "pipeline", None)
        # The route's template, never the raw path: a path parameter (a judgement id) would
        # make one series per value, and any caller could grow the registry without bound.
        route = getattr(scope.get("route"), "path", None) or "unknown"
        if pipeline is not None:
            pipeline.metrics.requests.labels(route, str(status)).inc()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %s %.1fms",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                extra={"request_id": request_id},
            )


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses the body as soon as it passes the limit: a chunked body has no
    Content-Length to refuse it by, and must not be read whole into memory first (FastAPI reads
    an admin route's body before the admin key is checked)."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            # An HTTPException, because FastAPI re-raises those from its body parsing.
            raise HTTPException(413, f"request body larger than {limit} bytes")
        return message

    return receive_limited
