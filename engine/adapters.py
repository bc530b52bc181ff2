"""Trained adapters on the embedded engine: the published one served by name, the judge never.

On vLLM a published adapter is a model name of its own (``/v1/load_lora_adapter``). The embedded
llama.cpp engine gets the same contract here. The adapted model runs in an engine child of its
own, beside the base model's (which keeps serving the judge, the probe and any request for the
base model's name):

- ``AdapterEngine.serve`` exports the peft adapter ``ADAPTERS/NAME`` to GGUF
  (``NAME/adapter.gguf``, re-exported when the adapter is newer or was exported for another base
  model), starts a child with it applied, and routes the name there (``EngineClient.routes``)
  once it is healthy; the child it replaces finishes its requests and stops. Nothing is served
  differently until the new child answers, so a failed start changes nothing;
- ``AdapterEngine.clear`` (a rollback to the base model) routes the name away and retires the
  child;
- ``current_adapter`` finds the adapter recorded in ``ADAPTERS/CURRENT``, which the proxy serves
  from its start (``open_engine``), so a restarted proxy keeps the adapter published last.

Why a second child rather than llama.cpp's per-request adapter scales in one: measured on
xllamacpp 2026.10, the server's host-memory prompt cache hands a request with every adapter off
the keys and values computed for the same prompt with an adapter on (the base model's answer
changed after one adapted request), and no request with an adapter on reused its prompt cache at
all. Two children share the model file's pages (it is mmapped); each keeps its own cache, so the
judge's framework header stays cached and is never computed with the adapter
(docs/decisions.md, "Adapters on the embedded engine").
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from conscience.engine.embedded import EmbeddedEngine
from conscience.engine.lora_gguf import ADAPTER_FILE, export_lora
from conscience.engine.publish import read_current

if TYPE_CHECKING:
    from conscience.client import EngineClient

__all__ = ["AdapterEngine", "adapter_gguf", "current_adapter"]

log = logging.getLogger("conscience.engine")
_STAMP = ".adapter.gguf.base"  # beside adapter.gguf: the base model file it was exported for


def _stamp(base: Path) -> str:
    stat = base.stat()
    return json.dumps({"base": base.name, "size": stat.st_size})


def adapter_gguf(adapter_dir: Path, base: Path) -> Path:
    """``adapter_dir/adapter.gguf`` for ``base``, exported now unless a current one is there."""
    out = adapter_dir / ADAPTER_FILE
    weights = adapter_dir / "adapter_model.safetensors"
    stamp = adapter_dir / _STAMP
    fresh = (
        out.is_file()
        and weights.is_file()
        and out.stat().st_mtime >= weights.stat().st_mtime
        and stamp.is_file()
        and stamp.read_text(encoding="utf-8") == _stamp(base)
    )
    if not fresh:
        export_lora(adapter_dir, base, out)
        stamp.write_text(_stamp(base), encoding="utf-8")
        log.info("exported %s for %s to %s", adapter_dir.name, base.name, out)
    return out


def current_adapter(adapters_dir: Path | None) -> str | None:
    """The adapter name in ``adapters_dir/CURRENT`` when it is an adapter directory there
    (a recorded base-model name, or nothing recorded, is None)."""
    if adapters_dir is None:
        return None
    name = read_current(adapters_dir)
    if name is None or not (adapters_dir / name / "adapter_config.json").is_file():
        return None
    return name


class AdapterEngine:
    """The engine child that serves the published adapter, beside the base model's ``base``."""

    def __init__(self, base: EmbeddedEngine, client: EngineClient, drain_s: float = 600.0) -> None:
        self.base = base  # its model and settings are the adapted child's
        self.client = client  # routes the adapter's name to the child
        self.drain_s = drain_s  # how long a replaced child may finish its requests
        self.name: str | None = None
        self.engine: EmbeddedEngine | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    def alive(self) -> bool:
        """False only when an adapter is served and its child died."""
        return self.engine is None or self.engine.alive()

    async def serve(self, name: str, adapters_dir: Path) -> None:
        """Serve ``adapters_dir/name`` under ``name`` (see the module).

        Raises LoraExportError when the adapter cannot be exported for this model, EngineError
        when the engine with it does not start; in both cases nothing changed.
        """
        gguf = await asyncio.to_thread(adapter_gguf, adapters_dir / name, self.base.model_path)
        # The base engine's twin on a port of its own, generating only: no embeddings, no log.
        engine = self.base.like(
            port=None, model_alias=name, adapters=(gguf,), embeddings=False, log_path=None
        )
        await engine.start()
        old, self.name, self.engine = self.engine, name, engine
        self.client.routes = {name: engine.base_url}
        log.info("adapter %s served by its own engine (%s, from %s)", name, engine.url, gguf)
        self._retire(old)

    async def clear(self) -> None:
        """Serve no adapter (a rollback to the base model): the child finishes and stops."""
        old, self.name, self.engine = self.engine, None, None
        self.client.routes = {}
        self._retire(old)

    async def stop(self) -> None:
        """Stop the adapter's child and any still draining, now."""
        engines = [e for e in [self.engine] if e is not None]
        self.engine, self.name = None, None
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for engine in engines:
            await engine.stop()

    def _retire(self, engine: EmbeddedEngine | None) -> None:
        if engine is None:
            return
        task = asyncio.create_task(engine.retire(self.drain_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
