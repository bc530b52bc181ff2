"""The PostgreSQL backend: one store shared by several proxy replicas.

Durability: every write commits before it returns, and each pooled connection turns
``synchronous_commit`` back on if the server's default is ``off`` (a setting that would let an
acknowledged write vanish in a crash). Stronger settings (``remote_apply`` …) are left alone.

Replicas open the same database at once, so the migration runs in one transaction behind a
transaction-scoped advisory lock: the first replica migrates, the others wait and then find
nothing left to do. ``CREATE TABLE IF NOT EXISTS`` alone is not safe under that race.

Messages and label probabilities are JSONB; times are ``timestamptz``, read back in UTC.
Driver errors become ``StoreError``; no message repeats the password of the URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from conscience.errors import NotFound, StoreError
from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.store.base import COLUMNS, UnreadableRow, to_utc
from conscience.store.schema import POSTGRES_MIGRATIONS, POSTGRES_VERSION_TABLE
from conscience.store.sql import CURRENT_VERSION, Query, SQLReads, Statements, check_version
from conscience.store.url import redact, scrub

__all__ = ["MIGRATIONS", "PostgresStore"]

MIGRATIONS = POSTGRES_MIGRATIONS

# pg_advisory_xact_lock key for migrations: the bytes of "conscie" (any constant would do).
_MIGRATION_LOCK = int.from_bytes(b"conscie", "big")
_CONNECT_TIMEOUT_S = 10


def _no_nul(value: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold NUL: store U+FFFD in its place (SQLite keeps NUL).

    A NUL in a conversation is never meaningful text, and refusing the row would fail the
    client's request (503) for a body SQLite stores; the replacement is visible, not silent.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    return value


def _jsonb(text: str) -> Jsonb:
    """JSON text that ``json_text`` made, sent as jsonb as it is: ``dumps=str`` hands psycopg
    the text unchanged, so nothing is serialized twice (or differently from SQLite)."""
    return Jsonb(text, dumps=str)


# psycopg sends an aware datetime as timestamptz.
_SQL = Statements(mark="%s", moment=to_utc, json=_jsonb)


def _to_row(judgement: Judgement) -> tuple[object, ...]:
    return _SQL.values(_no_nul(judgement.model_dump()))


def _from_row(row: Sequence[Any]) -> Judgement:
    """The judgement in a row, or ``UnreadableRow`` (the server keeps text valid UTF-8, jsonb
    valid JSON; a label outside the enum or JSON of the wrong shape is still possible)."""
    data = dict(zip(COLUMNS, row, strict=True))
    data["created_at"] = data["created_at"].astimezone(UTC)
    try:
        return Judgement.model_validate(data)
    except ValidationError as exc:
        raise UnreadableRow(data.get("id"), "invalid_record", str(exc)) from None


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Per pooled connection: never acknowledge a commit that is not flushed."""
    await conn.execute(
        "SELECT set_config('synchronous_commit', 'on', false)"
        " WHERE current_setting('synchronous_commit') = 'off'"
    )


class PostgresStore(SQLReads, statements=_SQL, from_row=_from_row):
    """A ``JudgementStore`` in PostgreSQL (``postgresql://`` or ``postgres://`` URL)."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout_s: float = 30.0,
        migrations: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._timeout_s = timeout_s
        self._migrations = MIGRATIONS if migrations is None else migrations
        self._pool: AsyncConnectionPool | None = None

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"PostgreSQL store {redact(self._url)}: {scrub(str(exc), self._url)}")

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            params = conninfo_to_dict(self._url)
            params.setdefault("connect_timeout", _CONNECT_TIMEOUT_S)
            async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
                await _migrate(conn, self._migrations)
            pool = AsyncConnectionPool(
                self._url,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._timeout_s,
                kwargs={"autocommit": True, "connect_timeout": params["connect_timeout"]},
                configure=_configure,
                check=AsyncConnectionPool.check_connection,  # a restarted server costs no request
                name="conscience-store",
                open=False,
            )
        except psycopg.Error as exc:
            # `from None`: the driver's exception carries the connection, password included.
            raise self._error(exc) from None
        try:
            await pool.open(wait=True, timeout=self._timeout_s)
        except psycopg.Error as exc:
            await pool.close()
            raise self._error(exc) from None
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise self._error(exc) from None

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with self._pool.connection(timeout=5.0) as conn:
                cur = await conn.execute("SELECT 1")
                return await cur.fetchone() == (1,)
        except Exception:
            return False

    # -- writes --------------------------------------------------------------------------------

    async def add(self, judgement: Judgement) -> None:
        row = _to_row(judgement)
        async with self._connection() as conn:
            await conn.execute(_SQL.insert, row)

    async def add_many(self, judgements: list[Judgement]) -> None:
        rows = [_to_row(j) for j in judgements]
        if not rows:
            return
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_SQL.insert, rows)

    async def set_human_label(self, judgement_id: str, label: Verdict | None) -> Judgement:
        async with self._connection() as conn:
            cur = await conn.execute(*_SQL.set_human_label(judgement_id, label))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no judgement {judgement_id!r}")
        return _from_row(row)

    async def mark_consumed(self, judgement_ids: list[str], run_id: str) -> int:
        updates = _SQL.mark_consumed(judgement_ids, run_id)
        if not updates:
            return 0
        marked = 0
        async with self._connection() as conn, conn.transaction():
            for query in updates:
                marked += (await conn.execute(*query)).rowcount
        return marked

    async def purge_older_than(self, cutoff: datetime) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(*_SQL.purge_older_than(cutoff))
            return cur.rowcount

    # -- reads: SQLReads has them, this runs their queries -------------------------------------

    async def _fetch(self, query: Query) -> list[Any]:
        async with self._connection() as conn:
            cur = await conn.execute(*query)
            return await cur.fetchall()


async def _migrate(conn: psycopg.AsyncConnection[Any], migrations: Sequence[Sequence[str]]) -> None:
    """Bring the schema to ``len(migrations)``, one opener at a time (advisory lock)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(POSTGRES_VERSION_TABLE)
        cur = await conn.execute(CURRENT_VERSION)
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        check_version(current, migrations)
        for version in range(current + 1, len(migrations) + 1):
            for statement in migrations[version - 1]:
                await conn.execute(statement)
            await conn.execute(*_SQL.record_version(version))
