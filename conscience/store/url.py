"""Store URLs: which backend a URL names, and how to speak of a URL without its password.

A store URL is either a filesystem path or ``sqlite:///abs/path`` (SQLite), or a libpq URL,
``postgresql://`` or ``postgres://`` (PostgreSQL). Messages and logs may show the URL, never its
password, so every error built from a URL or a driver's message goes through ``redact`` or
``scrub`` first.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from conscience.errors import ConfigError

__all__ = ["POSTGRES_SCHEMES", "password_of", "redact", "scheme_of", "scrub", "sqlite_path"]

POSTGRES_SCHEMES = ("postgresql", "postgres")


def scheme_of(url: str) -> str | None:
    """The URL's scheme, or None for a bare filesystem path."""
    if "://" not in url:
        return None
    return url.split("://", 1)[0].lower()


def password_of(url: str) -> str | None:
    """The password in a URL's user info, if any (as written and decoded)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return password or None


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``; unparsable URLs become ``<url>``."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return f"<{scheme_of(url) or 'unparsable'} url>"


def scrub(message: str, url: str) -> str:
    """A message with every spelling of the URL's password replaced by ``***``."""
    try:
        raw = urlsplit(url).netloc.rpartition("@")[0].partition(":")[2]
    except ValueError:
        raw = ""
    for secret in {raw, unquote(raw)}:
        if secret:
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
