"""The console's search over judgements: more filters than the admin list's ``Filters``.

``Search`` is what the operator's console filters on (every field optional, all that are given
must hold); ``where`` writes it as one WHERE clause that both backends run, in the driver's
parameter mark. The text search is case-insensitive, a substring of the conversation (its JSON
text), the answer or the rewrite, with ``%`` and ``_`` taken literally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from conscience.labels import Action, Verdict
from conscience.store.base import to_utc

__all__ = ["Search", "where"]


@dataclass(frozen=True)
class Search:
    verdict: Verdict | None = None  # the model's verdict, not the human label
    action: Action | None = None
    framework: str | None = None
    model: str | None = None  # the generating model
    client_key_id: str | None = None  # the client key's id (server/auth.key_id)
    review_only: bool | None = None  # True: only POST /v1/conscience/review's; False: none of them
    labelled: bool | None = None  # True: with a human label; False: without one
    since: datetime | None = None  # created_at >= since (naive: UTC)
    until: datetime | None = None  # created_at < until
    text: str | None = None  # a substring of the conversation, the answer or the rewrite


def _like(needle: str) -> str:
    """A LIKE pattern that matches ``needle`` anywhere, its wildcards taken literally."""
    escaped = needle.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def where(
    search: Search, mark: str, moment: Callable[[datetime], object]
) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause (possibly empty) and its parameters."""
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (
        ("verdict", search.verdict and Verdict(search.verdict).value),
        ("action", search.action and Action(search.action).value),
        ("framework", search.framework),
        ("model", search.model),
        ("client_key_id", search.client_key_id),
    ):
        if value:
            clauses.append(f"{column} = {mark}")
            params.append(value)
    if search.review_only is not None:  # a boolean in PostgreSQL, 0 or 1 in SQLite
        clauses.append("review_only" if search.review_only else "NOT review_only")
    if search.labelled is not None:
        clauses.append(f"human_label IS {'NOT ' if search.labelled else ''}NULL")
    if search.since is not None:
        clauses.append(f"created_at >= {mark}")
        params.append(moment(to_utc(search.since)))
    if search.until is not None:
        clauses.append(f"created_at < {mark}")
        params.append(moment(to_utc(search.until)))
    if search.text:
        pattern = _like(search.text)
        fields = ("CAST(messages AS TEXT)", "answer", "coalesce(rewrite, '')")
        clauses.append(
            "(" + " OR ".join(f"lower({f}) LIKE {mark} ESCAPE '\\'" for f in fields) + ")"
        )
        params.extend([pattern] * len(fields))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)
