"""The SQLite backend: the default store, one file on the proxy's disk.

Durability: WAL journal with ``synchronous=FULL``, so a commit is on disk (the WAL fsync'd)
before ``add`` returns and survives a SIGKILL or a power cut. A busy timeout lets several
processes share the file; the migration runs under ``BEGIN IMMEDIATE`` so that two openers
take turns.

The loop never waits on the disk: one dedicated thread owns the connection and runs every call
in order. Concurrent ``add`` calls are committed together (group commit): while one commit is
being fsync'd the next ones queue, and the thread writes all of them in one transaction and one
fsync. Each caller is answered only after the commit that holds its row.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from conscience.errors import NotFound, StoreError
from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.store.base import COLUMNS, JSON_COLUMNS, UnreadableRow, to_utc
from conscience.store.schema import SQLITE_MIGRATIONS, SQLITE_VERSION_TABLE
from conscience.store.sql import CURRENT_VERSION, Query, SQLReads, Statements, check_version
from conscience.store.url import sqlite_path

__all__ = ["MIGRATIONS", "SQLiteStore"]

MIGRATIONS = SQLITE_MIGRATIONS

T = TypeVar("T")


def _moment(moment: datetime) -> str:
    return to_utc(moment).isoformat(timespec="microseconds")


_SQL = Statements(mark="?", moment=_moment)


def _text(raw: bytes) -> str | bytes:
    """The connection's ``text_factory``: text that is not UTF-8 comes back as its bytes.

    SQLite stores any bytes it is given as TEXT; the default factory would fail the whole query
    on one such row. ``_from_row`` refuses the row alone.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _from_row(row: Sequence[Any]) -> Judgement:
    """The judgement in a row, or ``UnreadableRow`` saying why it is not one."""
    data = dict(zip(COLUMNS, row, strict=True))
    row_id = data.get("id")
    if isinstance(row_id, bytes):
        row_id = row_id.decode("utf-8", errors="backslashreplace")
    for name, value in data.items():
        if isinstance(value, bytes):  # not UTF-8 text, or a BLOB
            try:
                data[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise UnreadableRow(row_id, "not_utf8", f"{name} is not UTF-8") from None
    for name in JSON_COLUMNS:
        if data[name] is not None:
            try:
                data[name] = json.loads(data[name])
            except (TypeError, ValueError) as exc:
                raise UnreadableRow(row_id, "not_json", f"{name}: {exc}") from None
    try:
        data["created_at"] = datetime.fromisoformat(data["created_at"]).astimezone(UTC)
        return Judgement.model_validate(data)
    except (TypeError, ValueError, ValidationError) as exc:  # ValidationError is a ValueError
        raise UnreadableRow(row_id, "invalid_record", str(exc)) from None


class SQLiteStore(SQLReads, statements=_SQL, from_row=_from_row):
    """A ``JudgementStore`` in one SQLite file (``sqlite:///abs/path`` or a bare path)."""

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_s: float = 30.0,
        migrations: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.path = sqlite_path(url)
        self._busy_timeout_s = busy_timeout_s
        self._migrations = MIGRATIONS if migrations is None else migrations
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only on the executor's thread
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._pending_lock = threading.Lock()
        self._flush_queued = False

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the store's thread; driver errors become StoreError."""
        if self._executor is None:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, fn, args)

    def _guarded(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._conn is None:
            raise StoreError("the store is not open")
        try:
            return fn(self._conn, *args)
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.rollback()
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conscience-sqlite")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None
            )  # autocommit: every transaction below is explicit
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        try:
            mode = _enable_wal(conn, self._busy_timeout_s)
            if mode != "wal":
                raise StoreError(f"SQLite store {self.path}: cannot use WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            # Purged conversations are overwritten on disk, not just unlinked from the b-tree.
            conn.execute("PRAGMA secure_delete = ON")
            conn.text_factory = _text
            _migrate(conn, self._migrations)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        # Queued after every pending call and group commit, so none is cut short.
        await loop.run_in_executor(executor, self._disconnect)
        executor.shutdown(wait=False)  # its last job is done: the thread exits idle

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> bool:
        try:
            return await self._call(lambda c: c.execute("SELECT 1").fetchone() == (1,))
        except StoreError:
            return False

    # -- writes --------------------------------------------------------------------------------

    async def add(self, judgement: Judgement) -> None:
        if self._executor is None:
            raise StoreError("the store is not open")
        row = _SQL.values(judgement.model_dump())
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._pending_lock:
            self._pending.append((row, done))
            start, self._flush_queued = not self._flush_queued, True
        if start:
            self._executor.submit(self._flush, loop)
        await done

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit every queued ``add`` in one transaction, then answer each caller."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._flush_queued = False
        errors: list[BaseException | None] = [None] * len(batch)
        try:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is not open")
            conn.execute("BEGIN IMMEDIATE")
            for i, (row, _) in enumerate(batch):
                try:
                    conn.execute(_SQL.insert, row)
                except sqlite3.IntegrityError as exc:
                    # A failed INSERT undoes only itself; the others stay in the transaction.
                    errors[i] = StoreError(f"judgement {row[0]} not stored: {exc}")
            conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.rollback()
            failure = exc if isinstance(exc, StoreError) else StoreError(f"SQLite store: {exc}")
            errors = [failure] * len(batch)
        for (_, done), error in zip(batch, errors, strict=True):
            loop.call_soon_threadsafe(_settle, done, error)

    async def add_many(self, judgements: list[Judgement]) -> None:
        rows = [_SQL.values(j.model_dump()) for j in judgements]
        if rows:
            await self._call(_in_transaction, lambda c: c.executemany(_SQL.insert, rows))

    async def set_human_label(self, judgement_id: str, label: Verdict | None) -> Judgement:
        query = _SQL.set_human_label(judgement_id, label)
        row = await self._call(_in_transaction, lambda c: c.execute(*query).fetchone())
        if row is None:
            raise NotFound(f"no judgement {judgement_id!r}")
        return _from_row(row)

    async def mark_consumed(self, judgement_ids: list[str], run_id: str) -> int:
        updates = _SQL.mark_consumed(judgement_ids, run_id)

        def update(conn: sqlite3.Connection) -> int:
            return sum(conn.execute(*query).rowcount for query in updates)

        if not updates:
            return 0
        return await self._call(_in_transaction, update)

    async def purge_older_than(self, cutoff: datetime) -> int:
        query = _SQL.purge_older_than(cutoff)

        def purge(conn: sqlite3.Connection) -> int:
            deleted = _in_transaction(conn, lambda c: c.execute(*query).rowcount)
            # Also drop the old pages from the WAL, where the deleted text would otherwise linger.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return deleted

        return await self._call(purge)

    # -- reads: SQLReads has them, this runs their queries -------------------------------------

    async def _fetch(self, query: Query) -> list[Any]:
        return await self._call(lambda c: c.execute(*query).fetchall())


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # the caller was cancelled; its row is committed all the same
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` inside BEGIN IMMEDIATE … COMMIT; rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.rollback()
        raise
    conn.execute("COMMIT")
    return result


def _enable_wal(conn: sqlite3.Connection, timeout_s: float) -> str:
    """Switch to WAL; the journal mode in force afterwards.

    The switch needs a lock that SQLite does not wait for with the busy handler: two processes
    opening a new file at once can get SQLITE_BUSY at once. So retry until the busy timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            busy = (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]]) -> None:
    """Bring the schema to ``len(migrations)``; the write lock makes concurrent openers wait."""

    def apply(c: sqlite3.Connection) -> None:
        c.execute(SQLITE_VERSION_TABLE)
        current = c.execute(CURRENT_VERSION).fetchone()[0]
        check_version(current, migrations)
        for version in range(current + 1, len(migrations) + 1):
            for statement in migrations[version - 1]:
                c.execute(statement)
            c.execute(*_SQL.record_version(version))

    _in_transaction(conn, apply)
