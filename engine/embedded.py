"""The embedded engine: llama.cpp serving a GGUF model on loopback, in a child process.

When no upstream is configured, the proxy starts one :class:`EmbeddedEngine` in its lifespan
and talks to it as to any OpenAI-compatible server (``base_url``). The engine is xllamacpp's
build of llama.cpp's own HTTP server, run in a child process (``child.py``) rather than
in the proxy's process, because:

- a llama.cpp abort or segfault kills the child, not the proxy: the proxy stays up, answers
  ``/ready`` truthfully (``alive()``) and returns engine errors instead of vanishing with
  requests and unflushed store writes;
- ``stop()`` returns every byte of the model's memory to the OS;
- its cost is measured and small (docs/notes/engine.md): ~0.1 s of Python start-up on top of
  the model load.

What the engine serves (measured, xllamacpp 2026.10.11549): ``/health``, ``/v1/models``
(``owned_by: "llamacpp"``), ``/v1/chat/completions`` streaming and not, honouring a GBNF
``grammar`` and ``logprobs``/``top_logprobs`` (unconstrained distribution at each step) and
reporting ``usage.prompt_tokens_details.cached_tokens``, and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from conscience.errors import EngineError

__all__ = [
    "CHILD_SCRIPT",
    "STREAM_REQUEST_HEADERS",
    "EmbeddedEngine",
    "busy",
    "metrics",
    "parse_metrics",
]

CHILD_SCRIPT = Path(__file__).with_name("child.py")
# llama.cpp's HTTP server closes the connection right after the last chunk of a streamed
# response without saying so (no "Connection: close"); a pooled client that reuses it at once
# gets "Server disconnected without sending a response". Sending this header on streamed
# requests makes the client drop that connection itself. Non-streamed responses keep alive
# (for 5 s: keep the client's keepalive_expiry below that).
STREAM_REQUEST_HEADERS: dict[str, str] = {"Connection": "close"}
_POLL_S = 0.05  # how often start/stop look at the child
_DRAIN_POLL_S = 0.5  # how often a retiring engine is asked whether it still serves a request
_TAIL_LINES = 20  # lines of the engine's log carried by an EngineError


class EmbeddedEngine:
    """One llama.cpp server in a child process, started and stopped by the proxy."""

    def __init__(
        self,
        model_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        threads: int | None = None,
        ctx_size: int = 4096,
        parallel: int = 1,
        model_alias: str = "local",
        cache_ram_mib: int = 1024,
        batch_size: int | None = None,
        embeddings: bool = False,
        adapters: Sequence[Path] = (),
        log_path: Path | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.model_path = Path(model_path)
        self.host = host
        self.port = port  # None: the child binds port 0 and reports the port it got (no race)
        self.threads = threads
        self.ctx_size = ctx_size  # per slot
        self.parallel = parallel
        self.model_alias = model_alias
        self.cache_ram_mib = cache_ram_mib
        # Prompt tokens prefilled per step (None: llama.cpp's 2,048). A client that leaves is
        # noticed between steps, where the engine streams its prompt progress.
        self.batch_size = batch_size
        self.embeddings = embeddings  # also serve /v1/embeddings (last-token hidden state)
        # GGUF LoRA files applied to every request: this engine serves the adapted model
        self.adapters = tuple(Path(a) for a in adapters)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout  # grace after SIGTERM before SIGKILL
        self._log_path = log_path
        self._own_log = log_path is None  # a temp log we delete on stop
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_returncode: int | None = None  # of the previous child, once stopped
        self._address: str | None = None
        self.startup_s: float | None = None  # measured by start(), for logs and benches

    def like(self, **changes: Any) -> EmbeddedEngine:
        """A new engine, not started, with this one's settings and ``changes`` (the adapter
        engine is the base engine's twin with a LoRA and its own alias)."""
        settings: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "threads": self.threads,
            "ctx_size": self.ctx_size,
            "parallel": self.parallel,
            "model_alias": self.model_alias,
            "cache_ram_mib": self.cache_ram_mib,
            "batch_size": self.batch_size,
            "embeddings": self.embeddings,
            "adapters": self.adapters,
            "log_path": self._log_path,
            "startup_timeout": self.startup_timeout,
            "stop_timeout": self.stop_timeout,
        }
        return EmbeddedEngine(self.model_path, **{**settings, **changes})

    # -- state ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:PORT`` (``/health``, ``/metrics``)."""
        if self._address is None:
            raise EngineError("the embedded engine is not started")
        return self._address

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def alive(self) -> bool:
        """True while the child process runs; False before start and once it died."""
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        """The child's exit code once it exited (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else self._last_returncode

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines of the engine's log (llama.cpp's own output)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        with self._log_path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the child and wait until ``/health`` answers 200.

        Raises EngineError carrying the tail of the engine's log if the child exits or does
        not become healthy within ``startup_timeout``; the child is then stopped.
        """
        if self._proc is not None:
            raise EngineError("the embedded engine was already started")
        if not self.model_path.is_file():
            raise EngineError(f"no model file at {self.model_path}")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="conscience-engine-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        t0 = time.monotonic()
        self._proc = await asyncio.to_thread(self._spawn)
        try:
            await asyncio.wait_for(self._wait_ready(), self.startup_timeout)
        except TimeoutError:
            tail = self.log_tail()
            await self.stop()
            raise EngineError(
                f"the embedded engine did not become ready in {self.startup_timeout:.0f} s; "
                f"its log ends with:\n{tail}"
            ) from None
        except BaseException:
            await self.stop()  # the error already carries the log's tail
            raise
        self.startup_s = time.monotonic() - t0

    async def retire(self, drain_s: float = 600.0) -> None:
        """Stop once no request is processed or queued (llama.cpp's /metrics), or after
        ``drain_s``: the end of an engine that was replaced while requests may still run."""
        try:
            deadline = time.monotonic() + drain_s
            async with httpx.AsyncClient(timeout=5.0) as client:
                while time.monotonic() < deadline and self.alive():
                    try:
                        if not busy(await metrics(client, self.url)):
                            break
                    except (httpx.HTTPError, ValueError):
                        break  # an engine that cannot say is not waited for
                    await asyncio.sleep(_DRAIN_POLL_S)
        finally:
            await asyncio.shield(self.stop())

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; idempotent. ``start`` may follow."""
        await self._terminate()
        self._address = None
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals --------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-P",  # do not put server/ first on sys.path: its modules could shadow the stdlib
            str(CHILD_SCRIPT),
            "--model",
            str(self.model_path),
            "--host",
            self.host,
            "--port",
            str(self.port or 0),
            "--ctx-size",
            str(self.ctx_size),
            "--parallel",
            str(self.parallel),
            "--alias",
            self.model_alias,
            "--cache-ram-mib",
            str(self.cache_ram_mib),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.batch_size:
            cmd += ["--batch-size", str(self.batch_size)]
        if self.embeddings:
            cmd.append("--embeddings")
        for adapter in self.adapters:
            cmd += ["--lora", str(adapter)]
        return cmd

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._log_path is not None
        with self._log_path.open("ab") as log:
            return subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,  # the one "ready" line
                stderr=log,  # the child keeps its own handle on the log
                # Its own session: a Ctrl-C at the terminal reaches the proxy, which then stops
                # the engine after draining, instead of killing the engine under live requests.
                start_new_session=True,
            )

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        # readline blocks in a thread until the child's ready line or its death (EOF).
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            rc = await asyncio.to_thread(_wait, proc, 5.0)
            raise EngineError(
                f"the embedded engine exited with code {rc} during start-up; "
                f"its log ends with:\n{self.log_tail()}"
            )
        self._address = json.loads(line)["address"].rstrip("/")
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                if proc.poll() is not None:
                    raise EngineError(
                        f"the embedded engine exited with code {proc.returncode} during "
                        f"start-up; its log ends with:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self._address}/health")).status_code == 200:
                        return
                await asyncio.sleep(_POLL_S)

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            if await asyncio.to_thread(_wait, proc, self.stop_timeout) is None:
                proc.kill()
                await asyncio.to_thread(_wait, proc, self.stop_timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        self._last_returncode = proc.returncode
        self._proc = None


async def metrics(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """llama.cpp's ``/metrics`` at the server root ``url`` (``parse_metrics``)."""
    return parse_metrics((await client.get(f"{url}/metrics")).text)


def parse_metrics(text: str) -> dict[str, float]:
    """llama.cpp's Prometheus text without the ``llamacpp:`` prefix (``requests_processing``,
    ``requests_deferred``, ``n_decode_total``, ...)."""
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("llamacpp:"):
            values[name.removeprefix("llamacpp:")] = float(value)
    return values


def busy(values: dict[str, float]) -> bool:
    """Whether an engine's ``metrics`` show a request processed or queued."""
    return values.get("requests_processing", 0) + values.get("requests_deferred", 0) > 0


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code, or None if the process still runs after ``timeout`` seconds."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def main() -> None:
    """``python -m conscience.engine.embedded --model M.gguf --port N``: the engine in the
    foreground."""
    from conscience.engine.child import main as child_main

    sys.exit(child_main())


if __name__ == "__main__":
    main()
