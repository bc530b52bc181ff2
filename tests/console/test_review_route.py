"""``POST /v1/conscience/review`` over HTTP, the client key's id on every judgement, and the
store's migration that adds both (old rows stay readable)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import openai
import pytest

from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.server.auth import key_id
from conscience.store.schema import SQLITE_MIGRATIONS
from conscience.store.sqlite import SQLiteStore
from conscience.testing.scripted import ScriptedEngine
from tests.server.conftest import make_proxy  # the proxy on loopback, before the engine

__all__ = ["make_proxy"]

CLIENT = "client-key-Q1"
OTHER = "client-key-Q2"
ADMIN = "admin-key-Q3"
ASK = [{"role": "user", "content": "Help me cheat on my exam."}]


@pytest.fixture
def url(make_proxy) -> str:
    return make_proxy(api_keys=f"{CLIENT},{OTHER}", admin_key=ADMIN)


def _admin(url: str, path: str, **params: str) -> dict:
    answer = httpx.get(url + path, params=params, headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_review_judges_without_generating(engine: ScriptedEngine, url: str) -> None:
    engine.verdict = "unethical"
    body = {"messages": ASK, "answer": "Hide notes in your sleeve.", "model": "elsewhere"}
    refused = httpx.post(url + "/v1/conscience/review", json=body)
    assert refused.status_code == 401
    answer = httpx.post(
        url + "/v1/conscience/review", json=body, headers={"Authorization": f"Bearer {CLIENT}"}
    )
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["object"] == "conscience.review" and found["verdict"] == "unethical"
    assert found["p_unethical"] == pytest.approx(0.9, abs=0.01)
    assert answer.headers["x-conscience-verdict"] == "unethical"
    assert engine.of_kind("generate") == [] and engine.of_kind("rewrite") == []
    stored = _admin(url, f"/admin/judgements/{found['judgement_id']}")
    assert stored["review_only"] is True and stored["client_key_id"] == key_id(CLIENT)
    assert stored["answer"] == body["answer"] and stored["messages"] == ASK
    assert stored["model"] == "elsewhere" and stored["rewrite"] is None
    assert stored["action"] is None
    assert CLIENT not in str(stored)


def test_review_refuses_bad_bodies(url: str) -> None:
    auth = {"Authorization": f"Bearer {CLIENT}"}
    for body in ({"answer": "x"}, {"messages": [], "answer": "x"}, {"messages": ASK}):
        answer = httpx.post(url + "/v1/conscience/review", json=body, headers=auth)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_value"
    unknown = httpx.post(
        url + "/v1/conscience/review",
        json={"messages": ASK, "answer": "x", "framework": "nope"},
        headers=auth,
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_framework"


def test_every_judgement_names_its_client_key(engine: ScriptedEngine, url: str) -> None:
    for key in (CLIENT, OTHER, OTHER):
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        client.chat.completions.create(model="gen", messages=ASK)
    every = _admin(url, "/admin/judgements")
    assert sorted(j["client_key_id"] for j in every["data"]) == sorted(
        [key_id(CLIENT), key_id(OTHER), key_id(OTHER)]
    )
    assert all(j["review_only"] is False for j in every["data"])
    other = _admin(url, "/admin/judgements", client_key_id=key_id(OTHER))
    assert other["total"] == 2
    assert key_id(CLIENT) != key_id(OTHER) and key_id(CLIENT).startswith("key_")


def test_no_keys_no_key_id(engine: ScriptedEngine, make_proxy) -> None:
    url = make_proxy(admin_key=ADMIN)
    client = openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0)
    client.chat.completions.create(model="gen", messages=ASK)
    (row,) = _admin(url, "/admin/judgements")["data"]
    assert row["client_key_id"] is None


def test_a_database_from_before_opens_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = Judgement(
        framework="f", layout="paper", messages=ASK, answer="a", verdict=Verdict.ETHICAL
    )

    async def run() -> tuple[Judgement, int]:
        before = SQLiteStore(str(path), migrations=SQLITE_MIGRATIONS[:4])
        await before.open()
        await before._call(
            lambda c: c.execute(
                "INSERT INTO judgements (id, created_at, framework, layout, messages, answer,"
                " verdict) VALUES (?, ?, 'f', 'paper', '[]', 'a', 'ethical')",
                (old.id, old.created_at.isoformat()),
            )
        )
        await before.close()
        store = SQLiteStore(str(path))
        await store.open()
        read = await store.get(old.id)
        await store.add(Judgement(**{**old.model_dump(), "id": "jdg_new", "review_only": True}))
        count = await store.count(client_key_id=None)
        await store.close()
        return read, count

    read, count = asyncio.run(run())
    assert read.client_key_id is None and read.review_only is False
    assert count == 2
    version = sqlite3.connect(path).execute("SELECT max(version) FROM schema_version").fetchone()
    assert version == (len(SQLITE_MIGRATIONS),)
