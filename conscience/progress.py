"""Progress of long work, seen wherever it runs: a bar on a terminal, log lines elsewhere.

A benchmark or a training run under ``nohup``, cron, Docker or CI has no terminal, and a
progress bar there is either silent or a wall of carriage returns. ``Progress`` draws tqdm's
bar when stderr is a terminal, and otherwise logs one line at most every ``every_s`` seconds
and one at the end::

    verdicts: 120/1070 (11%), 0.85/s, ETA 18m37s

The rate counts only the work done in this run: items a resumed run found already done are
in ``done`` and the percentage, not in the rate, so the ETA of a resumed run is honest.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

__all__ = ["Progress", "format_seconds"]

log = logging.getLogger("conscience.progress")


def format_seconds(seconds: float) -> str:
    """``3h02m``, ``18m37s``, ``42s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Count ``update(n)`` calls towards ``total``; use as a context manager."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        done: int = 0,
        unit: str = "it",
        every_s: float = 30.0,
        terminal: bool | None = None,
        logger: logging.Logger = log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.done = done
        self._resumed = done
        self._every_s = every_s
        self._log = logger
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._unit = unit
        self._postfix: dict[str, object] = {}
        if terminal is None:
            terminal = sys.stderr.isatty()
        self._bar: Any = None
        if terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, desc=desc, unit=unit)

    def line(self) -> str:
        """Where the work stands, as one line."""
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.desc}: {self.done}/{self.total}{share}"
        elapsed = self._clock() - self._started
        new = self.done - self._resumed
        if new > 0 and elapsed > 0:
            rate = new / elapsed
            # Slow work (a training step of minutes) reads better as seconds per item.
            text += f", {rate:.2f}/s" if rate >= 0.1 else f", {1 / rate:.0f} s/{self._unit}"
            if self.done < self.total:
                text += f", ETA {format_seconds((self.total - self.done) / rate)}"
        for name, value in self._postfix.items():
            text += f", {name} {value}"
        return text

    def set_postfix(self, **fields: object) -> None:
        """Figures shown after the count (the bar's postfix, or the end of the log line)."""
        self._postfix = fields
        if self._bar is not None:
            self._bar.set_postfix(**fields)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last_line >= self._every_s:
            self._last_line = now
            self._log.info("%s", self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._log.info("%s", self.line())

    def __enter__(self) -> Self:
        if self._bar is None:
            self._log.info("%s", self.line())  # the start, with what a resume found done
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
