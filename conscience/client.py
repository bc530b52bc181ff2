"""An async client for any OpenAI-compatible engine.

Unary JSON requests (chat completions, the judge's calls, embeddings, models) go over one pooled
``aiohttp.ClientSession``; streams (``chat_stream``, and the passthrough's forwarded requests)
over one pooled ``httpx.AsyncClient``. aiohttp because a unary request is the proxy's hot path:
httpx cost about 1 ms of CPU a request, aiohttp about 0.3 (docs/decisions.md, "A leaner
proxy"); a stream's cost is spread over its tokens.

With ``stream_unary`` (the embedded llama.cpp engine), ``chat`` and ``completions`` ask for a
stream and assemble the unary answer of it (``conscience.chunks``): llama.cpp stops a request
when a write to its stream fails, but finishes a non-streamed one whose caller left, so only a
stream makes a cancelled caller free the engine (docs/decisions.md, "Cancellation"). Its
streams also ask for the prompt's progress (``return_progress``): llama.cpp writes nothing
else while it prefills, so without it a caller who left during a long prompt's prefill is
noticed at the first token only; the progress chunks are dropped here.

Transport failures become the project's errors (``EngineUnavailable``, ``EngineTimeout``,
``EngineStatusError``) so callers never see an httpx or aiohttp exception, and the API key
never appears in any message. Every request carries the current W3C trace context (``traceparent``,
``tracestate``) when there is one, so that an engine that traces joins the caller's trace.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from types import MappingProxyType
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import aiohttp
import httpx
from opentelemetry.context import get_current
from opentelemetry.propagate import inject
from pydantic_core import from_json, to_json

from conscience.chunks import assemble, assemble_native
from conscience.errors import EngineError, EngineStatusError, EngineTimeout, EngineUnavailable

__all__ = ["Constraint", "EngineClient", "constraint_for_owner"]

# How the judge's label is forced: vLLM's structured-output choice, a llama.cpp GBNF grammar,
# or nothing (an engine that can force nothing gets a strict parser).
Constraint = Literal["choice", "grammar", "none"]


def constraint_for_owner(owned_by: str | None) -> Constraint:
    """The constraint an engine supports, from the ``owned_by`` of its ``/v1/models``."""
    owner = (owned_by or "").lower().replace(".", "").replace("-", "").replace("_", "")
    if owner == "vllm":
        return "choice"
    if owner in {"llamacpp", "xllamacpp"}:
        return "grammar"
    return "none"


class _Wording(NamedTuple):
    timeout: str  # ``{url}`` is filled in
    broken: str  # ``{url}`` and ``{exc}`` are filled in


_REQUEST = _Wording(
    "engine at {url} did not answer in time", "cannot reach the engine at {url}: {exc}"
)
_STREAM = _Wording("engine at {url} stalled mid-stream", "engine at {url} broke the stream: {exc}")


def _trace_headers() -> dict[str, str]:
    """The current trace context as headers (none outside a trace): the OpenTelemetry API's
    global propagator, W3C trace context and baggage unless ``OTEL_PROPAGATORS`` says other."""
    headers: dict[str, str] = {}
    current = get_current()
    if current:  # an empty context (no span, no baggage) has nothing to say
        inject(headers, current)
    return headers


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY``), as httpx honours them, decided once: aiohttp's own
    ``trust_env`` reads the environment and ``~/.netrc`` again on every request."""
    parts = urlsplit(url)
    if proxy_bypass_environment(parts.hostname or ""):
        return None
    proxies = getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all")


def _reset(response: httpx.Response) -> None:
    """Let closing ``response``'s connection reset it (TCP RST) rather than end it: the
    engine's very next write then fails, where after an orderly close one more write gets
    through — a whole prefill step later for a prompt being prefilled (docs/decisions.md,
    "Cancellation")."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None and sock.fileno() >= 0:  # not if the engine closed it already
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Answer(NamedTuple):
    """An engine's whole answer to a unary request."""

    status: int
    content: bytes
    reason: str
    headers: Mapping[str, str] = MappingProxyType({})  # its rate-limit headers (_rate)

    @classmethod
    def of(cls, response: httpx.Response) -> _Answer:
        """A streamed request's answer, once read (an error status)."""
        return cls(response.status_code, response.content, response.reason_phrase, _rate(response))


def _rate(response: Any) -> dict[str, str]:
    """The rate-limit headers of an answer (``Retry-After``, ``X-RateLimit-*``), which the
    proxy passes on to its client with the upstream's error."""
    return {
        k: v
        for k, v in response.headers.items()
        if k.lower() in ("retry-after", "retry-after-ms") or k.lower().startswith("x-ratelimit-")
    }


