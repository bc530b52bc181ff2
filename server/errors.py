"""Every error leaves the server as one OpenAI envelope with its true status code.

``ApiError`` is raised by our own code; the project's ``ConscienceError`` tree and FastAPI's
validation and routing errors are mapped here, in one place. Nothing sends a traceback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from conscience.errors import (
    ConfigError,
    ConscienceError,
    EngineStatusError,
    EngineTimeout,
    EngineUnavailable,
    NotFound,
    StoreError,
    VerdictError,
)
from conscience.settings import Settings
from conscience.store.url import scrub as scrub_url

__all__ = [
    "ApiError",
    "client_message",
    "error_response",
    "install_error_handlers",
    "secret_scrubber",
    "status_of",
]

log = logging.getLogger("conscience.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(exc: ConscienceError) -> tuple[int, str]:
    """The HTTP status and error code that tell a client what went wrong."""
    if isinstance(exc, EngineStatusError):
        if exc.status_code in (401, 403):
            # The upstream refused *the proxy's* credentials: the client's key is not at fault,
            # so it must not be told so; this is the proxy's misconfiguration.
            return 502, "upstream_auth_failed"
        return (exc.status_code if 400 <= exc.status_code < 500 else 502), "upstream_error"
    if isinstance(exc, EngineTimeout):
        return 504, "upstream_timeout"
    if isinstance(exc, VerdictError):
        return 502, "review_failed"
    if isinstance(exc, NotFound):
        return 404, "not_found"
    if isinstance(exc, StoreError):
        return 503, "store_unavailable"
    if isinstance(exc, ConfigError):
        return 400, "invalid_conscience_option"
    return 502, "upstream_unavailable"


_ENGINE_URL = re.compile(r"(?:(?:the )?engine at )?https?://[^\s]*[^\s:,.]")


def client_message(exc: ConscienceError) -> str:
    """What a client may read of an error: a store's own text names the store (path, host,
    user) and may quote the row it failed to write, and an engine's names the upstream's
    address; both stay in the operator's log."""
    if isinstance(exc, StoreError) and not isinstance(exc, NotFound):
        return "the judgement store failed (the server log has the details)"
    message = _ENGINE_URL.sub("the upstream", str(exc))
    if isinstance(exc, EngineUnavailable):  # the transport's own words name hosts and ports
        message = message.split(": ", 1)[0] + " (the server log has the details)"
    return message


def secret_scrubber(settings: Settings) -> Callable[[str], str]:
    """``scrub(text)``: the text without the upstream's key or the password in its URL, either
    of which an upstream's error message (or a connection error) can repeat to us."""
    key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else ""
    url = settings.upstream_url or ""

    def scrub(text: str) -> str:
        return scrub_url(text.replace(key, "***") if key else text, url)

    return scrub


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return f"{param + ': ' if param else ''}{first.get('msg', 'invalid value')}", param


def install_error_handlers(app: FastAPI, scrub: Callable[[str], str]) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        message = scrub(exc.message)  # it may quote an upstream's error
        return error_response(exc.status, message, param=exc.param, code=exc.code)

    @app.exception_handler(ConscienceError)
    async def _ours(request: Request, exc: ConscienceError) -> JSONResponse:
        status, code = status_of(exc)
        # The upstream's rate-limit headers (Retry-After) tell the client when to come back.
        headers = exc.headers if isinstance(exc, EngineStatusError) else None
        if isinstance(exc, EngineStatusError) and status < 500 and isinstance(exc.body, dict):
            body = json.loads(scrub(json.dumps(exc.body)))
            return JSONResponse(body, status_code=status, headers=headers)  # its own 4xx
        log.warning("request failed: %s (%s)", scrub(str(exc)), code)
        return error_response(status, scrub(client_message(exc)), code=code, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client left mid-body: not our failure, and nobody reads this answer.
        log.info("client disconnected before sending the whole body")
        return error_response(400, "the client disconnected", code="client_disconnected")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        code = "request_too_large" if exc.status_code == 413 else None
        return error_response(
            exc.status_code, message, code=code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal server error", code="internal_error")
