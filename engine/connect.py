"""``open_engine(settings)``: the one way the proxy, the one-shot commands, the trainer's online
judge and the evaluations reach an OpenAI-compatible engine.

With ``settings.upstream_url`` set, it is a client of that URL (with the upstream key and
timeout). Without one, it starts the embedded llama.cpp engine on loopback, serving the
packaged ``settings.model`` (or a given GGUF) under its name, and stops it again on exit: the
engine's lifetime is the block's, so no caller can leave a model resident in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from conscience.client import EngineClient
from conscience.errors import ConscienceError
from conscience.judge import EngineFacts

if TYPE_CHECKING:
    from conscience.engine.adapters import AdapterEngine
    from conscience.engine.embedded import EmbeddedEngine
    from conscience.engine.hidden_state import LogitsReader
    from conscience.settings import Settings

__all__ = ["Engine", "default_parallel", "open_engine"]

log = logging.getLogger("conscience.engine")

EMBEDDED = "embedded llama.cpp"
_GIB = 1 << 30


def default_parallel(cores: int | None = None, memory_bytes: int | None = None) -> int:
    """The embedded engine's slots when ``CONSCIENCE_ENGINE_PARALLEL`` is unset: one per core,
    at least 2 (the judge's request decodes beside a generation) and at most 4, and no more than
    one per 2 GiB of physical memory (each slot holds a KV cache of ``engine_ctx_size`` tokens:
    224 MiB at 8192 on the default 1.5B model, about 0.5 GiB on a 7B one). ``cores`` and
    ``memory_bytes`` default to this machine's (the CPUs this process may run on)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(max(2, min(cores, 4)), memory_bytes // (2 * _GIB)))


@dataclass(frozen=True)
class Engine:
    """An open engine: the client to talk to it, and the embedded engine when one was started."""

    client: EngineClient
    embedded: EmbeddedEngine | None
    # The embedded engine's published adapter (engine/adapters.py); None with an upstream.
    adapters: AdapterEngine | None = None
    # How the probe reads the embedded engine's hidden state through its prefix cache
    # (engine/hidden_state.py); None: /v1/embeddings (an upstream, or probe_read "embeddings").
    state_reader: LogitsReader | None = None
    # What the judge knows of the engine when it opened (conscience/judge.py): the embedded
    # engine whether it gives the probe a hidden state, and how; an upstream does not say.
    facts: EngineFacts = field(default_factory=EngineFacts)

    @property
    def adapter(self) -> str | None:
        """The adapter served from the start (CONSCIENCE_ADAPTERS_DIR/CURRENT): the generator's
        name until another is published; None: the base model generates."""
        return self.adapters.name if self.adapters is not None else None

    @property
    def endpoint(self) -> str:
        """Where it answers, for logs and reports (the URL, or ``embedded llama.cpp``)."""
        return EMBEDDED if self.embedded is not None else self.client.base_url


def reads_logits(settings: Settings) -> bool:
    """Whether the probe reads the embedded engine's state through its output layer."""
    return settings.judge_method == "probe" and settings.probe_read == "logits"


def logits_reader_for(settings: Settings, path: Path) -> LogitsReader | None:
    """The probe's reader through the output layer of the GGUF at ``path`` when
    ``reads_logits``; None otherwise, or when the model does not allow it (said in the log;
    ``start_embedded`` then serves ``/v1/embeddings`` for the probe instead)."""
    if not reads_logits(settings):
        return None
    started = time.perf_counter()
    try:
        from conscience.engine.hidden_state import logits_reader

        reader = logits_reader(path)
    except Exception as exc:  # a refused model, a file or a quantisation gguf cannot read
        log.warning(
            "the probe cannot read the judge's state through its logits (%s: %s): it reads"
            " /v1/embeddings instead (CONSCIENCE_PROBE_READ=embeddings says so from the start)",
            type(exc).__name__,
            exc,
        )
        return None
    log.info(
        "the probe reads the judge's state through %d tokens of its output layer (%s, %.1f s)",
        len(reader.token_ids),
        path.name,
        time.perf_counter() - started,
    )
    return reader


async def start_embedded(
    settings: Settings,
    *,
    gguf: str | Path | None = None,
    alias: str | None = None,
    parallel: int | None = None,
    embeddings: bool = False,
) -> tuple[EmbeddedEngine, LogitsReader | None]:
    """Start llama.cpp on ``gguf`` (default: the packaged ``settings.model``), serving it under
    ``alias`` (default: ``settings.model``) with ``parallel`` slots (default:
    ``settings.engine_parallel``, else ``default_parallel()``), and the probe's reader of its
    hidden state (``logits_reader_for``, read from the file while the engine starts: a few
    seconds); ``/v1/embeddings`` when asked, or when the probe reads them (``probe_read``
    embeddings, or a model the reader refuses: the engine is then started again with them)."""
    from conscience.engine.embedded import EmbeddedEngine
    from conscience.engine.truncate import refuse_probe_only
    from conscience.engine.weights import model_path

    path = Path(gguf) if gguf is not None else model_path(settings.model, settings.model_cache_dir)
    refuse_probe_only(path)  # a model cut for a probe (engine/truncate.py) writes no text
    probe = settings.judge_method == "probe"
    engine = EmbeddedEngine(
        path,
        threads=settings.engine_threads,
        ctx_size=settings.engine_ctx_size,
        parallel=max(1, parallel or settings.engine_parallel or default_parallel()),
        batch_size=settings.engine_batch_size,
        model_alias=alias or settings.model,
        embeddings=embeddings or (probe and not reads_logits(settings)),
    )
    reading = asyncio.ensure_future(asyncio.to_thread(logits_reader_for, settings, path))
    try:
        await engine.start()
    finally:
        reader = await reading  # never raises; the thread cannot be stopped: wait for it
    if probe and reader is None and not engine.embeddings:  # a model the reader refused
        await engine.stop()
        engine = engine.like(embeddings=True)
        await engine.start()
    return engine, reader


@asynccontextmanager
async def open_engine(
    settings: Settings,
    *,
    gguf: str | Path | None = None,
    alias: str | None = None,
    parallel: int | None = None,
    embeddings: bool = False,
) -> AsyncIterator[Engine]:
    """The configured upstream, or (without one) the embedded engine, started here and stopped
    on exit. ``gguf``, ``alias``, ``parallel`` and ``embeddings`` apply to the embedded engine
    only."""
    embedded, reader = None, None
    if settings.upstream_url is None:
        embedded, reader = await start_embedded(
            settings, gguf=gguf, alias=alias, parallel=parallel, embeddings=embeddings
        )
    try:
        url = embedded.base_url if embedded is not None else settings.upstream_url
        assert url is not None
        key = settings.upstream_api_key
        async with EngineClient(
            url,
            api_key=key.get_secret_value() if key else None,
            timeout=settings.upstream_timeout,
            # llama.cpp stops a request only when its stream closes (conscience/chunks.py)
            stream_unary=embedded is not None,
        ) as client:
            if embedded is None:
                yield Engine(client, None)
                return
            from conscience.engine.adapters import AdapterEngine, current_adapter

            adapters = AdapterEngine(embedded, client)
            try:
                name = current_adapter(settings.adapters_dir)
                if name is not None and settings.adapters_dir is not None:
                    try:
                        await adapters.serve(name, settings.adapters_dir)
                    except ConscienceError as exc:  # the base model serves rather than nothing
                        log.error("adapter %s in CURRENT is not served: %s", name, exc)
                facts = EngineFacts(reader is not None or embedded.embeddings, reader)
                yield Engine(client, embedded, adapters, reader, facts)
            finally:
                await adapters.stop()
    finally:
        if embedded is not None:
            await embedded.stop()
