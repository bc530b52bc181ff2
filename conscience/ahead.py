"""Review while generating: the judge's work on an answer starts before the answer ends.

Two kinds of work can be done while the model is still writing, one per judge method:

- ``WindowsAhead`` (the probe): the probe reads a long answer in windows of
  ``max_answer_chars`` (``review.answer_windows``), and a window whose last character has been
  generated can no longer change, so every window of the finished answer but the last is known
  while the model is still writing. Their hidden states are read in the background, one at a
  time, keyed by the exact review prompt (framework, conversation, window); the review at the
  end uses a hidden state only for a prompt it would have sent itself.
- ``PrefixAhead`` (the single review): the judge's prompt up to the answer so far is sent to
  the engine as a one-token completion every ``every_chars`` of new text, so the engine's
  prefix cache (llama.cpp, vLLM) holds it; the review at the end sends its usual request and
  only the tokens after the cached prefix are prefilled.

Either way the review's requests at the end are the ones it sends without work ahead, so the
verdict is the same; only the time after the last token changes. An answer with reasoning
(``<think>`` or a reasoning field) gets no work ahead (its prompt carries the whole reasoning,
known only at the end), and a failed piece of work ahead is simply done again at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from conscience.errors import ConscienceError
from conscience.prompts import message_text

__all__ = ["ChunkFollower", "PrefixAhead", "ReviewAhead", "WindowsAhead", "prompt_key"]

log = logging.getLogger("conscience.ahead")

Message = dict[str, Any]
HiddenState = Callable[[list[Message]], Awaitable[list[float]]]
RenderWindow = Callable[[str], list[Message]]


def prompt_key(prompt: list[Message]) -> str:
    """The identity of a review prompt: its messages, exactly."""
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


class ReviewAhead(ABC):
    """Work on one growing answer (see the module): ``grow(text)`` is called with the whole
    answer so far, ``stop()`` when it gains reasoning, ``close()`` when the review is done."""

    stopped: bool = False

    @abstractmethod
    def grow(self, text: str) -> None:
        """Start whatever work ``text`` (the whole answer so far) makes possible."""

    def stop(self) -> None:
        """No more work (the answer gained reasoning); what was started stays."""
        self.stopped = True

    def _visible(self, text: str) -> str | None:
        """What the review will read of ``text`` (stripped), or None once there is no more
        work: stopped, or a ``<think>`` appeared (the review moves it into its prompt)."""
        if not self.stopped and "<think" in text.lower():
            self.stopped = True
        return None if self.stopped else message_text({"content": text})

    async def hidden(self, prompt: list[Message]) -> list[float] | None:
        """A hidden state read ahead for exactly ``prompt``, or None."""
        return None

    @abstractmethod
    async def close(self) -> None:
        """Cancel the work still pending and wait until it has stopped."""


class WindowsAhead(ReviewAhead):
    """The hidden states of one growing answer's completed windows, read in the background.

    ``render(window)`` is the review prompt the probe would send for ``window`` and
    ``read(prompt)`` the engine call that returns its hidden state. ``grow(text)`` is called
    with the whole answer so far; ``hidden(prompt)`` returns the state read ahead for that
    exact prompt (waiting for it if it is being read), or None. ``close()`` cancels what is
    left; a review that ended early (a blocked stream, a cancelled request) wastes nothing more.
    """

    def __init__(self, render: RenderWindow, read: HiddenState, window_chars: int) -> None:
        self._render = render
        self._read = read
        self.window_chars = window_chars
        self._step = max(1, window_chars - window_chars // 10)  # answer_windows' overlap
        self._next_start = 0  # where the next window not yet scheduled begins
        self._tasks: dict[str, asyncio.Task[list[float]]] = {}
        self._turn = asyncio.Lock()  # one window at a time: the generation keeps its slot

    @property
    def scheduled(self) -> int:
        return len(self._tasks)

    def grow(self, text: str) -> None:
        """Schedule every window of ``text`` (the answer so far) that is now complete."""
        visible = self._visible(text)
        if visible is None:
            return
        while self._next_start + self.window_chars <= len(visible):
            window = visible[self._next_start : self._next_start + self.window_chars]
            prompt = self._render(window)
            key = prompt_key(prompt)
            if key not in self._tasks:
                self._tasks[key] = asyncio.create_task(self._read_in_turn(prompt))
            self._next_start += self._step

    async def _read_in_turn(self, prompt: list[Message]) -> list[float]:
        async with self._turn:
            return await self._read(prompt)

    async def hidden(self, prompt: list[Message]) -> list[float] | None:
        """The hidden state read ahead for ``prompt``; None if none was (or it failed)."""
        task = self._tasks.get(prompt_key(prompt))
        if task is None or task.cancelled():
            return None
        try:
            return await asyncio.shield(task)
        except ConscienceError as exc:
            log.info("a window read ahead failed (%s); it is read again", exc)
            return None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                return None  # the work ahead was closed, not this review
            raise

    async def close(self) -> None:
        """Cancel the work still pending and wait until it has stopped."""
        pending = [task for task in self._tasks.values() if not task.done()]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, ConscienceError):
                await task
        for task in self._tasks.values():  # retrieve failures nobody awaited: no warnings
            if task.done() and not task.cancelled():
                task.exception()


class PrefixAhead(ReviewAhead):
    """The single review's prompt, prefilled in the engine as the answer grows.

    ``warm(visible)`` sends the engine the review's prompt up to the end of the answer so far,
    for one token, which leaves it in the engine's prefix cache. One warm-up is in flight at a
    time; a new one starts when ``every_chars`` of answer arrived since the last, and none past
    ``max_chars`` (longer answers are reviewed in windows whose prompts start otherwise).
    """

    def __init__(
        self, warm: Callable[[str], Awaitable[None]], every_chars: int, max_chars: int
    ) -> None:
        self._warm = warm
        self.every_chars = every_chars
        self.max_chars = max_chars
        self._latest = ""  # the visible answer so far
        self._warmed = 0  # the length of the answer the last warm-up covered
        self._task: asyncio.Task[None] | None = None
        self.warm_ups = 0  # sent so far

    def grow(self, text: str) -> None:
        visible = self._visible(text)
        if visible is None:
            return
        self._latest = visible
        if len(self._latest) > self.max_chars:
            self.stopped = True
            return
        self._maybe_warm()

    def _maybe_warm(self) -> None:
        if self.stopped or (self._task is not None and not self._task.done()):
            return
        if len(self._latest) - self._warmed < self.every_chars:
            return
        self._warmed = len(self._latest)
        self._task = asyncio.create_task(self._warm_up(self._latest))

    async def _warm_up(self, visible: str) -> None:
        try:
            await self._warm(visible)
            self.warm_ups += 1
        except ConscienceError as exc:
            log.info("a warm-up of the judge's prompt failed (%s); it is not retried", exc)
            self.stopped = True
            return
        self._task = None
        self._maybe_warm()  # the answer may have grown meanwhile

    async def close(self) -> None:
        self.stopped = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConscienceError):
                await task


class ChunkFollower:
    """The answers of a streamed completion as their chunks arrive, each followed by its own
    ``ReviewAhead`` (made by ``make``; None: this review has no work ahead)."""

    def __init__(self, make: Callable[[], ReviewAhead | None]) -> None:
        self._make = make
        self._texts: dict[int, str] = {}
        self.aheads: dict[int, ReviewAhead | None] = {}

    def see(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            if index not in self.aheads:
                self.aheads[index] = self._make()
            ahead = self.aheads[index]
            delta = choice.get("delta")
            if ahead is None or not isinstance(delta, dict):
                continue
            if delta.get("reasoning_content") or delta.get("reasoning"):
                ahead.stop()  # the review's prompt will carry the reasoning: no window matches
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._texts[index] = self._texts.get(index, "") + content
                ahead.grow(self._texts[index])

    def ahead(self, index: int) -> ReviewAhead | None:
        return self.aheads.get(index)

    async def close(self) -> None:
        for ahead in self.aheads.values():
            if ahead is not None:
                await ahead.close()
