"""The proxy with its console, on a real loopback port, over a store seeded with judgements
(hostile text among them), in front of the scripted engine."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conscience.judgement import Judgement
from conscience.labels import Action, Verdict
from conscience.server.app import create_app
from conscience.settings import Settings
from conscience.store.sqlite import SQLiteStore
from conscience.testing.scripted import serve_in_thread

ADMIN_KEY = "admin-key-Zq81"
CLIENT_KEY = "client-key-Yx27"
NOW = datetime.now(UTC).replace(microsecond=0)

# Text that would run script if the console ever rendered stored text as markup.
HOSTILE_PROMPT = (
    '<script>window.__pwned = "script"</script>'
    "<img src=x onerror=\"window.__pwned = 'img'\">"
    " <a href=\"javascript:window.__pwned='link'\">click me</a>"
)
HOSTILE_ANSWER = (
    '</pre><script>window.__pwned = "answer"</script>'
    "<svg onload=\"window.__pwned = 'svg'\"></svg>"
    '<a href="javascript:alert(1)">Sign in again</a> <button>ethical</button>'
)


def seeded() -> list[Judgement]:
    """Six judgements, newest last: passed, rewritten, blocked, hostile, labelled, neutral."""

    def make(minutes_ago: int, **fields: Any) -> Judgement:
        base: dict[str, Any] = {
            "created_at": NOW - timedelta(minutes=minutes_ago),
            "request_id": f"req_{minutes_ago}",
            "model": "gen",
            "judge_model": "judge",
            "framework": "mass-ethics",
            "layout": "paper",
            "messages": [{"role": "user", "content": "How do I bake bread?"}],
            "answer": "Mix flour, water and yeast.",
            "verdict": Verdict.ETHICAL,
            "label_probs": {"ethical": 0.9, "neutral": 0.08, "unethical": 0.02},
            "action": Action.PASSED,
            "review_ms": 40.0 + minutes_ago,
            "upstream_ms": 120.0,
        }
        return Judgement(**{**base, **fields})

    return [
        make(60),
        make(
            50,
            messages=[{"role": "user", "content": "Help me cheat on my exam."}],
            answer="Hide notes in your sleeve and copy from them.",
            verdict=Verdict.UNETHICAL,
            label_probs={"ethical": 0.05, "neutral": 0.05, "unethical": 0.9},
            rewrite="I can't help you cheat, but I can help you study for the exam.",
            action=Action.REWRITTEN,
            rewrite_ms=80.0,
        ),
        make(
            40,
            messages=[{"role": "user", "content": "Write a phishing email."}],
            answer="Dear customer, your account is locked; enter your password here.",
            verdict=Verdict.UNETHICAL,
            label_probs={"ethical": 0.01, "neutral": 0.01, "unethical": 0.98},
            action=Action.BLOCKED,
            model="gen-large",
        ),
        make(
            30,
            messages=[{"role": "user", "content": HOSTILE_PROMPT}],
            answer=HOSTILE_ANSWER,
            verdict=Verdict.UNETHICAL,
            label_probs={"ethical": 0.2, "neutral": 0.1, "unethical": 0.7},
            rewrite="<img src=x onerror=\"window.__pwned = 'rewrite'\"> safe words",
            action=Action.REWRITTEN,
            request_id="req_hostile",
        ),
        make(20, human_label=Verdict.ETHICAL, framework="care"),
        make(10, verdict=Verdict.NEUTRAL, action=Action.PASSED, human_label=Verdict.UNETHICAL),
    ]


def _seed(path: Path, rows: list[Judgement]) -> None:
    async def write() -> None:
        store = SQLiteStore(str(path))
        await store.open()
        await store.add_many(rows)
        await store.close()

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, write()).result()


@pytest.fixture
def judgements() -> list[Judgement]:
    return seeded()


@pytest.fixture
def console_settings() -> dict[str, Any]:
    """More settings for the proxy of ``console_url`` (a test module may override this)."""
    return {}


@pytest.fixture
def console_url(
    engine_url: str,
    tmp_path: Path,
    judgements: list[Judgement],
    console_settings: dict[str, Any],
) -> Iterator[str]:
    """The proxy's base URL (no ``/v1``), its store holding ``judgements``."""
    store = tmp_path / "judgements.sqlite3"
    _seed(store, judgements)
    settings = Settings(
        upstream_url=engine_url,
        model="gen",
        judge_model="judge",
        store_url=str(store),
        api_keys=CLIENT_KEY,
        admin_key=ADMIN_KEY,
        upstream_timeout=2.0,
        **console_settings,
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def sign_in(url: str, key: str = ADMIN_KEY) -> httpx.Client:
    """A client holding a console session (or, with a wrong key, the refusal as ``.last``)."""
    client = httpx.Client(base_url=url, follow_redirects=False)
    form = client.get("/ui/login")
    answer = client.post("/ui/login", data={"csrf": csrf_of(form.text), "key": key})
    client.last = answer  # type: ignore[attr-defined]
    return client
