"""The store's schema, as migrations: SQLite's and PostgreSQL's side by side.

Each migration is a list of statements applied in one transaction; a database's version is the
number of migrations applied, recorded one row per version in ``schema_version`` (created before
the first migration, by ``*_VERSION_TABLE``). Migrations
are append-only: never edit or reorder one that has shipped, add a new one. A database newer than
the code is refused at open (old code must not guess at columns it does not know).

The two lists must stay equivalent: every field of ``Judgement`` is a column, with the same
name. A column whose field was retired stays (``RETIRED_COLUMNS``): no migration drops it, the
code neither writes nor reads it, and a database written before still opens and reads. SQLite
keeps times as fixed-width ISO 8601 text in UTC (it sorts as text) and JSON as text; PostgreSQL
uses ``timestamptz`` and ``jsonb``. Labels are plain text checked by the enum when a row is
read, not by a CHECK constraint, so that a new label needs no table rebuild.
"""

from __future__ import annotations

__all__ = [
    "POSTGRES_MIGRATIONS",
    "POSTGRES_VERSION_TABLE",
    "RETIRED_COLUMNS",
    "SQLITE_MIGRATIONS",
    "SQLITE_VERSION_TABLE",
]

SQLITE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version"
    " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
)

# Columns of fields that are gone: kept in the table (old rows keep them), never written or read.
# ``parts``: the decomposed verdict's P(yes) per question (retired; docs/decisions.md, "Retired
# judge methods").
RETIRED_COLUMNS: tuple[str, ...] = ("parts",)

POSTGRES_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version"
    " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
)

SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE judgements (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,  -- ISO 8601 in UTC, fixed width: sorts as text
            request_id TEXT,
            model TEXT,
            judge_model TEXT,
            framework TEXT NOT NULL,
            layout TEXT NOT NULL,
            messages TEXT NOT NULL,  -- JSON
            answer TEXT NOT NULL,
            reasoning TEXT,
            verdict TEXT NOT NULL,
            confidence REAL,
            label_probs TEXT,  -- JSON
            rewrite TEXT,
            action TEXT,
            review_ms REAL,
            rewrite_ms REAL,
            upstream_ms REAL,
            human_label TEXT,
            consumed_by TEXT
        )""",
        "CREATE INDEX judgements_created_at ON judgements (created_at, id)",
        "CREATE INDEX judgements_verdict ON judgements (verdict, created_at)",
        "CREATE INDEX judgements_framework ON judgements (framework, created_at)",
        """CREATE INDEX judgements_unconsumed_pairs ON judgements (created_at, id)
            WHERE consumed_by IS NULL AND rewrite IS NOT NULL""",
    ),
    # 2: the screen's rules (conscience/screen.py), JSON; NULL for rows before it.
    ("ALTER TABLE judgements ADD COLUMN screen TEXT",),
    # 3: the decomposed verdict's three probabilities, JSON; retired (RETIRED_COLUMNS).
    ("ALTER TABLE judgements ADD COLUMN parts TEXT",),
    # 4: a second opinion's P(unethical) per layout (conscience/cascade.py), JSON.
    ("ALTER TABLE judgements ADD COLUMN readings TEXT",),
    # 5: which client key asked (its id, never the key) and whether only a review was asked
    # (POST /v1/conscience/review); rows before it: no key id, not review-only.
    (
        "ALTER TABLE judgements ADD COLUMN client_key_id TEXT",
        "ALTER TABLE judgements ADD COLUMN review_only INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX judgements_client_key ON judgements (client_key_id, created_at)",
    ),
    # 6: the request's W3C trace id, to find its trace; rows before it: none.
    ("ALTER TABLE judgements ADD COLUMN trace_id TEXT",),
)

POSTGRES_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE judgements (
            id text PRIMARY KEY,
            created_at timestamptz NOT NULL,
            request_id text,
            model text,
            judge_model text,
            framework text NOT NULL,
            layout text NOT NULL,
            messages jsonb NOT NULL,
            answer text NOT NULL,
            reasoning text,
            verdict text NOT NULL,
            confidence double precision,
            label_probs jsonb,
            rewrite text,
            action text,
            review_ms double precision,
            rewrite_ms double precision,
            upstream_ms double precision,
            human_label text,
            consumed_by text
        )""",
        "CREATE INDEX judgements_created_at ON judgements (created_at, id)",
        "CREATE INDEX judgements_verdict ON judgements (verdict, created_at)",
        "CREATE INDEX judgements_framework ON judgements (framework, created_at)",
        """CREATE INDEX judgements_unconsumed_pairs ON judgements (created_at, id)
            WHERE consumed_by IS NULL AND rewrite IS NOT NULL""",
    ),
    # 2: the screen's rules (conscience/screen.py), JSON; NULL for rows before it.
    ("ALTER TABLE judgements ADD COLUMN screen jsonb",),
    # 3: the decomposed verdict's three probabilities, JSON; retired (RETIRED_COLUMNS).
    ("ALTER TABLE judgements ADD COLUMN parts jsonb",),
    # 4: a second opinion's P(unethical) per layout (conscience/cascade.py), JSON.
    ("ALTER TABLE judgements ADD COLUMN readings jsonb",),
    # 5: which client key asked (its id, never the key) and whether only a review was asked
    # (POST /v1/conscience/review); rows before it: no key id, not review-only.
    (
        "ALTER TABLE judgements ADD COLUMN client_key_id text",
        "ALTER TABLE judgements ADD COLUMN review_only boolean NOT NULL DEFAULT false",
        "CREATE INDEX judgements_client_key ON judgements (client_key_id, created_at)",
    ),
    # 6: the request's W3C trace id, to find its trace; rows before it: none.
    ("ALTER TABLE judgements ADD COLUMN trace_id text",),
)
