"""The console ships in the wheel: its modules and its stylesheet (package data)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.test_wheel import wheel  # the built wheel, a module-scoped fixture

pytestmark = pytest.mark.slow
__all__ = ["wheel"]


def test_the_console_is_in_the_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in ("__init__", "routes", "pages", "markup", "session", "diff", "overview"):
        assert f"conscience/server/console/{name}.py" in names, name
    assert "conscience/server/console/static/console.css" in names
    assert "conscience/store/search.py" in names
