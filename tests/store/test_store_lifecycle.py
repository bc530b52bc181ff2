"""Opening, migrating, sharing, failing: the store's life around its records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from poison import with_options

from conscience.errors import ConfigError, StoreError
from conscience.store import JudgementStore, open_store
from conscience.store import postgres as pg_backend
from conscience.store import sqlite as sqlite_backend
from conscience.store.base import COLUMNS
from conscience.store.postgres import PostgresStore
from conscience.store.schema import RETIRED_COLUMNS
from conscience.store.sqlite import SQLiteStore
from conscience.store.url import redact, scrub

EXTRA = ("CREATE INDEX judgements_model ON judgements (model)",)


def backend_of(store_url: str) -> tuple[type, tuple]:
    if store_url.startswith("postgres"):
        return PostgresStore, pg_backend.MIGRATIONS
    return SQLiteStore, sqlite_backend.MIGRATIONS


def index_names(backend: str, run_sql) -> set[str]:
    if backend == "sqlite":
        rows = run_sql("SELECT name FROM sqlite_master WHERE type = 'index'")
    else:
        rows = run_sql("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return {r[0] for r in rows}


async def test_open_creates_the_schema_and_a_second_open_migrates_it(
    store_url, backend, run_sql, make
):
    cls, migrations = backend_of(store_url)
    first = cls(store_url)
    await first.open()
    j = make()
    await first.add(j)
    await first.close()
    assert run_sql("SELECT max(version) FROM schema_version") == [(len(migrations),)]
    assert {
        "judgements_created_at",
        "judgements_verdict",
        "judgements_framework",
        "judgements_unconsumed_pairs",
    } <= index_names(backend, run_sql)

    again = cls(store_url)  # same code: nothing to do, nothing lost
    await again.open()
    assert await again.get(j.id) == j
    await again.close()
    assert run_sql("SELECT count(*) FROM schema_version") == [(len(migrations),)]

    newer = cls(store_url, migrations=(*migrations, EXTRA))
    await newer.open()
    assert await newer.get(j.id) == j
    await newer.close()
    versions = [r[0] for r in run_sql("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(migrations) + 2))
    assert "judgements_model" in index_names(backend, run_sql)

    older = cls(store_url)  # this code is now behind the database: refuse, do not guess
    with pytest.raises(StoreError, match="newer than this code"):
        await older.open()


async def test_every_field_of_the_record_is_a_column(store, backend, run_sql):
    if backend == "sqlite":
        rows = run_sql("SELECT name FROM pragma_table_info('judgements')")
    else:
        rows = run_sql(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'judgements'"
        )
    assert sorted(r[0] for r in rows) == sorted((*COLUMNS, *RETIRED_COLUMNS))


async def test_a_row_holding_a_retired_column_still_reads(store, make, run_sql):
    """A row an older version wrote with the decomposed verdict's ``parts`` reads as the
    judgement it was, without them; rows written now leave the column empty."""
    old = make()
    await store.add(old)
    run_sql(f"""UPDATE judgements SET parts = '{{"harm": 0.5}}' WHERE id = '{old.id}'""")
    assert await store.get(old.id) == old
    assert old in (await store.read_page(limit=10)).judgements
    new = make()
    await store.add(new)
    assert run_sql(f"SELECT parts FROM judgements WHERE id = '{new.id}'") == [(None,)]


async def test_a_negative_page_is_refused(store):
    with pytest.raises(ValueError):
        await store.read_page(limit=-1)
    with pytest.raises(ValueError):
        await store.read_page(offset=-5)
    with pytest.raises(ValueError):
        await store.read_pairs(limit=-1)


async def test_several_stores_open_one_new_database_at_once(store_url, make):
    stores = [open_store(store_url) for _ in range(4)]
    opened = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
    try:
        assert opened == [None] * 4
        made = [make() for _ in stores]
        await asyncio.gather(*(s.add(j) for s, j in zip(stores, made, strict=True)))
        for s in stores:
            assert await s.count() == 4
            assert await s.get(made[0].id) == made[0]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def test_open_store_picks_the_backend_from_the_url(tmp_path):
    for url in (str(tmp_path / "x.sqlite3"), "postgresql://u@h/d"):
        assert isinstance(open_store(url), JudgementStore)
    assert isinstance(open_store(str(tmp_path / "a.sqlite3")), SQLiteStore)
    store = open_store(f"sqlite://{tmp_path}/b%20c.sqlite3")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "b c.sqlite3"
    assert isinstance(open_store("postgresql://u:p@localhost/db"), PostgresStore)
    assert isinstance(open_store("postgres://u:p@localhost/db"), PostgresStore)
    with pytest.raises(ConfigError, match="absolute path"):
        open_store("sqlite://relative/path.sqlite3")


def test_an_unknown_scheme_is_named_without_the_password():
    with pytest.raises(ConfigError, match="'mysql'") as caught:
        open_store("mysql://root:hunter2-secret@db.example/prod")
    assert "hunter2" not in str(caught.value)


async def test_a_refused_postgres_connection_is_a_store_error_without_the_password():
    # Port 1 on loopback refuses at once: no server needed for this one.
    store = open_store("postgresql://alice:S3cr%40t-pw@127.0.0.1:1/db")
    with pytest.raises(StoreError) as caught:
        await store.open()
    message = str(caught.value)
    assert "S3cr" not in message and "S3cr%40t" not in message
    assert "127.0.0.1" in message and "***" in message
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:Hush%2Fhush@[::1/db",  # libpq quotes a malformed URI in its error
        "postgresql://u:Hush-hush@127.0.0.1:notaport/db",
        "postgres://u@127.0.0.1:1/db?password=Hush-hush&bogus=1",
        "postgresql://127.0.0.1:1/db?sslmode=nonsense&password=Hush%2Dhush",
    ],
)
async def test_a_malformed_postgres_url_is_a_store_error_without_the_password(url):
    with pytest.raises(StoreError) as caught:
        await open_store(url).open()
    assert "Hush" not in str(caught.value)
    assert "***" in str(caught.value)


def test_redact_and_scrub_hide_every_spelling_of_the_password():
    url = "postgresql://bob:p%40ss@db:5432/x?password=second&sslmode=require"
    assert redact(url) == "postgresql://bob:***@db:5432/x?password=***&sslmode=require"
    message = "auth failed for p@ss, p%40ss and second"
    assert scrub(message, url) == "auth failed for ***, *** and ***"
    path = "/var/lib/conscience/judgements.sqlite3"
    assert redact(path) == path


@pytest.mark.postgres
async def test_a_wrong_postgres_password_is_a_store_error_without_it(postgres_url):
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_url)
    wrong = postgres_url.replace(f":{parts.password}@", ":Wrong-Pa55word@", 1)
    with pytest.raises(StoreError, match="password authentication failed") as caught:
        await open_store(wrong).open()
    assert "Wrong-Pa55word" not in str(caught.value)


@pytest.mark.postgres
async def test_postgres_turns_synchronous_commit_back_on(store_url, backend):
    if backend != "postgres":
        pytest.skip("a PostgreSQL setting")
    store = PostgresStore(with_options(store_url, "synchronous_commit=off"), max_size=2)
    await store.open()
    try:
        async with store._connection() as conn:
            cur = await conn.execute("SHOW synchronous_commit")
            assert await cur.fetchone() == ("on",)
    finally:
        await store.close()


async def test_sqlite_is_wal_with_full_sync(store, backend):
    if backend != "sqlite":
        pytest.skip("SQLite pragmas")

    def pragmas(conn):
        return [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous")]

    assert await store._call(pragmas) == ["wal", 2]  # 2 = FULL
    assert Path(store.path).parent.is_dir()


async def test_an_unopenable_sqlite_path_is_a_store_error(tmp_path):
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(StoreError, match=r"dir\.sqlite3"):
        await open_store(str(tmp_path / "dir.sqlite3")).open()
