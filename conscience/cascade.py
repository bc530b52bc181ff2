"""A second opinion where the first is in doubt: two probe reviews in a cascade.

The first review reads the answer in a cheap layout (``follow-up-brief``: about fifty tokens
after the generation, whose own tokens the engine has cached); the second in a layout that
reads better and costs a prefill of the whole answer (``paper``). A band ``[lo, hi)`` of the
first probe's score ``s1 = P(unethical)`` says where the first is in doubt::

    unethical                       if s1 >= hi
    ethical                         if s1 <  lo
    the second probe's verdict      otherwise: the answer is escalated

so most answers pay the cheap review only. The band contains the first probe's threshold
(outside it the first verdict stands unchanged); it is chosen on the train split's
out-of-fold scores, the least escalated band whose F1 reaches the second review's alone
(``conscience fit bands --choose-on ... --save``; docs/decisions.md,
"A second opinion"). A band file holds one band per (judge model, framework, first layout,
second layout); the packaged one covers the default model's built-in frameworks for
``follow-up-brief`` then ``paper``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conscience.calibration import write_entries
from conscience.errors import ConfigError

__all__ = ["PACKAGED_BANDS", "Band", "escalated", "load_bands", "save_band"]

PACKAGED_BANDS = Path(__file__).parent / "calibrations" / "cascade.json"


@dataclass(frozen=True)
class Band:
    model: str  # the judge model both probes read
    framework: str
    first: str  # the first review's layout
    then: str  # the second opinion's layout
    lo: float  # the first probe's scores in [lo, hi) are escalated
    hi: float
    fitted: dict[str, Any] = field(default_factory=dict)  # runs, figures, date

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.framework, self.first, self.then)

    def doubts(self, score: float) -> bool:
        """Is the first probe's ``score`` in the band, where the second opinion decides?"""
        return self.lo <= score < self.hi


def escalated(readings: dict[str, float] | None) -> bool:
    """Was the second opinion asked? A judgement's ``readings`` hold the first layout's
    P(unethical) alone when the band was sure, and the second's beside it when it doubted."""
    return len(readings or {}) > 1


def _band_of(entry: Any) -> Band:
    band = Band(**entry)
    if not 0.0 <= band.lo <= band.hi <= 1.0:
        raise ValueError(f"{band.key}: the band needs 0 <= lo <= hi <= 1, not {band.lo}, {band.hi}")
    if band.first == band.then:
        raise ValueError(f"{band.key}: a second opinion in the first review's own layout")
    return band


def load_bands(path: Path) -> dict[tuple[str, str, str, str], Band]:
    """The bands of a file by (model, framework, first layout, second layout)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        bands = [_band_of(entry) for entry in data]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"band file {path}: {exc}") from exc
    by_key = {band.key: band for band in bands}
    if len(by_key) != len(bands):
        raise ConfigError(f"band file {path}: two bands for the same model, framework, layouts")
    return by_key


def save_band(path: Path, band: Band) -> None:
    """Add or replace the band for its key, keeping the file's others; written whole or not at
    all."""
    existing = load_bands(path) if path.exists() else {}
    existing[band.key] = band
    write_entries(path, existing.values(), indent=1)
