"""Cancellation: the work of a request whose client left, or whose deadline passed, stops.

A plain ASGI middleware around every HTTP request. Once the request's body has been read, it
listens for the client's ``http.disconnect``; when one comes before the response ended, or when
``request_timeout`` passes, the request's task is cancelled where it waits. Its upstream calls
(the generation, the review, the rewrite) are cancelled with it and their connections to the
engine closed, which is what stops the engine's work (the embedded engine is asked for streams
for that reason, ``conscience/chunks.py``); nothing after that point runs, so no judgement of a
cancelled request is stored. ``conscience_cancelled_total{reason}`` counts them.

What the client gets: nothing when it left (logged with status 499, nginx's "client closed
request"); on a deadline, ``504 request_timeout`` when no header was sent yet, else an error
event that ends the stream (any other body just ends).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conscience.server.errors import error_response
from conscience.server.sse import sse

__all__ = ["Cancellation"]

CLIENT_CLOSED = 499  # the status logged for a request whose client left (nginx's)


class _Exchange:
    """One request's messages: whether its body was read, its response begun and ended."""

    def __init__(self, receive: Receive, send: Send, deadline: asyncio.Timeout) -> None:
        self._receive = receive
        self._send = send
        self.deadline = deadline
        self.gone = asyncio.Event()  # the client disconnected before the response ended
        self.watcher: asyncio.Task[None] | None = None
        self.started = False
        self.event_stream = False
        self.ended = False

    async def receive(self) -> Message:
        if self.watcher is not None:  # after the body only a disconnect can come: it watches
            await self.gone.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self.watcher = asyncio.create_task(self._watch())
        return message

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # A server answers receive with a disconnect once the response is sent: not a leave.
        if not self.ended and not self.deadline.expired():
            self.deadline.reschedule(asyncio.get_running_loop().time())  # cancel the work now
            self.gone.set()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers", []))
            self.event_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self._send(message)

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher

    async def end(self, scope: Scope, reason: str, limit_s: float | None) -> None:
        """What is left to send once the work was cancelled (see the module)."""
        with contextlib.suppress(OSError):  # ASGI 2.4 servers raise it for a gone client
            if reason == "disconnect":
                if not self.started:  # dropped by the server; logged as 499 on the way out
                    await self.send({"type": "http.response.start", "status": CLIENT_CLOSED})
                await self.send({"type": "http.response.body", "body": b""})
                return
            message = f"the request did not finish within {limit_s:g} s (request_timeout)"
            if not self.started:
                response = error_response(504, message, code="request_timeout")
                await response(scope, self.receive, self.send)
                return
            body = b""
            if self.event_stream:
                error = {"message": message, "type": "server_error", "param": None}
                body = sse({"error": {**error, "code": "request_timeout"}})
            await self.send({"type": "http.response.body", "body": body})


class Cancellation:
    """Cancel a request's work when its client leaves or ``timeout`` seconds pass (None:
    no deadline)."""

    def __init__(self, app: ASGIApp, *, timeout: float | None) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.timeout(self.timeout)
        exchange = _Exchange(receive, send, deadline)
        try:
            async with deadline:
                await self.app(scope, exchange.receive, exchange.send)
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours
            reason = "disconnect" if exchange.gone.is_set() else "deadline"
            _count(scope, reason)
            if not exchange.ended:
                await exchange.end(scope, reason, self.timeout)
        finally:
            await exchange.close()


def _count(scope: Scope, reason: str) -> None:
    app: Any = scope.get("app")
    pipeline = getattr(getattr(app, "state", None), "pipeline", None)
    if pipeline is not None:
        pipeline.metrics.cancelled.labels(reason).inc()
