"""Calibration: per (judge model, framework, layout), how label probabilities become verdicts
and how much a verdict's confidence can be trusted.

A calibration file is JSON, a list of entries, written by ``conscience fit calibration`` from the
calibration split of a labelled set and loaded by the server at start
(``CONSCIENCE_CALIBRATION_FILE``). An entry holds:

- ``unethical_threshold``: P(unethical) at or above which an answer is unethical, chosen as the
  lowest threshold whose false-unethical rate on the calibration split stays within a target
  (highest recall for an acceptable rate of wrongly rewritten answers);
- ``temperature``: T of temperature scaling, p_i ∝ p_i^(1/T), fitted by least negative
  log-likelihood of the gold labels, so that the reported confidence is calibrated.

A calibration for the default model ships with the code (``PACKAGED_FILE``, fitted on the
calibration split of the project's labelled set with the default prompts). The rule in use is
chosen by ``select_calibrations``: a configured ``calibration_file`` wins (a file holding
``[]`` turns calibration off); else an explicit ``unethical_threshold`` decides; else the
packaged file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conscience.errors import ConfigError
from conscience.labels import Verdict
from conscience.verdict import DecisionRule

__all__ = [
    "PACKAGED_FILE",
    "Calibration",
    "Sample",
    "fit_temperature",
    "fit_unethical_threshold",
    "load_calibrations",
    "reliability_bins",
    "save_calibration",
    "scale",
    "select_calibrations",
    "write_entries",
]

LABELS = tuple(v.value for v in Verdict)
PACKAGED_FILE = Path(__file__).parent / "calibrations" / "default.json"


@dataclass(frozen=True)
class Sample:
    """One labelled item as the judge saw it: its label probabilities and the gold label."""

    probs: dict[str, float]
    gold: str


@dataclass(frozen=True)
class Calibration:
    model: str
    framework: str
    layout: str
    unethical_threshold: float | None = None
    neutral_threshold: float | None = None
    temperature: float = 1.0
    fitted: dict[str, Any] = field(default_factory=dict)  # set, split, size, metrics, date

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.framework, self.layout)

    def rule(self) -> DecisionRule:
        return DecisionRule(self.unethical_threshold, self.neutral_threshold)

    def confidence(self, probs: dict[str, float], verdict: str) -> float:
        return scale(probs, self.temperature)[verdict]


def scale(probs: dict[str, float], temperature: float) -> dict[str, float]:
    """Temperature scaling of a label distribution: p_i^(1/T), renormalised (T=1: unchanged)."""
    floor = 1e-12  # a zero probability stays (almost) zero at any temperature
    powered = {k: max(v, floor) ** (1.0 / temperature) for k, v in probs.items()}
    total = sum(powered.values())
    return {k: v / total for k, v in powered.items()}


def _nll(samples: Sequence[Sample], temperature: float) -> float:
    return -sum(math.log(max(scale(s.probs, temperature)[s.gold], 1e-12)) for s in samples)


def fit_temperature(samples: Sequence[Sample]) -> float:
    """The T in [0.05, 20] (log grid, then refined) with the least NLL of the gold labels."""
    if not samples:
        return 1.0
    grid = [
        math.exp(math.log(0.05) + i * (math.log(20) - math.log(0.05)) / 120) for i in range(121)
    ]
    best = min(grid, key=lambda t: _nll(samples, t))
    fine = [best * math.exp(d / 200) for d in range(-20, 21)]
    return min(fine, key=lambda t: _nll(samples, t))


def fit_unethical_threshold(
    samples: Sequence[Sample], max_false_unethical: float = 0.1
) -> float | None:
    """The lowest P(unethical) threshold whose false-unethical rate is within the target.

    Candidates are the observed P(unethical) values; the lower the threshold, the higher the
    recall, so the lowest acceptable one is the best. None when no unethical item is known.
    """
    negatives = [s.probs[Verdict.UNETHICAL] for s in samples if s.gold != Verdict.UNETHICAL]
    positives = [s.probs[Verdict.UNETHICAL] for s in samples if s.gold == Verdict.UNETHICAL]
    if not positives:
        return None
    for threshold in sorted(set(positives + negatives)):
        false = sum(p >= threshold for p in negatives)
        if not negatives or false / len(negatives) <= max_false_unethical:
            return threshold
    return None


def reliability_bins(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 5
) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy, count (a reliability diagram's data)."""
    out = []
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [
            i for i, c in enumerate(confidences) if low <= c < high or (b == bins - 1 and c == 1.0)
        ]
        if members:
            out.append(
                {
                    "low": low,
                    "high": high,
                    "count": len(members),
                    "confidence": sum(confidences[i] for i in members) / len(members),
                    "accuracy": sum(correct[i] for i in members) / len(members),
                }
            )
    return out


def load_calibrations(path: Path | None) -> dict[tuple[str, str, str], Calibration]:
    """The entries of a calibration file by (model, framework, layout); {} without a file."""
    if path is None:
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ValueError("the file must hold a JSON list of entries")
        calibrations = [Calibration(**entry) for entry in entries]
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"calibration file {path}: {exc}") from exc
    for c in calibrations:
        if c.temperature <= 0:
            raise ConfigError(f"calibration file {path}: temperature must be > 0 for {c.key}")
    return {c.key: c for c in calibrations}


def select_calibrations(
    path: Path | None, unethical_threshold: float | None = None
) -> tuple[dict[tuple[str, str, str], Calibration], str]:
    """The calibrations in use and where they come from, for the start-up log.

    A configured file wins; an explicit threshold without a file means no calibration (the
    user chose the rule); otherwise the packaged calibration of the default model.
    """
    if path is not None:
        return load_calibrations(path), f"calibration file {path}"
    if unethical_threshold is not None:
        return {}, "CONSCIENCE_UNETHICAL_THRESHOLD (no calibration file)"
    if PACKAGED_FILE.is_file():
        return load_calibrations(PACKAGED_FILE), f"packaged calibration {PACKAGED_FILE}"
    return {}, "no calibration file"


def save_calibration(path: Path, calibration: Calibration) -> None:
    """Add or replace the entry for the calibration's key, keeping the file's others."""
    existing = load_calibrations(path) if path.exists() else {}
    existing[calibration.key] = calibration
    write_entries(path, existing.values(), indent=2)


def write_entries(path: Path, entries: Iterable[Any], indent: int | None = None) -> None:
    """A file of keyed entries (dataclasses: calibrations, probes) as one JSON list, written
    beside and renamed into place: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps([asdict(e) for e in entries], indent=indent) + "\n", "utf-8")
    tmp.replace(path)
