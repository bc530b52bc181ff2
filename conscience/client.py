"""An async client for any OpenAI-compatible engine, over one pooled ``httpx.AsyncClient``.

Transport failures become the project's errors (``EngineUnavailable``, ``EngineTimeout``,
``EngineStatusError``) so callers never see an httpx exception, and the API key never appears
in any message. Every request carries the current W3C trace context (``traceparent``,
``tracestate``) when there is one, so that an engine that traces joins the caller's trace.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import httpx
from opentelemetry.context import get_current
from opentelemetry.propagate import inject

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


def _error_message(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase, None
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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Model names served by a LoRA adapter of a llama.cpp engine, with the adapter's index
        # (set by the engine layer when the embedded engine loads adapters); other names, the
        # judge's among them, get the base model with every adapter off.
        self.adapters: dict[str, int] = {}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
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

    def _routed(self, body: Any) -> Any:
        """``body`` with llama.cpp's per-request adapter scales when adapters are loaded: the
        embedded engine serves every name from one model, so the name alone selects nothing.

        The scales are always sent, every adapter at 0 but the one the model names: a request
        without ``lora`` gets the base model too, but llama.cpp (2026.10) then reuses a prompt
        cache computed with an adapter on — the judge would read the adapter's keys and values.
        """
        if not self.adapters or not isinstance(body, dict):
            return body
        chosen = self.adapters.get(body.get("model"))
        scales = [
            {"id": i, "scale": float(i == chosen)} for i in sorted(set(self.adapters.values()))
        ]
        return {**body, "lora": scales}

    async def aclose(self) -> None:
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
        """httpx's transport failures inside the block as the project's errors, in one place
        (as httpx maps its transport's exceptions): a timeout is ``EngineTimeout``, any other
        transport failure ``EngineUnavailable``. The messages name the URL, never the key."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise EngineTimeout(wording.timeout.format(url=self.base_url)) from exc
        except httpx.TransportError as exc:
            raise EngineUnavailable(wording.broken.format(url=self.base_url, exc=exc)) from exc

    async def _send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        with self._engine_errors():
            return await self._http.request(
                method, self._url(path), json=self._routed(body), headers=_trace_headers()
            )

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            message, body = _error_message(response)
            raise EngineStatusError(response.status_code, message, body)
        try:
            body = response.json()
        except ValueError as exc:
            raise EngineError("engine answered with something that is not JSON") from exc
        if not isinstance(body, dict):
            raise EngineError("engine answered with JSON that is not an object")
        return body

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming chat completion; the body is sent as given."""
        result = self._json(await self._send("POST", "chat/completions", body))
        if not isinstance(result.get("choices"), list) or not result["choices"]:
            raise EngineError("engine answered a chat completion without choices")
        return result

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streaming chat completion, one parsed chunk at a time (``[DONE]`` ends it)."""
        # llama.cpp closes a connection after a stream without saying so: never reuse it.
        request = self._http.build_request(
            "POST",
            self._url("chat/completions"),
            json=self._routed({**body, "stream": True}),
            headers={"Connection": "close", **_trace_headers()},
        )
        with self._engine_errors():
            response = await self._http.send(request, stream=True)
        try:
            with self._engine_errors(_STREAM):
                if response.status_code >= 400:
                    await response.aread()
                    self._json(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        yield json.loads(data)
                    except ValueError as exc:
                        raise EngineError("engine streamed a chunk that is not JSON") from exc
        finally:
            await response.aclose()

    async def embeddings(self, body: dict[str, Any]) -> list[list[float]]:
        """``/v1/embeddings``: one vector per input, in the inputs' order."""
        result = self._json(await self._send("POST", "embeddings", body))
        data = result.get("data")
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise EngineError("engine answered embeddings without a data list")
        return [d["embedding"] for d in sorted(data, key=lambda d: d.get("index", 0))]

    async def apply_template(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text the engine's chat template makes of ``messages``, ending where the
        assistant's reply would begin (llama.cpp's ``/apply-template``, beside ``/v1``)."""
        root = self.base_url.removesuffix("/v1")
        with self._engine_errors():
            response = await self._http.post(
                f"{root}/apply-template", json={"messages": messages}, headers=_trace_headers()
            )
        prompt = self._json(response).get("prompt")
        if not isinstance(prompt, str):
            raise EngineError("engine answered /apply-template without a prompt")
        return prompt

    async def models(self) -> dict[str, Any]:
        """``/v1/models``, plus an entry for each adapter name the engine serves by index."""
        listing = self._json(await self._send("GET", "models"))
        if self.adapters and isinstance(listing.get("data"), list):
            owner = next((m.get("owned_by") for m in listing["data"] if isinstance(m, dict)), None)
            listed = {m.get("id") for m in listing["data"] if isinstance(m, dict)}
            listing["data"] += [
                {"id": name, "object": "model", "owned_by": owner, "created": 0}
                for name in self.adapters
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
