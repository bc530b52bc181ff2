"""The store's SQL, written once for both backends.

SQLite and PostgreSQL run the same statements. The text differs only in the driver's parameter
mark (``?`` for sqlite3, ``%s`` for psycopg), the parameters only in how a time and a JSON value
are sent (ISO 8601 text and JSON text to SQLite; an aware datetime and ``Jsonb`` to
PostgreSQL). ``Statements`` holds those differences and writes each statement with its
parameters, ready for the driver's ``execute``. The protocol's reads are ``SQLReads``, written
once over a backend's ``_fetch``.

Where one dialect could say it more briefly, the statement that both can run wins: ids are
matched by ``IN (…)`` lists in chunks (SQLite has no arrays), and ``read_pairs`` without a limit
leaves out ``LIMIT`` (SQLite reads ``LIMIT NULL`` as an error, PostgreSQL as "all").

What really differs stays with its backend: the column types and the ``schema_version`` table
(``schema.py``), how a row is read back (text and JSON text in SQLite, native types in
PostgreSQL), SQLite's write lock, group commit and WAL checkpoint, PostgreSQL's pool and
advisory lock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, ClassVar, Unpack

from conscience.errors import NotFound, StoreError
from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.store.base import (
    BLANK,
    COLUMNS,
    JSON_COLUMNS,
    Filters,
    RowsRead,
    json_text,
    split_rows,
    to_utc,
)
from conscience.store.search import Search, where

__all__ = [
    "CURRENT_VERSION",
    "Query",
    "SQLReads",
    "Statements",
    "check_page",
    "check_version",
]

Query = tuple[str, tuple[object, ...]]  # a statement and its parameters

# The version a database is at: how many migrations it has applied.
CURRENT_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"

_CHUNK = 500  # ids per UPDATE, well under either driver's limit on bound parameters
_COLUMN_LIST = ", ".join(COLUMNS)
_SELECT = f"SELECT {_COLUMN_LIST} FROM judgements"


def check_page(limit: int | None, offset: int = 0) -> None:
    """Refuse a negative limit or offset (SQLite would read -1 as "no limit", PostgreSQL fails)."""
    if (limit is not None and limit < 0) or offset < 0:
        raise ValueError(f"limit and offset must not be negative (got {limit}, {offset})")


def check_version(current: int, migrations: Sequence[object]) -> None:
    """Refuse a database that is newer than this code (old code must not guess at new columns)."""
    if current > len(migrations):
        raise StoreError(
            f"the store's schema is version {current}, newer than this code's"
            f" {len(migrations)}: upgrade conscience"
        )


@dataclass(frozen=True)
class Statements:
    """The store's statements for a driver that marks a parameter with ``mark``, in a backend
    that stores a time ``t`` (aware, UTC) as ``moment(t)`` and a JSON column's text as
    ``json(text)``."""

    mark: str
    moment: Callable[[datetime], object]
    json: Callable[[str], object] = str  # by default, the text itself

    def _marks(self, n: int) -> str:
        return ", ".join([self.mark] * n)

    @property
    def insert(self) -> str:
        """Insert one judgement; its values in ``COLUMNS`` order."""
        return f"INSERT INTO judgements ({_COLUMN_LIST}) VALUES ({self._marks(len(COLUMNS))})"

    def values(self, data: dict[str, Any]) -> tuple[object, ...]:
        """The values of ``insert`` from a judgement's ``model_dump()``.

        Labels go by value (psycopg would send an Enum by its *name*); JSON is serialized here,
        once, by ``json_text``, so that what one backend refuses the other refuses too.
        """
        row: list[object] = []
        for name in COLUMNS:
            value = data[name]
            if isinstance(value, datetime):
                value = self.moment(to_utc(value))
            elif isinstance(value, Enum):
                value = value.value
            elif name in JSON_COLUMNS and value is not None:
                value = self.json(json_text(data["id"], name, value))
            row.append(value)
        return tuple(row)

    def get(self, judgement_id: str) -> Query:
        return f"{_SELECT} WHERE id = {self.mark}", (judgement_id,)

    def page(self, filters: Filters, limit: int, offset: int) -> Query:
        """``read_page``: newest first, ``id`` breaking ties so that pages never overlap."""
        check_page(limit, offset)
        where, params = self._where(filters)
        sql = f"{_SELECT}{where} ORDER BY created_at DESC, id DESC"
        return f"{sql} LIMIT {self.mark} OFFSET {self.mark}", (*params, limit, offset)

    def count(self, filters: Filters) -> Query:
        where, params = self._where(filters)
        return f"SELECT count(*) FROM judgements{where}", params

    def pairs(self, include_consumed: bool, limit: int | None) -> Query:
        """``read_pairs``: ``is_pair`` in SQL (the rewrite trimmed of ``BLANK``), oldest first."""
        check_page(limit)
        sql = (
            f"{_SELECT} WHERE rewrite IS NOT NULL AND trim(rewrite, {self.mark}) <> ''"
            " AND coalesce(human_label, verdict) = 'unethical'"
        )
        if not include_consumed:
            sql += " AND consumed_by IS NULL"
        sql += " ORDER BY created_at, id"
        if limit is None:
            return sql, (BLANK,)
        return f"{sql} LIMIT {self.mark}", (BLANK, limit)

    def search(self, search: Search, limit: int, offset: int) -> Query:
        """The console's search: newest first, like ``page``."""
        check_page(limit, offset)
        clause, params = where(search, self.mark, self.moment)
        sql = f"{_SELECT}{clause} ORDER BY created_at DESC, id DESC"
        return f"{sql} LIMIT {self.mark} OFFSET {self.mark}", (*params, limit, offset)

    def search_count(self, search: Search) -> Query:
        clause, params = where(search, self.mark, self.moment)
        return f"SELECT count(*) FROM judgements{clause}", params

    def set_human_label(self, judgement_id: str, label: Verdict | None) -> Query:
        """Set the label and return the row as it now is (no row: no such judgement)."""
        value = None if label is None else Verdict(label).value
        sql = f"UPDATE judgements SET human_label = {self.mark} WHERE id = {self.mark}"
        return f"{sql} RETURNING {_COLUMN_LIST}", (value, judgement_id)

    def mark_consumed(self, judgement_ids: Sequence[str], run_id: str) -> list[Query]:
        """The updates, a chunk of ids each, to run in one transaction; none for no ids."""
        ids = list(dict.fromkeys(judgement_ids))
        updates = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            sql = (
                f"UPDATE judgements SET consumed_by = {self.mark}"
                f" WHERE consumed_by IS NULL AND id IN ({self._marks(len(chunk))})"
            )
            updates.append((sql, (run_id, *chunk)))
        return updates

    def purge_older_than(self, cutoff: datetime) -> Query:
        sql = f"DELETE FROM judgements WHERE created_at < {self.mark}"
        return sql, (self.moment(to_utc(cutoff)),)

    def record_version(self, version: int) -> Query:
        """Note that migration ``version`` is applied, and when."""
        sql = f"INSERT INTO schema_version (version, applied_at) VALUES ({self.mark}, {self.mark})"
        return sql, (version, self.moment(datetime.now(UTC)))

    def _where(self, filters: Filters) -> tuple[str, tuple[object, ...]]:
        """The WHERE clause (possibly empty) of ``page``/``count`` and its parameters."""
        clauses: list[str] = []
        params: list[object] = []
        if (verdict := filters.get("verdict")) is not None:
            clauses.append(f"verdict = {self.mark}")
            params.append(Verdict(verdict).value)
        if (framework := filters.get("framework")) is not None:
            clauses.append(f"framework = {self.mark}")
            params.append(framework)
        if (client_key_id := filters.get("client_key_id")) is not None:
            clauses.append(f"client_key_id = {self.mark}")
            params.append(client_key_id)
        if (since := filters.get("since")) is not None:
            clauses.append(f"created_at >= {self.mark}")
            params.append(self.moment(to_utc(since)))
        if (until := filters.get("until")) is not None:
            clauses.append(f"created_at < {self.mark}")
            params.append(self.moment(to_utc(until)))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


