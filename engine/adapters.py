"""Trained adapters on the embedded engine: the published one served by name, the judge never.

On vLLM a published adapter is a model name of its own (``/v1/load_lora_adapter``). The embedded
llama.cpp engine gets the same contract here:

- ``serve_adapter`` exports the peft adapter ``ADAPTERS/NAME`` to GGUF (``NAME/adapter.gguf``,
  re-exported when the adapter is newer or was exported for another base model), has the engine
  load it (``EmbeddedEngine.swap_adapters``: a new child beside the old, no downtime) and routes
  the name to it (``EngineClient.adapters``): a request for ``NAME`` is generated with the
  adapter on, every other request — the judge's, the probe's — by the base model with every
  adapter off;
- ``current_adapter`` finds the adapter recorded in ``ADAPTERS/CURRENT``, which the engine then
  loads from its start (``open_engine``), so a restarted proxy keeps the adapter published last.

Rolling back is publishing an older adapter, or the base model's name (which needs no engine
work: its requests carry no adapter).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from conscience.engine.lora_gguf import ADAPTER_FILE, export_lora
from conscience.engine.publish import read_current

if TYPE_CHECKING:
    from conscience.client import EngineClient
    from conscience.engine.embedded import EmbeddedEngine

__all__ = ["adapter_gguf", "current_adapter", "serve_adapter"]

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


async def serve_adapter(
    engine: EmbeddedEngine, client: EngineClient, name: str, adapters_dir: Path
) -> None:
    """Have the embedded engine serve ``adapters_dir/name`` under ``name`` (see the module).

    Raises LoraExportError when the adapter cannot be exported for this model, EngineError when
    the engine with it does not start; in both cases what was served before is served still.
    """
    gguf = await asyncio.to_thread(adapter_gguf, adapters_dir / name, engine.model_path)
    await engine.swap_adapters([gguf])
    client.base_url = engine.base_url
    client.adapters = {name: 0}
    log.info("the embedded engine serves adapter %s (%s)", name, gguf)
