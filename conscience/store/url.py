"""Store URLs: which backend a URL names, and how to speak of a URL without its password.

A store URL is either a filesystem path or ``sqlite:///abs/path`` (SQLite), or a libpq URL,
``postgresql://`` or ``postgres://`` (PostgreSQL). Messages and logs may show the URL, never its
password, so every error built from a URL or a driver's message goes through ``redact`` or
``scrub`` first.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from conscience.errors import ConfigError

__all__ = ["POSTGRES_SCHEMES", "password_of", "redact", "scheme_of", "scrub", "sqlite_path"]

POSTGRES_SCHEMES = ("postgresql", "postgres")


def scheme_of(url: str) -> str | None:
    """The URL's scheme, or None for a bare filesystem path."""
    if "://" not in url:
        return None
    return url.split("://", 1)[0].lower()


def _userinfo_password(url: str) -> str | None:
    """The password of a URL's user info, as written (maybe percent-encoded), or None.

    Found the way libpq finds it, without a URL parser that could refuse a malformed URL (the
    very URL whose error message must not repeat the password): the user info is what precedes
    the first ``@`` that comes before any ``/`` after the scheme.
    """
    if "://" not in url:
        return None
    rest = url.split("://", 1)[1]
    at, slash = rest.find("@"), rest.find("/")
    if at < 0 or (0 <= slash < at):
        return None
    return rest[:at].partition(":")[2] or None


def _query_passwords(url: str) -> list[str]:
    """Values of ``password=`` in the query string (libpq accepts the password there too)."""
    query = url.partition("?")[2].partition("#")[0]
    pairs = (item.partition("=") for item in query.split("&"))
    return [value for key, _, value in pairs if unquote(key) == "password" and value]


def password_of(url: str) -> str | None:
    """The URL's password (user info first, else the query), as written; None if it has none."""
    return _userinfo_password(url) or next(iter(_query_passwords(url)), None)


def redact(url: str) -> str:
    """The URL with every password in it replaced by ``***``."""
    if "://" not in url:
        return url
    if _userinfo_password(url) is not None:
        scheme, rest = url.split("://", 1)
        user, _, host = rest.partition("@")
        url = f"{scheme}://{user.partition(':')[0]}:***@{host}"
    for secret in _query_passwords(url):
        url = url.replace(f"password={secret}", "password=***")
    return url


def scrub(message: str, url: str) -> str:
    """A message with every spelling of every password of the URL replaced by ``***``."""
    secrets = [_userinfo_password(url), *_query_passwords(url)]
    spellings = {spelling for s in secrets if s for spelling in (s, unquote(s))}
    for secret in sorted(spellings, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def sqlite_path(url: str) -> Path:
    """The database file a SQLite URL (``sqlite:///abs/path``) or a bare path names."""
    if scheme_of(url) is None:
        if not url.strip():
            raise ConfigError("empty store URL")
        return Path(url).expanduser()
    parts = urlsplit(url)
    if parts.netloc or not parts.path or parts.path == "/":
        raise ConfigError(
            f"SQLite store URL {redact(url)!r} must name an absolute path: sqlite:///abs/path.sqlite3"
        )
    return Path(unquote(parts.path))