class SQLReads(ABC):
    """The reads of a ``JudgementStore``, the same on both backends.

    A backend names its ``Statements`` and its row reader (``UnreadableRow`` for a row that is
    not a judgement) where it subclasses this, ``class S(SQLReads, statements=…, from_row=…)``,
    and implements ``_fetch``: run one query, return its rows.
    """

    _sql: ClassVar[Statements]
    _from_row: ClassVar[Callable[[Sequence[Any]], Judgement]]

    def __init_subclass__(
        cls,
        *,
        statements: Statements,
        from_row: Callable[[Sequence[Any]], Judgement],
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls._sql = statements
        cls._from_row = staticmethod(from_row)

    @abstractmethod
    async def _fetch(self, query: Query) -> list[Sequence[Any]]:
        """Run one query; its rows (a backend without it cannot be instantiated)."""

    async def get(self, judgement_id: str) -> Judgement:
        rows = await self._fetch(self._sql.get(judgement_id))
        if not rows:
            raise NotFound(f"no judgement {judgement_id!r}")
        return self._from_row(rows[0])

    async def read_page(
        self, *, limit: int = 100, offset: int = 0, **filters: Unpack[Filters]
    ) -> RowsRead:
        rows = await self._fetch(self._sql.page(filters, limit, offset))
        return split_rows(rows, self._from_row)

    async def count(self, **filters: Unpack[Filters]) -> int:
        ((count,),) = await self._fetch(self._sql.count(filters))
        return int(count)

    async def read_pairs(
        self, *, include_consumed: bool = False, limit: int | None = None
    ) -> RowsRead:
        rows = await self._fetch(self._sql.pairs(include_consumed, limit))
        return split_rows(rows, self._from_row)

    async def search(self, search: Search, *, limit: int = 100, offset: int = 0) -> RowsRead:
        """The console's search (``search.py``): a page of matches, newest first."""
        rows = await self._fetch(self._sql.search(search, limit, offset))
        return split_rows(rows, self._from_row)

    async def search_count(self, search: Search) -> int:
        ((count,),) = await self._fetch(self._sql.search_count(search))
        return int(count)
