"""Retention against the real SQLite store: ``retention_days`` purges old conversations at start
and then periodically, ``POST /admin/purge`` on demand, and the purged text leaves the disk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from proxy_harness import (
    ADMIN_KEY,
    CLIENT_KEY,
    assert_envelope,
    auth,
    recording_logs,
    running_proxy,
)

import conscience.server.retention
from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.store import open_store

OLD_SECRET = "OLD-CONVERSATION-5b7e1a"


def _judgement(age_days: float, text: str = "hello") -> Judgement:
    return Judgement(
        created_at=datetime.now(UTC) - timedelta(days=age_days),
        framework="three-laws",
        layout="paper",
        messages=[{"role": "user", "content": text}],
        answer=text,
        verdict=Verdict.ETHICAL,
    )


def _add(path: Path, *judgements: Judgement) -> None:
    """Write through a second connection, as another replica (or an earlier run) would."""

    async def add() -> None:
        store = open_store(str(path))
        await store.open()
        try:
            await store.add_many(list(judgements))
        finally:
            await store.close()

    asyncio.run(add())


def _ids(path: Path) -> set[str]:
    async def ids() -> set[str]:
        store = open_store(str(path))
        await store.open()
        try:
            found = await store.read_page(limit=1000)
            assert found.unreadable == []
            return {j.id for j in found.judgements}
        finally:
            await store.close()

    return asyncio.run(ids())


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_retention_purges_at_start_and_the_text_leaves_the_disk(tmp_path: Path) -> None:
    store_path = tmp_path / "judgements.sqlite3"
    old = [_judgement(40, f"{OLD_SECRET} {i}") for i in range(5)]
    fresh = [_judgement(1), _judgement(29)]
    _add(store_path, *old, *fresh)
    with running_proxy(tmp_path, retention_days=30):
        _wait_for(lambda: _ids(store_path) == {j.id for j in fresh})
    # secure_delete and the WAL checkpoint of the purge: the bytes are gone, not just unlinked.
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("judgements.sqlite3*"))
    assert OLD_SECRET.encode() not in on_disk


def test_retention_purges_periodically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conscience.server.retention, "PURGE_INTERVAL_S", 0.2)
    store_path = tmp_path / "judgements.sqlite3"
    with running_proxy(tmp_path, retention_days=7) as proxy:
        served = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "gen", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth(),
        )
        kept = served.json()["conscience"]["judgement_id"]
        late = _judgement(8)
        _add(store_path, late)  # after start: only a later round can purge it
        _wait_for(lambda: _ids(store_path) == {kept})


def test_no_retention_keeps_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conscience.server.retention, "PURGE_INTERVAL_S", 0.1)
    store_path = tmp_path / "judgements.sqlite3"
    ancient = _judgement(10_000)
    _add(store_path, ancient)
    with running_proxy(tmp_path):  # retention_days unset
        time.sleep(0.5)
    assert _ids(store_path) == {ancient.id}


def test_admin_purge(tmp_path: Path) -> None:
    store_path = tmp_path / "judgements.sqlite3"
    old, fresh = [_judgement(10), _judgement(6)], _judgement(4)
    _add(store_path, *old, fresh)
    with running_proxy(tmp_path) as proxy:
        url = proxy.url + "/admin/purge"
        for key in (CLIENT_KEY, None):
            refused = httpx.post(url, json={"older_than_days": 5}, headers=auth(key) if key else {})
            assert_envelope(refused, range(401, 402))
        assert len(_ids(store_path)) == 3
        for bad in (0, -1, "soon", None):
            refused = httpx.post(url, json={"older_than_days": bad}, headers=auth(ADMIN_KEY))
            assert_envelope(refused, range(400, 401))
        done = httpx.post(url, json={"older_than_days": 5}, headers=auth(ADMIN_KEY))
        assert done.status_code == 200, done.text
        assert done.json()["deleted"] == 2
        cutoff = datetime.fromisoformat(done.json()["cutoff"])
        assert abs((datetime.now(UTC) - cutoff) - timedelta(days=5)) < timedelta(minutes=1)
        assert _ids(store_path) == {fresh.id}
        again = httpx.post(url, json={"older_than_days": 5}, headers=auth(ADMIN_KEY))
        assert again.json()["deleted"] == 0


def test_the_purge_task_stops_cleanly_on_shutdown(tmp_path: Path) -> None:
    with recording_logs() as logs:
        for _ in range(3):  # the task is asleep (hourly) when the server stops: cancelled
            with running_proxy(tmp_path, retention_days=1) as proxy:
                assert httpx.get(proxy.url + "/health").status_code == 200
    assert logs.errors() == []
    assert "Task was destroyed" not in logs.text()
    assert "exception was never retrieved" not in logs.text()
