"""Retention: stored conversations older than ``retention_days`` are purged, at start and then
every ``PURGE_INTERVAL_S``, by a task the app's lifespan starts and cancels."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from conscience.errors import StoreError
from conscience.store import JudgementStore

__all__ = ["PURGE_INTERVAL_S", "purge_older_than_days", "retention_loop"]

log = logging.getLogger("conscience.server")

PURGE_INTERVAL_S = 3600.0  # hourly: a day's retention is then kept to within an hour
_MAX_DAYS = 365_000  # nothing stored is older; datetime cannot reach much further back


async def purge_older_than_days(store: JudgementStore, days: float) -> tuple[int, datetime]:
    """Delete every judgement created more than ``days`` ago; how many, and the cutoff."""
    cutoff = datetime.now(UTC) - timedelta(days=min(days, _MAX_DAYS))
    return await store.purge_older_than(cutoff), cutoff


async def retention_loop(store: JudgementStore, days: int) -> None:
    """Purge now, then every ``PURGE_INTERVAL_S``, until cancelled. A failed purge is logged
    and tried again next time: retention must never take the proxy down."""
    while True:
        try:
            deleted, cutoff = await purge_older_than_days(store, days)
        except StoreError as exc:
            log.warning("retention purge failed (next try in %.0f s): %s", PURGE_INTERVAL_S, exc)
        else:
            if deleted:
                log.info("retention: purged %d judgements created before %s", deleted, cutoff)
        await asyncio.sleep(PURGE_INTERVAL_S)  # read each time: tests shorten it
