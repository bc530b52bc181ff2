"""Client and admin keys: ``Authorization: Bearer <key>``, compared in constant time.

The checks are ``async`` though they never wait: FastAPI runs a plain ``def`` dependency in its
thread pool, a hand-off that cost the proxy more CPU a request than the check itself
(docs/decisions.md, "A leaner proxy")."""

from __future__ import annotations

import hmac

from fastapi import Request

from conscience.server.errors import ApiError
from conscience.settings import Settings

__all__ = ["bearer", "require_admin", "require_client"]


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
    if settings.api_keys and not _matches(bearer(request), keys):
        raise ApiError(401, "missing or invalid API key", code="invalid_api_key")


async def require_admin(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if settings.admin_key is None:
        raise ApiError(
            403, "the admin API is disabled: set CONSCIENCE_ADMIN_KEY", code="admin_disabled"
        )
    if not _matches(bearer(request), [settings.admin_key.get_secret_value()]):
        raise ApiError(401, "missing or invalid admin key", code="invalid_api_key")
