"""The hardening suites' proxy: the real app on a loopback port, in front of the scripted engine,
with client, admin and upstream keys set, and a record of everything it logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conscience.server.app import create_app
from conscience.settings import Settings
from conscience.testing.scripted import ScriptedEngine, serve_in_thread

CLIENT_KEY = "sk-client-7f3a9c1e5b2d4a6f"
ADMIN_KEY = "sk-admin-0c8e2f4a6b1d3e5f"
UPSTREAM_KEY = "sk-upstream-9d7b5f3a1c2e4d6b"
SECRETS = (CLIENT_KEY, ADMIN_KEY, UPSTREAM_KEY)
ENVELOPE_KEYS = {"message", "type", "param", "code"}


@dataclass
class Proxy:
    url: str  # http://127.0.0.1:PORT (no /v1)
    engine: ScriptedEngine
    store_path: Path


class LogRecorder(logging.Handler):
    """Every record, formatted with its traceback if it has one, as an operator would read it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.levels.append(record.levelno)

    def text(self) -> str:
        return "\n".join(self.lines)

    def errors(self) -> list[str]:
        return [line for line, level in zip(self.lines, self.levels, strict=True) if level >= 40]


@contextmanager
def running_proxy(directory: Path, **overrides: Any) -> Iterator[Proxy]:
    """A proxy (SQLite store in ``directory``) in front of a fresh scripted engine."""
    engine = ScriptedEngine()
    with serve_in_thread(engine.app()) as engine_url:
        fields: dict[str, Any] = {
            "upstream_url": engine_url + "/v1",
            "upstream_api_key": UPSTREAM_KEY,
            "model": "gen",
            "judge_model": "judge",
            "store_url": str(directory / "judgements.sqlite3"),
            "upstream_timeout": 2.0,
            "api_keys": CLIENT_KEY,
            "admin_key": ADMIN_KEY,
            **overrides,
        }
        with serve_in_thread(create_app(Settings(**fields))) as url:
            yield Proxy(url, engine, directory / "judgements.sqlite3")


@contextmanager
def recording_logs(level: int = logging.DEBUG) -> Iterator[LogRecorder]:
    """Record what the proxy logs: the root logger (conscience.*, httpx, ...) and uvicorn's own
    loggers, which do not propagate. Call after the servers started (uvicorn resets its
    loggers' handlers when a server starts)."""
    recorder = LogRecorder()
    loggers = [logging.getLogger(name) for name in (None, "uvicorn", "uvicorn.access")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(recorder)
    logging.getLogger().setLevel(level)
    try:
        yield recorder
    finally:
        for lg, old in saved:
            lg.removeHandler(recorder)
            lg.setLevel(old)


def assert_envelope(response: httpx.Response | Any, statuses: range = range(400, 500)) -> dict:
    """An OpenAI error envelope with a status in ``statuses`` and no traceback; its error."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ENVELOPE_KEYS, body
    assert isinstance(body["error"]["message"], str)
    assert "Traceback" not in response.text
    return body["error"]


def auth(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
