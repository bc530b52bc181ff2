"""Run many coroutines with at most N in flight; the first failure stops the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["run_bounded"]

T = TypeVar("T")
R = TypeVar("R")


async def run_bounded(
    items: Iterable[T],
    work: Callable[[T], Awaitable[R]],
    concurrency: int,
    on_done: Callable[[T, R], None] | None = None,
) -> list[R]:
    """``work(item)`` for every item, ``concurrency`` at a time; results in item order.

    ``on_done`` runs on the event loop as each item finishes (where a benchmark appends its
    record and ticks its progress bar). The first exception cancels the items still running
    and is raised as itself, not wrapped in an ExceptionGroup, so the CLI can report it.
    """
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(item: T) -> R:
        async with semaphore:
            result = await work(item)
        if on_done is not None:
            on_done(item, result)
        return result

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        # Let cancelled tasks finish unwinding before the caller closes their clients.
        await asyncio.gather(*tasks, return_exceptions=True)
