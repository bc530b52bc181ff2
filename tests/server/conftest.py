"""The proxy on a real loopback port, in front of the scripted engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conscience.server.app import create_app
from conscience.settings import Settings
from conscience.testing.scripted import serve_in_thread

ProxyFactory = Callable[..., Any]


@pytest.fixture
def make_proxy(engine_url: str, tmp_path: Path) -> Iterator[ProxyFactory]:
    """``make_proxy(**settings)`` starts a proxy and returns its base URL (``.../v1``)."""
    with_stack: list[Any] = []

    def start(**overrides: Any) -> str:
        fields = {
            "upstream_url": engine_url,
            "upstream_api_key": "sk-upstream-secret",
            "model": "gen",
            "judge_model": "judge",
            "store_url": str(tmp_path / "judgements.sqlite3"),
            "upstream_timeout": 2.0,
            **overrides,
        }
        manager = serve_in_thread(create_app(Settings(**fields)))
        url = manager.__enter__()
        with_stack.append(manager)
        return url

    yield start
    for manager in reversed(with_stack):
        manager.__exit__(None, None, None)


@pytest.fixture
def proxy_url(make_proxy: ProxyFactory) -> str:
    return make_proxy()


@pytest.fixture
def client(proxy_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy_url + "/v1", api_key="none", max_retries=0)
