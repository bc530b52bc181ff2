"""Shared fixtures: a scripted OpenAI-compatible engine on a real loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conscience.testing.scripted import ScriptedEngine, serve_in_thread


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def engine_url(engine: ScriptedEngine) -> Iterator[str]:
    """The scripted engine's OpenAI base URL (``.../v1``); change ``engine`` fields freely."""
    with serve_in_thread(engine.app()) as url:
        yield url + "/v1"
