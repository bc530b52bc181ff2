"""The wall-clock budget of a run (``--max-minutes``): whether one more step still fits.

A night has an end. The loop asks at every optimizer-step boundary; the answer is yes while

    time used + longest step so far + what must follow the step <= budget,

so a run stops *before* the step that would overrun it, never in the middle of one. "What must
follow" is the caller's estimate of the work after the last step (the finished adapter's
measurement, which the publishing gate reads): a budget bounds the whole run, not only its
steps. The clock starts with the run, so loading the model and the reference pass count too.
The first step of a run with time left always starts: there is no measure of a step before it.
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

    @staticmethod
    def now() -> float:
        """The budget's clock (monotonic seconds): time with it the work a caller prices."""
        return monotonic()

    def used(self) -> float:
        return monotonic() - self.started

    def allows_step(self, then: float = 0.0) -> bool:
        """Call at every step boundary (before the step): whether the next step, and ``then``
        seconds of work after it, fit."""
        now = monotonic()
        if self._boundary is not None:
            self.longest = max(self.longest, now - self._boundary)
        self._boundary = now
        return self.seconds is None or (now - self.started) + self.longest + then <= self.seconds
