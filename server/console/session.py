"""The console's sessions: the admin key is exchanged once, at the login form, for a random
session id in an HttpOnly, SameSite=Strict cookie that expires; the key itself is never stored
in the cookie, put in a page or a URL, or logged.

Each session carries its own CSRF token, which every state-changing form sends back as a hidden
field (checked in constant time). The login form, before there is a session, is protected the
same way by a short-lived token in a cookie of its own (double submit). Sessions live in the
proxy's memory: a restart signs everyone out, and each worker process has its own.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "Session",
    "Sessions",
    "same_token",
]

SESSION_COOKIE = "conscience_session"
LOGIN_COOKIE = "conscience_login"  # the login form's CSRF token, before there is a session
COOKIE_PATH = "/ui"
SESSION_SECONDS = 8 * 3600  # a working day; then the key is asked for again
LOGIN_SECONDS = 15 * 60  # to fill in the login form
MAX_SESSIONS = 1000  # the oldest is dropped beyond this: a flood of logins cannot fill memory


def same_token(given: str | None, expected: str) -> bool:
    """Whether a submitted token is the expected one, compared in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Session:
    expires: float  # time.monotonic() deadline
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


class Sessions:
    """The open sessions of one app, by id."""

    def __init__(self, lifetime_s: float = SESSION_SECONDS) -> None:
        self.lifetime_s = lifetime_s
        self._open: dict[str, Session] = {}

    def open(self) -> tuple[str, Session]:
        now = time.monotonic()
        self._open = {k: s for k, s in self._open.items() if s.expires > now}
        while len(self._open) >= MAX_SESSIONS:
            self._open.pop(next(iter(self._open)))
        session_id = secrets.token_urlsafe(32)
        session = Session(expires=now + self.lifetime_s)
        self._open[session_id] = session
        return session_id, session

    def find(self, request: Request) -> Session | None:
        """The request's session, if its cookie names one that has not expired."""
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        session = self._open.get(session_id)
        if session is None:
            return None
        if session.expires <= time.monotonic():
            del self._open[session_id]
            return None
        return session

    def close(self, request: Request) -> None:
        self._open.pop(request.cookies.get(SESSION_COOKIE, ""), None)


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """An HttpOnly, SameSite=Strict cookie for the console's paths; Secure over HTTPS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict")
