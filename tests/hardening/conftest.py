"""Fixtures of the hardening suites (the helpers are in ``proxy_harness``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_harness import Proxy, running_proxy


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    with running_proxy(tmp_path) as running:
        yield running
