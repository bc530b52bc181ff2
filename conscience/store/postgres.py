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
from enum import Enum
from typing import Any, Unpack

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from conscience.errors import NotFound, StoreError
from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.store.base import (
    BLANK,
    COLUMNS,
    Filters,
    RowsRead,
    UnreadableRow,
    check_page,
    filter_sql,
    json_text,
    split_rows,
    to_utc,
)
from conscience.store.schema import POSTGRES_MIGRATIONS
from conscience.store.url import redact, scrub

__all__ = ["MIGRATIONS", "PostgresStore"]

MIGRATIONS = POSTGRES_MIGRATIONS

# pg_advisory_xact_lock key for migrations: the bytes of "conscie" (any constant would do).
_MIGRATION_LOCK = int.from_bytes(b"conscie", "big")
_JSON_COLUMNS = frozenset({"messages", "label_probs"})
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM judgements"
_INSERT = (
    f"INSERT INTO judgements ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
)
_PAIRS = (
    " WHERE rewrite IS NOT NULL AND trim(rewrite, %s) <> ''"
    " AND coalesce(human_label, verdict) = 'unethical'"
)
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


def _to_row(judgement: Judgement) -> tuple[Any, ...]:
    data = _no_nul(judgement.model_dump())
    row: list[Any] = []
    for name in COLUMNS:
        value = data[name]
        if isinstance(value, datetime):
            value = to_utc(value)
        elif isinstance(value, Enum):
            value = value.value  # psycopg would dump an Enum by its *name*
        elif name in _JSON_COLUMNS and value is not None:
            text = json_text(judgement.id, name, value)
            value = Jsonb(value, dumps=lambda _, text=text: text)  # serialized once, as SQLite does
        row.append(value)
    return tuple(row)


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


class PostgresStore:
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
            await conn.execute(_INSERT, row)

    async def add_many(self, judgements: list[Judgement]) -> None:
        rows = [_to_row(j) for j in judgements]
        if not rows:
            return
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_INSERT, rows)

    async def set_human_label(self, judgement_id: str, label: Verdict | None) -> Judgement:
        value = None if label is None else Verdict(label).value
        sql = f"UPDATE judgements SET human_label = %s WHERE id = %s RETURNING {', '.join(COLUMNS)}"
        async with self._connection() as conn:
            row = await (await conn.execute(sql, (value, judgement_id))).fetchone()
        if row is None:
            raise NotFound(f"no judgement {judgement_id!r}")
        return _from_row(row)

    async def mark_consumed(self, judgement_ids: list[str], run_id: str) -> int:
        if not judgement_ids:
            return 0
        sql = (
            "UPDATE judgements SET consumed_by = %s"
            " WHERE consumed_by IS NULL AND id = ANY(%s::text[])"
        )
        async with self._connection() as conn:
            cur = await conn.execute(sql, (run_id, list(judgement_ids)))
            return cur.rowcount

    async def purge_older_than(self, cutoff: datetime) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(
                "DELETE FROM judgements WHERE created_at < %s", (to_utc(cutoff),)
            )
            return cur.rowcount

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, judgement_id: str) -> Judgement:
        async with self._connection() as conn:
            cur = await conn.execute(f"{_SELECT} WHERE id = %s", (judgement_id,))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no judgement {judgement_id!r}")
        return _from_row(row)

    async def read_page(
        self, *, limit: int = 100, offset: int = 0, **filters: Unpack[Filters]
    ) -> RowsRead:
        check_page(limit, offset)
        where, params = filter_sql(filters, mark="%s", moment=to_utc)
        sql = f"{_SELECT}{where} ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s"
        async with self._connection() as conn:
            cur = await conn.execute(sql, (*params, limit, offset))
            rows = await cur.fetchall()
        return split_rows(rows, _from_row)

    async def count(self, **filters: Unpack[Filters]) -> int:
        where, params = filter_sql(filters, mark="%s", moment=to_utc)
        async with self._connection() as conn:
            cur = await conn.execute(f"SELECT count(*) FROM judgements{where}", params)
            row = await cur.fetchone()
        assert row is not None  # count(*) always yields one row
        return int(row[0])

    async def read_pairs(
        self, *, include_consumed: bool = False, limit: int | None = None
    ) -> RowsRead:
        check_page(limit)
        sql = _SELECT + _PAIRS
        if not include_consumed:
            sql += " AND consumed_by IS NULL"
        sql += " ORDER BY created_at, id LIMIT %s"  # LIMIT NULL: all of them
        async with self._connection() as conn:
            cur = await conn.execute(sql, (BLANK, limit))
            rows = await cur.fetchall()
        return split_rows(rows, _from_row)


async def _migrate(conn: psycopg.AsyncConnection[Any], migrations: Sequence[Sequence[str]]) -> None:
    """Bring the schema to ``len(migrations)``, one opener at a time (advisory lock)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > len(migrations):
            raise StoreError(
                f"the store's schema is version {current}, newer than this code's"
                f" {len(migrations)}: upgrade conscience"
            )
        for version in range(current + 1, len(migrations) + 1):
            for statement in migrations[version - 1]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
