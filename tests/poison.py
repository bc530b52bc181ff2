"""Poisoned store rows written by raw SQL, past the proxy's validation (shared by the suites).

A ``Case`` is one row: a good pair's columns, overridden by the case's own. ``Text`` and ``Blob``
carry raw bytes into a text column; ``sqlite_insert`` and ``pg_insert`` write a row the way a
bug, a hand edit or someone with access to the database would. Used by
``tests/trainer/test_poisoned_store.py`` and ``tests/hardening/test_admin_poisoned.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

from conscience.store import open_store

__all__ = [
    "PG_ENV",
    "T0",
    "Blob",
    "Case",
    "Text",
    "columns",
    "migrate",
    "pg_insert",
    "postgres_schema",
    "postgres_url",
    "sqlite_insert",
    "with_options",
]

PG_ENV = "CONSCIENCE_TEST_POSTGRES_URL"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Text:
    """Bytes stored as TEXT as they are (SQLite); PostgreSQL is asked to read them as UTF-8."""

    raw: bytes


@dataclass(frozen=True)
class Blob:
    """Bytes stored as a BLOB in a text column (SQLite only: PostgreSQL would store bytea's
    hex text, a valid string)."""

    raw: bytes


@dataclass(frozen=True)
class Case:
    name: str
    reason: str | None  # what the suite expects of the row (a reason, or a marker of its own)
    columns: dict[str, Any] = field(default_factory=dict)  # over a good row's columns
    pg_refused: bool = False  # PostgreSQL refuses to store it
    sqlite_only: bool = False  # no PostgreSQL counterpart


def columns(i: int, case: Case) -> dict[str, Any]:
    """The row of a case: a good pair's columns, overridden by the case's."""
    row: dict[str, Any] = {
        "id": f"jdg_{case.name}",
        "created_at": (T0 + timedelta(minutes=i)).isoformat(timespec="microseconds"),
        "framework": "three-laws",
        "layout": "paper",
        "messages": [{"role": "user", "content": "how do i pick a lock"}],
        "answer": "sure here is how to break in",
        "verdict": "unethical",
        "confidence": 0.9,
        "label_probs": {"unethical": 0.9, "ethical": 0.05, "neutral": 0.05},
        "rewrite": "ask the owner or call a locksmith",
        "action": "rewritten",
    } | case.columns
    for name in ("messages", "label_probs"):  # a str is raw JSON text, anything else is dumped
        if row[name] is not None and not isinstance(row[name], str):
            row[name] = json.dumps(row[name])
    return row


def sqlite_insert(conn: sqlite3.Connection, columns: dict[str, Any]) -> None:
    marks = ["CAST(? AS TEXT)" if isinstance(v, Text) else "?" for v in columns.values()]
    values = [v.raw if isinstance(v, Text | Blob) else v for v in columns.values()]
    sql = f"INSERT INTO judgements ({', '.join(columns)}) VALUES ({', '.join(marks)})"
    conn.execute(sql, values)


def pg_insert(conn: Any, columns: dict[str, Any]) -> None:
    casts = {"messages": "::jsonb", "label_probs": "::jsonb", "created_at": "::timestamptz"}
    marks, values = [], []
    for name, value in columns.items():
        if isinstance(value, Text):
            marks.append("convert_from(%s::bytea, 'UTF8')")
        else:
            marks.append("%s" + casts.get(name, ""))
        values.append(value.raw if isinstance(value, Text | Blob) else value)
    sql = f"INSERT INTO judgements ({', '.join(columns)}) VALUES ({', '.join(marks)})"
    conn.execute(sql, values)


def with_options(url: str, *options: str) -> str:
    """A libpq URL with server settings added to its ``options`` (e.g. ``search_path=s``)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = " ".join([query.get("options", ""), *(f"-c {o}" for o in options)]).strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def postgres_url() -> str:
    """The test server's URL; without one, skip (or fail where ``CONSCIENCE_REQUIRE_POSTGRES=1``,
    as in CI)."""
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CONSCIENCE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CONSCIENCE_REQUIRE_POSTGRES=1 but {PG_ENV} is unset")
        pytest.skip(f'{PG_ENV} is unset: start a server with eval "$(.ci/postgres.sh)"')
    return url


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A migrated store in a schema of its own on the test server, dropped afterwards; without
    a server, skip (or fail where ``CONSCIENCE_REQUIRE_POSTGRES=1``, as in CI)."""
    base = postgres_url()
    psycopg = pytest.importorskip("psycopg")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = with_options(base, f"search_path={schema}")
        migrate(url)
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def migrate(url: str) -> None:
    """Create the store's schema at ``url`` (the store's own migrations)."""

    async def open_and_close() -> None:
        store = open_store(url)
        await store.open()
        await store.close()

    asyncio.run(open_and_close())
