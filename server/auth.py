"""Client and admin keys: ``Authorization: Bearer <key>``, compared in constant time.

The checks are ``async`` though they never wait: FastAPI runs a plain ``def`` dependency in its
thread pool, a hand-off that cost the proxy more CPU a request than the check itself
(docs/decisions.md, "A leaner proxy").

The client check also notes which key asked, by its id (``key_id``: the first 12 hex digits of
the key's SHA-256, never the key), for the request's judgements (``client_key_id``)."""

from __future__ import annotations

import hashlib
import hmac
from contextvars import ContextVar

from fastapi import Request

from conscience.server.errors import ApiError
from conscience.settings import Settings

__all__ = ["bearer", "client_key_id", "key_id", "require_admin", "require_client"]

# The id of the client key of the request being served (set by ``require_client``, per request).
client_key_id: ContextVar[str | None] = ContextVar("client_key_id", default=None)


def key_id(key: str) -> str:
    """A key's id: ``key_`` and the first 12 hex digits of its SHA-256 (the admin key, used as
    a client key, is recorded as ``admin``).

    An operator finds a key's id with ``printf %s "$KEY" | sha256sum | cut -c1-12``.
    """
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str | None, keys: list[str]) -> bool:
    if token is None:
        return False
    # Every key is compared (no early exit), each in constant time.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


async def require_client(request: Request) -> None:
    settings: Settings = request.app.state.settings
    keys = [k.get_secret_value() for k in settings.api_keys]
    if settings.admin_key is not None:
        keys.append(settings.admin_key.get_secret_value())
    if not settings.api_keys:
        client_key_id.set(None)
        return
    token = bearer(request)
    if not _matches(token, keys):
        raise ApiError(401, "missing or invalid API key", code="invalid_api_key")
    admin = settings.admin_key is not None and _matches(token, keys[-1:])
    client_key_id.set("admin" if admin else key_id(token or ""))


async def require_admin(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if settings.admin_key is None:
        raise ApiError(
            403, "the admin API is disabled: set CONSCIENCE_ADMIN_KEY", code="admin_disabled"
        )
    if not _matches(bearer(request), [settings.admin_key.get_secret_value()]):
        raise ApiError(401, "missing or invalid admin key", code="invalid_api_key")