def _error_message(answer: _Answer) -> tuple[str, Any]:
    try:
        body = from_json(answer.content)
    except ValueError:
        text = answer.content.decode("utf-8", errors="replace")
        return text[:200] or answer.reason, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", "")), body
    if isinstance(body, dict) and "message" in body:
        return str(body["message"]), body
    return json.dumps(body)[:200], body


class EngineClient:
    """Talks to one OpenAI-compatible base URL (``http://host:port/v1``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        http: httpx.AsyncClient | None = None,
        max_connections: int = 256,
        stream_unary: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Completions streamed from the engine and assembled, so that cancelling the caller
        # stops the engine's work (an engine that finishes non-streamed requests regardless).
        self.stream_unary = stream_unary
        # Model names served by another engine than base_url, with that engine's base URL: the
        # embedded engine's published adapter runs in a child of its own (engine/adapters.py).
        # Every other name, the judge's among them, goes to base_url.
        self.routes: dict[str, str] = {}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Credentials in the URL are basic auth, and replace the key, as httpx does with them.
        self._headers = {} if urlsplit(self.base_url).username is not None else headers
        self._max_connections = max_connections
        # The aiohttp session of unary requests, opened on first use (it belongs to the event
        # loop it is opened in). Timeouts as httpx's below: per read, and to get a connection.
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=min(10.0, timeout), sock_read=timeout
        )
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=4.0,  # below llama.cpp's 5 s, so no reuse of a closed socket
            ),
        )

    def _url_for(self, path: str, body: Any) -> str:
        """``path`` under the base URL of the engine that serves ``body``'s model."""
        model = body.get("model") if isinstance(body, dict) else None
        base = self.routes.get(model, self.base_url) if isinstance(model, str) else self.base_url
        return f"{base}/{path.lstrip('/')}"

    def _unary(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    keepalive_timeout=4.0,  # below llama.cpp's 5 s, as for httpx
                ),
                timeout=self._timeout,
                proxy=_env_proxy(self.base_url),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    @contextmanager
    def _engine_errors(self, wording: _Wording = _REQUEST) -> Iterator[None]:
        """httpx's and aiohttp's transport failures inside the block as the project's errors,
        in one place: a timeout is ``EngineTimeout``, any other transport failure
        ``EngineUnavailable``. The messages name the URL, never the key."""
        try:
            yield
        except (httpx.TimeoutException, TimeoutError) as exc:  # aiohttp's are TimeoutErrors
            raise EngineTimeout(wording.timeout.format(url=self.base_url)) from exc
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            raise EngineUnavailable(wording.broken.format(url=self.base_url, exc=exc)) from exc

    async def _send(self, method: str, url: str, body: Any = None) -> _Answer:
        """One unary request (a JSON body, or none) and the engine's whole answer."""
        headers = _trace_headers()
        data = None
        if body is not None:
            data = to_json(body)
            headers["Content-Type"] = "application/json"
        with self._engine_errors():
            async with self._unary().request(method, url, data=data, headers=headers) as response:
                content = await response.read()
                return _Answer(response.status, content, response.reason or "", _rate(response))

    @staticmethod
    def _json(answer: _Answer) -> dict[str, Any]:
        if answer.status >= 400:
            message, body = _error_message(answer)
            raise EngineStatusError(answer.status, message, body, dict(answer.headers))
        try:
            body = from_json(answer.content)
        except ValueError as exc:
            raise EngineError("engine answered with something that is not JSON") from exc
        if not isinstance(body, dict):
            raise EngineError("engine answered with JSON that is not an object")
        return body

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming chat completion; the body is sent as given (with
        ``stream_unary``, as a stream whose chunks are assembled)."""
        if self.stream_unary:
            result = await self._assembled("chat/completions", body)
        else:
            url = self._url_for("chat/completions", body)
            result = self._json(await self._send("POST", url, body))
        if not isinstance(result.get("choices"), list) or not result["choices"]:
            raise EngineError("engine answered a chat completion without choices")
        return result

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming legacy completion (``/v1/completions``); the body as given."""
        if self.stream_unary:
            return await self._assembled("completions", body)
        return self._json(await self._send("POST", self._url_for("completions", body), body))

    async def chat_watched(
        self, body: dict[str, Any], watch: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """``chat``'s answer, always asked for as a stream: ``watch`` sees each parsed chunk as
        it arrives (the review reads a growing answer: ``conscience.ahead``)."""
        result = await self._assembled("chat/completions", body, watch)
        if not isinstance(result.get("choices"), list) or not result["choices"]:
            raise EngineError("engine answered a chat completion without choices")
        return result

    async def _assembled(
        self,
        path: str,
        body: dict[str, Any],
        watch: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """The unary answer to ``body``, asked for as a stream (``stream_unary``)."""
        streamed = {**body, "stream_options": {"include_usage": True}}
        chunks = []
        async for chunk in self._stream(self._url_for(path, body), streamed):
            if watch is not None:
                watch(chunk)
            chunks.append(chunk)
        return assemble(chunks)

    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streaming chat completion, one parsed chunk at a time (``[DONE]`` ends it)."""
        return self._stream(self._url_for("chat/completions", body), body)

    async def _stream(self, url: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The parsed chunks of ``body`` streamed from ``url``, to ``[DONE]`` (the OpenAI
        routes) or to the chunk that says ``stop`` (llama.cpp's native ``/completion``)."""
        asked = {**body, "stream": True}
        if self.stream_unary:  # the embedded engine writes its prefill's progress (module doc)
            asked["return_progress"] = True
        # llama.cpp closes a connection after a stream without saying so: never reuse it.
        request = self._http.build_request(
            "POST",
            url,
            json=asked,
            headers={"Connection": "close", **_trace_headers()},
        )
        with self._engine_errors():
            response = await self._http.send(request, stream=True)
        ended = False
        try:
            with self._engine_errors(_STREAM):
                if response.status_code >= 400:
                    await response.aread()
                    self._json(_Answer.of(response))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        ended = True
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise EngineError("engine streamed a chunk that is not JSON") from exc
                    if self.stream_unary and "prompt_progress" in chunk:
                        continue  # asked for above, for the engine's sake only
                    yield chunk
                    if chunk.get("stop") is True:  # the native route's last chunk
                        ended = True
                        return
        finally:
            if not ended:  # left mid-stream (cancelled, or the caller stopped reading)
                _reset(response)
            await response.aclose()

    async def embeddings(self, body: dict[str, Any]) -> list[list[float]]:
        """``/v1/embeddings``: one vector per input, in the inputs' order."""
        result = self._json(await self._send("POST", self._url("embeddings"), body))
        data = result.get("data")
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise EngineError("engine answered embeddings without a data list")
        return [d["embedding"] for d in sorted(data, key=lambda d: d.get("index", 0))]

    async def apply_template(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text the engine's chat template makes of ``messages``, ending where the
        assistant's reply would begin (llama.cpp's ``/apply-template``, beside ``/v1``)."""
        root = self.base_url.removesuffix("/v1")
        answer = await self._send("POST", f"{root}/apply-template", {"messages": messages})
        prompt = self._json(answer).get("prompt")
        if not isinstance(prompt, str):
            raise EngineError("engine answered /apply-template without a prompt")
        return prompt

    async def llama_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """llama.cpp's native ``/completion`` (beside ``/v1``), unary: what the OpenAI routes do
        not offer, such as many tokens' post-sampling probabilities (engine/hidden_state.py).
        With ``stream_unary``, streamed and assembled like ``chat``, so that a caller who
        leaves during the prompt's prefill frees the engine at its next step."""
        url = f"{self.base_url.removesuffix('/v1')}/completion"
        if self.stream_unary:
            return assemble_native([chunk async for chunk in self._stream(url, body)])
        return self._json(await self._send("POST", url, body))

    async def models(self) -> dict[str, Any]:
        """``/v1/models``, plus an entry for each name routed to another engine."""
        listing = self._json(await self._send("GET", self._url("models")))
        if self.routes and isinstance(listing.get("data"), list):
            owner = next((m.get("owned_by") for m in listing["data"] if isinstance(m, dict)), None)
            listed = {m.get("id") for m in listing["data"] if isinstance(m, dict)}
            listing["data"] += [
                {"id": name, "object": "model", "owned_by": owner, "created": 0}
                for name in self.routes
                if name not in listed
            ]
        return listing

    async def detect_constraint(self, model: str) -> Constraint:
        """Ask ``/v1/models`` who serves ``model`` and pick the constraint it supports."""
        listing = await self.models()
        entries = [m for m in listing.get("data", []) if isinstance(m, dict)]
        owners = [m.get("owned_by") for m in entries if m.get("id") == model]
        owners = owners or [m.get("owned_by") for m in entries]
        return constraint_for_owner(owners[0] if owners else None)
