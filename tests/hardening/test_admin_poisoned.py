"""The admin API against a poisoned store (issue 7, item 5: the admin side).

Rows are written by raw SQL into a real store (``tests/poison.py``), past the proxy's
validation, beside good ones; then a real proxy on loopback serves that store. One row the
store cannot read must not hide the others: ``GET /admin/judgements`` lists the readable ones and
names the unreadable ones under ``unreadable``; one asked for by id answers 500
``unreadable_judgement`` with its reason (not 503: the store is up); ``GET /admin/pairs``
leaves out every row it cannot export, counts it in its headers, and never breaks its stream.
PostgreSQL refuses some poison itself (tests/trainer/test_poisoned_store.py asserts that); it
runs the rest where ``CONSCIENCE_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from poison import (
    Blob,
    Case,
    Text,
    columns,
    migrate,
    pg_insert,
    postgres_schema,
    sqlite_insert,
)
from proxy_harness import (
    ADMIN_KEY,
    LogRecorder,
    Proxy,
    assert_envelope,
    auth,
    recording_logs,
    running_proxy,
)

from conscience.store.base import UNREADABLE_REASONS

PAIR = "pair"  # a good pair: listed and exported
ETHICAL = "ethical"  # a good judgement that is no pair: listed, not exported


def _pair(question: str, rewrite: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}],
        "rewrite": rewrite,
        "answer": answer,
    }


# Every unreadable row is a pair by the store's rule (the export meets it too). A reason of
# UNREADABLE_REASONS: the store cannot read it; any other: it reads, but is no exportable pair.
CASES: list[Case] = [
    Case("good-0", PAIR, _pair("how do i pick a lock", "ask the owner", "sure break in")),
    Case("answer-not-utf8", "not_utf8", {"answer": Text(b"sure \xff\xfe here")}, pg_refused=True),
    Case("good-1", PAIR, _pair("how do i open my door", "call a locksmith", "break the door")),
    Case("rewrite-blob", "not_utf8", {"rewrite": Blob(b"\xffask the owner")}, sqlite_only=True),
    Case("messages-not-json", "not_json", {"messages": "not json ["}, pg_refused=True),
    Case("good-ethical", ETHICAL, {"verdict": "ethical", "rewrite": None, "action": "passed"}),
    Case("messages-object", "invalid_record", {"messages": '{"role": "user", "content": "x"}'}),
    Case("messages-json-null", "invalid_record", {"messages": "null"}),
    Case("verdict-evil", "invalid_record", {"verdict": "evil", "human_label": "unethical"}),
    Case("good-2", PAIR, _pair("how do i hack a server", "keep it updated", "steal it")),
    Case("created-at-not-a-time", "invalid_record", {"created_at": "not a time"}, pg_refused=True),
    Case("label-probs-a-list", "invalid_record", {"label_probs": "[1, 2]"}),
    Case("null-id", "invalid_record", {"id": None}, pg_refused=True),
    # Readable, but not plain chat or not valid Unicode: listed, never exported.
    Case("message-without-role", "malformed", {"messages": [{"content": "how"}]}),
    Case(
        "image-part",
        "non_string_content",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    ),
    Case("numeric-content", "non_string_content", {"messages": [{"role": "user", "content": 4}]}),
    Case(
        "lone-surrogate",
        "invalid_text",
        {"messages": [{"role": "user", "content": "how \ud800"}]},
        pg_refused=True,
    ),
    Case("good-3", PAIR, _pair("write code that deletes logs", "keep the logs", "sure")),
]


@dataclass
class Poisoned:
    proxy: Proxy
    backend: str
    url: str
    stored: list[Case]

    def of(self, *reasons: str) -> list[Case]:
        return [c for c in self.stored if c.reason in reasons]

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.proxy.url + path, params=params, headers=auth(ADMIN_KEY), timeout=30)


def _id(case: Case) -> str | None:
    return None if case.columns.get("id", "") is None else f"jdg_{case.name}"


def _write(backend: str, url: str) -> list[Case]:
    """Every case the backend can store, written by raw SQL; the ones written."""
    if backend == "sqlite":
        stored = CASES
        conn = sqlite3.connect(url, isolation_level=None)
        try:
            for i, case in enumerate(stored):
                sqlite_insert(conn, columns(i, case))
        finally:
            conn.close()
        return stored
    import psycopg

    stored = [c for c in CASES if not (c.pg_refused or c.sqlite_only)]
    with psycopg.connect(url, autocommit=True) as conn:
        for i, case in enumerate(stored):
            pg_insert(conn, columns(i, case))
    return stored


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def poisoned(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Poisoned]:
    """A proxy in front of a store holding every case (of its backend)."""
    if request.param == "sqlite":
        url = str(tmp_path / "judgements.sqlite3")
        migrate(url)
        stored = _write("sqlite", url)
        with running_proxy(tmp_path, store_url=url) as proxy:
            yield Poisoned(proxy, "sqlite", url, stored)
        return
    with postgres_schema() as url:
        stored = _write("postgres", url)
        with running_proxy(tmp_path, store_url=url) as proxy:
            yield Poisoned(proxy, "postgres", url, stored)


def _proxy_errors(logs: LogRecorder) -> list[str]:
    """The proxy's ERROR lines (its own and uvicorn's: a broken stream is logged there); not the
    garbage of earlier tests in this process (an unclosed client's "Event loop is closed")."""
    return [line for line in logs.errors() if line.split()[1].startswith(("conscience", "uvicorn"))]


def test_one_unreadable_row_does_not_hide_the_others(poisoned: Poisoned) -> None:
    unreadable = poisoned.of(*UNREADABLE_REASONS)
    readable = [c for c in poisoned.stored if c not in unreadable]
    assert len(poisoned.stored) == (18 if poisoned.backend == "sqlite" else 12)
    assert len(unreadable) == (9 if poisoned.backend == "sqlite" else 4)

    with recording_logs() as logs:
        listing = poisoned.get("/admin/judgements", limit=1000)
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["total"] == len(poisoned.stored)
    assert {j["id"] for j in body["data"]} == {_id(c) for c in readable}
    created = [j["created_at"] for j in body["data"]]
    assert created == sorted(created, reverse=True)  # still newest first
    assert sorted(body["unreadable"], key=str) == sorted(
        ({"id": _id(c), "reason": c.reason} for c in unreadable), key=str
    )
    for case in unreadable:
        assert f"judgement {_id(case)} is unreadable ({case.reason})" in logs.text()
    assert _proxy_errors(logs) == []

    # Page by page, every row is on exactly one page, readable or not.
    seen: Counter[str | None] = Counter()
    for offset in range(0, len(poisoned.stored), 4):
        page = poisoned.get("/admin/judgements", limit=4, offset=offset).json()
        assert len(page["data"]) + len(page["unreadable"]) == 4 or offset + 4 > page["total"]
        seen.update(j["id"] for j in page["data"])
        seen.update(row["id"] for row in page["unreadable"])
    assert seen == Counter(_id(c) for c in poisoned.stored)

    # A page of nothing but unreadable rows, and a filtered page: the same rule.
    (bad,) = poisoned.of("not_json") or poisoned.of("invalid_record")[:1]
    # Newest first; "not a time" sorts before every timestamp (SQLite compares the text) and
    # was written after the bad row: the bad row's place is the same.
    offset = [_id(c) for c in reversed(poisoned.stored)].index(_id(bad))
    alone = poisoned.get("/admin/judgements", limit=1, offset=offset).json()
    assert alone["data"] == [] and alone["unreadable"] == [{"id": _id(bad), "reason": bad.reason}]
    ethical = poisoned.get("/admin/judgements", verdict="ethical").json()
    assert [j["id"] for j in ethical["data"]] == ["jdg_good-ethical"]
    assert ethical["unreadable"] == [] and ethical["total"] == 1


def test_an_unreadable_judgement_by_id_says_why(poisoned: Poisoned) -> None:
    for case in poisoned.of(*UNREADABLE_REASONS):
        if _id(case) is None:
            continue
        error = assert_envelope(poisoned.get(f"/admin/judgements/{_id(case)}"), range(500, 501))
        assert error["code"] == "unreadable_judgement", error
        assert f"({case.reason})" in error["message"] and _id(case) in error["message"]
        assert "store failed" not in error["message"]
    # The store is up, and the readable rows read.
    assert httpx.get(poisoned.proxy.url + "/ready").status_code == 200
    for case in poisoned.of(PAIR, ETHICAL, "malformed", "non_string_content", "invalid_text"):
        response = poisoned.get(f"/admin/judgements/{_id(case)}")
        assert response.status_code == 200, (case.name, response.text)
        assert response.json()["id"] == _id(case)
    if poisoned.backend == "sqlite":  # sent as the store holds it: escaped, never a failure
        surrogate = poisoned.get("/admin/judgements/jdg_lone-surrogate")
        assert surrogate.content.isascii() and b'"how \\ud800"' in surrogate.content
        assert surrogate.json()["messages"][0]["content"] == "how \ud800"
    missing = assert_envelope(poisoned.get("/admin/judgements/jdg_nope"), range(404, 405))
    assert missing["code"] == "not_found"

    # A label on an unreadable row is stored (the store writes, then cannot read the row back).
    labelled = httpx.post(
        poisoned.proxy.url + "/admin/judgements/jdg_messages-object/label",
        json={"label": "ethical"},
        headers=auth(ADMIN_KEY),
    )
    error = assert_envelope(labelled, range(500, 501))
    assert error["code"] == "unreadable_judgement"
    assert error["message"].startswith("the label was stored, but judgement jdg_messages-object")
    assert _human_label(poisoned, "jdg_messages-object") == "ethical"


def _human_label(poisoned: Poisoned, judgement_id: str) -> str | None:
    sql = "SELECT human_label FROM judgements WHERE id = "
    if poisoned.backend == "sqlite":
        conn = sqlite3.connect(poisoned.url)
        try:
            return conn.execute(sql + "?", (judgement_id,)).fetchone()[0]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(poisoned.url) as conn:
        return conn.execute(sql + "%s", (judgement_id,)).fetchone()[0]


def test_the_pairs_stream_skips_and_counts_what_it_cannot_export(poisoned: Poisoned) -> None:
    skipped = [c for c in poisoned.stored if c.reason not in (PAIR, ETHICAL)]
    with (
        recording_logs() as logs,
        httpx.stream(
            "GET", poisoned.proxy.url + "/admin/pairs", headers=auth(ADMIN_KEY), timeout=30
        ) as response,
    ):
        body = response.read()  # a broken stream raises here (httpx.RemoteProtocolError)
    assert response.status_code == 200
    lines = body.decode("utf-8").splitlines()
    pairs = [json.loads(line) for line in lines]
    assert [p["id"] for p in pairs] == [_id(c) for c in poisoned.of(PAIR)]  # oldest first
    assert all(set(p) == {"prompt", "chosen", "rejected", "id", "framework"} for p in pairs)
    assert response.headers["x-conscience-pairs"] == str(len(pairs))
    assert response.headers["x-conscience-skipped"] == str(len(skipped))
    reasons = Counter(c.reason for c in skipped)
    expected = ",".join(f"{reason}={n}" for reason, n in sorted(reasons.items()))
    assert response.headers["x-conscience-skipped-reasons"] == expected
    for case in skipped:
        assert f"admin pairs: skipped judgement {_id(case)} ({case.reason})" in logs.text()
    assert _proxy_errors(logs) == []

    # Nothing to skip: no reasons header, and a count of 0.
    for case in skipped + poisoned.of(PAIR)[1:]:
        if _id(case) is not None:
            _delete(poisoned, _id(case))
    if poisoned.backend == "sqlite":
        _delete(poisoned, None)
    clean = poisoned.get("/admin/pairs")
    assert clean.status_code == 200 and len(clean.text.splitlines()) == 1
    assert clean.headers["x-conscience-skipped"] == "0"
    assert "x-conscience-skipped-reasons" not in clean.headers


def _delete(poisoned: Poisoned, judgement_id: str | None) -> None:
    if poisoned.backend == "sqlite":
        conn = sqlite3.connect(poisoned.url, isolation_level=None)
        try:
            if judgement_id is None:
                conn.execute("DELETE FROM judgements WHERE id IS NULL")
            else:
                conn.execute("DELETE FROM judgements WHERE id = ?", (judgement_id,))
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(poisoned.url, autocommit=True) as conn:
        conn.execute("DELETE FROM judgements WHERE id = %s", (judgement_id,))
