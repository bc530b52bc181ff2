"""The judgement store's contract, shared by its SQLite and PostgreSQL backends.

The proxy writes one judgement per reviewed completion and must not acknowledge a response
whose judgement could still be lost, so ``add`` returns only once the row is committed with the
backend's normal durability. The trainer reads *preference pairs* from here and marks them
consumed by a training run, so that the nightly run never learns from the same pair twice.

A *pair* is a judgement whose effective verdict (the human label if set, else the model's) is
``unethical`` and whose rewrite is not blank: (prompt, chosen = rewrite, rejected = answer).
The rule is written once in SQL (``sql.py``, for both backends) and once here in Python
(``is_pair``), and the tests hold the two to agree.

A row written behind the store's back (by hand, by a bug, by someone with access to the database)
may not be a judgement this code can read: ``get`` raises ``UnreadableRow`` for it, and the reads
of many rows (``read_page``, ``read_pairs``) hand it back apart from the readable ones, so that
one such row never hides the others from the admin list, the nightly run or an export.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypedDict, Unpack, runtime_checkable

from conscience.errors import StoreError
from conscience.judgement import Judgement
from conscience.labels import Verdict

__all__ = [
    "BLANK",
    "COLUMNS",
    "JSON_COLUMNS",
    "UNREADABLE_REASONS",
    "Filters",
    "JudgementStore",
    "RowsRead",
    "UnreadableRow",
    "is_pair",
    "json_text",
    "split_rows",
    "to_utc",
]

# The characters that do not make a rewrite non-empty (trimmed the same way in SQL).
BLANK = " \t\r\n"

# Every field of the record is a column, in the record's order.
COLUMNS: tuple[str, ...] = tuple(Judgement.model_fields)

# The columns that hold JSON (text in SQLite, jsonb in PostgreSQL).
JSON_COLUMNS = frozenset({"messages", "label_probs", "screen", "readings"})


UNREADABLE_REASONS = (
    "not_utf8",  # a text column whose bytes are not UTF-8 (SQLite stores whatever it is given)
    "not_json",  # messages or label_probs that do not parse as JSON
    "invalid_record",  # parsed, but not a judgement: a label outside the enum, a wrong type ...
)


class UnreadableRow(StoreError):
    """A stored row that is not a judgement this code can read; ``reason`` is one of
    :data:`UNREADABLE_REASONS`, ``judgement_id`` the row's id as far as it can be told."""

    def __init__(self, judgement_id: str | None, reason: str, detail: str) -> None:
        super().__init__(
            f"judgement {judgement_id} is stored in a form we cannot read ({reason}): {detail}"
        )
        self.judgement_id = judgement_id
        self.reason = reason


@dataclass(frozen=True)
class RowsRead:
    """What a read found: the judgements it could read, and the rows it could not."""

    judgements: list[Judgement]
    unreadable: list[UnreadableRow]


class Filters(TypedDict, total=False):
    """What ``read_page`` and ``count`` select on: a row matches when every filter given holds.

    Naive datetimes are read as UTC.
    """

    verdict: Verdict | None  # the model's verdict, not the human label
    framework: str | None
    client_key_id: str | None  # the client key's id (server/auth.key_id)
    since: datetime | None  # created_at >= since
    until: datetime | None  # created_at < until


def is_pair(judgement: Judgement) -> bool:
    """Whether a judgement is a preference pair (consumed or not)."""
    return (
        judgement.effective_verdict is Verdict.UNETHICAL
        and judgement.rewrite is not None
        and judgement.rewrite.strip(BLANK) != ""
    )


def json_text(judgement_id: str, field: str, value: object) -> str:
    """A field as JSON text, or ``StoreError`` naming the judgement (bytes, sets, NaN: not JSON).

    Both backends serialize here, so that what one refuses the other refuses too.
    """
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"judgement {judgement_id}: {field} is not JSON: {exc}") from exc


def to_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already (the project's convention)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@runtime_checkable
class JudgementStore(Protocol):
    """Where judgements live. Every method may raise ``StoreError``; none blocks the event loop."""

    async def open(self) -> None:
        """Connect, then create the schema or migrate it to this code's version."""
        ...

    async def close(self) -> None: ...

    async def add(self, judgement: Judgement) -> None:
        """Store one judgement; it is committed (durable) when this returns."""
        ...

    async def add_many(self, judgements: list[Judgement]) -> None:
        """Store several judgements in one transaction: all or none."""
        ...

    async def get(self, judgement_id: str) -> Judgement:
        """The judgement with this id; ``NotFound`` if there is none, ``UnreadableRow`` if it
        cannot be read."""
        ...

    async def read_page(
        self, *, limit: int = 100, offset: int = 0, **filters: Unpack[Filters]
    ) -> RowsRead:
        """A page of the judgements matching ``filters``, newest first; each row of the page
        that cannot be read is returned apart."""
        ...

    async def count(self, **filters: Unpack[Filters]) -> int:
        """How many judgements match ``filters``, readable or not."""
        ...

    async def set_human_label(self, judgement_id: str, label: Verdict | None) -> Judgement:
        """Set (or, with None, clear) the human label; returns the updated judgement."""
        ...

    async def read_pairs(
        self, *, include_consumed: bool = False, limit: int | None = None
    ) -> RowsRead:
        """Preference pairs, oldest first, only the unconsumed ones unless asked; each row that
        the pair rule selects but that cannot be read is returned apart."""
        ...

    async def mark_consumed(self, judgement_ids: list[str], run_id: str) -> int:
        """Mark the still-unconsumed ones among these ids as used by ``run_id``; how many."""
        ...

    async def purge_older_than(self, cutoff: datetime) -> int:
        """Delete every judgement created before ``cutoff`` (retention); how many."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers now; never raises."""
        ...


def split_rows(
    rows: Iterable[Sequence[object]], from_row: Callable[[Sequence[object]], Judgement]
) -> RowsRead:
    """Read each row with ``from_row``; an ``UnreadableRow`` is kept apart, not raised."""
    judgements, unreadable = [], []
    for row in rows:
        try:
            judgements.append(from_row(row))
        except UnreadableRow as exc:
            unreadable.append(exc)
    return RowsRead(judgements, unreadable)
