"""The judgement store: where every reviewed completion is kept, and where training finds pairs.

``open_store(url)`` picks the backend from the URL: a filesystem path or ``sqlite:///abs/path``
for SQLite (the default, one proxy), ``postgresql://`` or ``postgres://`` for PostgreSQL (several
replicas sharing one store). The contract is ``JudgementStore`` in ``conscience.store.base``;
the SQL both backends run is written once, in ``conscience.store.sql``.
Constructing a store does no I/O; ``await store.open()`` connects and migrates.
"""

from __future__ import annotations

from conscience.errors import ConfigError
from conscience.store.base import JudgementStore, is_pair
from conscience.store.url import POSTGRES_SCHEMES, scheme_of

__all__ = ["JudgementStore", "is_pair", "open_store"]


def open_store(url: str) -> JudgementStore:
    """The store a URL names, not yet opened; ``ConfigError`` for a scheme we do not know."""
    scheme = scheme_of(url)
    if scheme is None or scheme == "sqlite":
        from conscience.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in POSTGRES_SCHEMES:
        # Imported here so that SQLite users never load the PostgreSQL driver.
        from conscience.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(
        f"unknown store URL scheme {scheme!r}: use a file path, sqlite:///abs/path.sqlite3,"
        " postgresql://… or postgres://…"
    )
