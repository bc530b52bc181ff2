"""The wall-clock budget of a run (``--max-minutes``): whether one more step still fits.

A night has an end. The loop asks at every optimizer-step boundary; the answer is yes while the
time used plus the longest step so far stays within the budget, so a run stops *before* the step
that would overrun it, never in the middle of one. The clock starts with the run, so loading the
model and the reference pass count too. The first step of a run with time left always starts:
there is no measure of a step before it.
"""

from __future__ import annotations

from time import monotonic

__all__ = ["Budget"]


class Budget:
    """``seconds`` of wall clock from now (``None``: no limit)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.started = monotonic()
        self.longest = 0.0  # the longest step so far (boundary to boundary, everything counted)
        self._boundary: float | None = None

    def used(self) -> float:
        return monotonic() - self.started

    def allows_step(self) -> bool:
        """Call at every step boundary (before the step): whether the next step fits."""
        now = monotonic()
        if self._boundary is not None:
            self.longest = max(self.longest, now - self._boundary)
        self._boundary = now
        return self.seconds is None or (now - self.started) + self.longest <= self.seconds
