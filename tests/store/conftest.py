"""Fixtures for the store suite: every test runs once per backend.

SQLite gets a fresh file in tmp_path. PostgreSQL needs ``CONSCIENCE_TEST_POSTGRES_URL`` (start a
throwaway server with ``eval "$(.ci/postgres.sh)"``); its tests skip without it, or fail where
``CONSCIENCE_REQUIRE_POSTGRES=1`` (CI). Each test gets its own schema, named in the URL's
``options=-c search_path=...``, and the schema is dropped afterwards.
"""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import poison
import psycopg
import pytest

from conscience.judgement import Judgement
from conscience.labels import Action, Verdict
from conscience.store import JudgementStore, open_store
from conscience.store.url import sqlite_path


@pytest.fixture
def postgres_url() -> str:
    """The test server's URL; without one, skip (or fail where CI requires PostgreSQL)."""
    return poison.postgres_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(backend: str, tmp_path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL naming an empty store of the backend under test."""
    if backend == "sqlite":
        yield str(tmp_path / "not-yet" / "judgements.sqlite3")  # open() creates the directory
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield poison.with_options(base, f"search_path={schema}")
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def run_sql(store_url: str, backend: str) -> Callable[[str], list[tuple[Any, ...]]]:
    """Run one SQL statement on the store's database behind the store's back."""

    def run(sql: str) -> list[tuple[Any, ...]]:
        if backend == "sqlite":
            conn = sqlite3.connect(sqlite_path(store_url))
            try:
                rows = conn.execute(sql).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        with psycopg.connect(store_url, autocommit=True) as pg:
            cursor = pg.execute(sql)
            return cursor.fetchall() if cursor.description is not None else []

    return run


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[JudgementStore]:
    s = open_store(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def make() -> Callable[..., Judgement]:
    """Build a judgement: unique, created one second after the previous one, overridable."""
    counter = itertools.count()

    def build(**fields: Any) -> Judgement:
        n = next(counter)
        defaults: dict[str, Any] = {
            "created_at": T0 + timedelta(seconds=n),
            "framework": "three-laws",
            "layout": "paper",
            "messages": [{"role": "user", "content": f"question {n}"}],
            "answer": f"answer {n}",
            "verdict": Verdict.ETHICAL,
            "action": Action.PASSED,
        }
        return Judgement(**(defaults | fields))

    return build


@pytest.fixture
def make_pair(make: Callable[..., Judgement]) -> Callable[..., Judgement]:
    def build(**fields: Any) -> Judgement:
        defaults = {"verdict": Verdict.UNETHICAL, "rewrite": "a kinder answer"}
        return make(**(defaults | fields))

    return build
