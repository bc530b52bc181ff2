"""From the judge's output to a verdict: label probabilities, the decision, the strict parser.

The verdict is a decision on label probabilities, not whatever greedy decoding lands on. The
three labels begin with different letters (e, n, u), so the first visible token of the reply
already says which label the judge is heading for; the probability of a label is the summed
probability of every candidate first token that is a prefix of one of its surface forms
(``"un"``, ``" Un"``, ``"unethical"``, ``"ETH"`` ...). That sums over tokenizations and over
leading-space and capitalised forms in one pass over ``top_logprobs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from conscience.errors import VerdictError
from conscience.labels import JudgeMethod, Verdict

__all__ = [
    "LABEL_SURFACE_FORMS",
    "DecisionRule",
    "VerdictReading",
    "at_threshold",
    "label_probs_from_logprobs",
    "parse_label_text",
    "read_verdict",
]

LABELS = tuple(v.value for v in Verdict)
# What an engine may be allowed to emit for each label; the constraint admits all of them.
LABEL_SURFACE_FORMS: tuple[str, ...] = tuple(
    prefix + form
    for label in LABELS
    for form in (label, label.capitalize(), label.upper())
    for prefix in ("", " ")
)
_STRIP = " \t\r\n\"'`*.:!,;"


def _label_of_prefix(token: str, labels: tuple[str, ...]) -> str | None:
    text = token.strip().lower()
    if not text:
        return None
    matches = [label for label in labels if label.startswith(text)]
    return matches[0] if len(matches) == 1 else None


def label_probs_from_logprobs(
    content: list[dict[str, Any]] | None, labels: tuple[str, ...] = LABELS
) -> dict[str, float] | None:
    """P(label) from OpenAI-shaped ``logprobs.content``; None when they say nothing of labels.

    The first position whose chosen token has visible text decides; its ``top_logprobs`` are
    folded into the labels (the verdict's three, or another closed set such as yes/no) and
    renormalised over the mass that points at any label.
    """
    for position in content or []:
        if not str(position.get("token", "")).strip():
            continue  # a leading space or newline token: the label starts at the next one
        candidates = position.get("top_logprobs") or [position]
        mass = dict.fromkeys(labels, 0.0)
        for candidate in candidates:
            label = _label_of_prefix(str(candidate.get("token", "")), labels)
            logprob = candidate.get("logprob")
            if label is not None and isinstance(logprob, int | float) and math.isfinite(logprob):
                mass[label] += math.exp(logprob)
        total = sum(mass.values())
        if total <= 0.0:
            return None
        return {label: value / total for label, value in mass.items()}
    return None


def parse_label_text(text: str) -> Verdict:
    """The strict parser for engines that constrain nothing: one label word, or an error."""
    word = text.strip(_STRIP).lower()
    try:
        return Verdict(word)
    except ValueError:
        shown = text.strip()[:80]
        raise VerdictError(f"the judge did not answer with a label: {shown!r}") from None


@dataclass(frozen=True)
class DecisionRule:
    """How label probabilities become a verdict.

    Without thresholds the most probable label wins. ``unethical_threshold`` calls an answer
    unethical as soon as P(unethical) reaches it (a calibrated threshold buys recall), and
    ``neutral_threshold`` likewise for neutral among the rest.
    """

    unethical_threshold: float | None = None
    neutral_threshold: float | None = None

    def decide(self, probs: dict[str, float]) -> Verdict:
        candidates = dict(probs)
        if self.unethical_threshold is not None:
            if probs[Verdict.UNETHICAL] >= self.unethical_threshold:
                return Verdict.UNETHICAL
            del candidates[Verdict.UNETHICAL]  # below its threshold: not a candidate at all
        if self.neutral_threshold is not None and probs[Verdict.NEUTRAL] >= (
            self.neutral_threshold
        ):
            return Verdict.NEUTRAL
        return Verdict(max(candidates, key=candidates.__getitem__))


@dataclass(frozen=True)
class VerdictReading:
    verdict: Verdict
    confidence: float | None  # P(verdict) when the engine gave log-probs
    label_probs: dict[str, float] | None
    text: str  # what the judge actually wrote
    method: JudgeMethod = JudgeMethod.SINGLE  # the judge that read it (conscience/judge.py)
    # With a second opinion (conscience/cascade.py): P(unethical) by layout (Judgement.readings).
    readings: dict[str, float] | None = None


def at_threshold(reading: VerdictReading, threshold: float) -> VerdictReading:
    """The reading decided again at another P(unethical) threshold (a client key's own)::

        unethical                          if P(unethical) >= threshold
        the judge's verdict                if that was not unethical
        the more probable of the others    else

    so a stricter key flags more and a more lenient one less, on the same reading. A reading
    without label probabilities (a judge that gave none) is left as it is."""
    probs = reading.label_probs
    if not probs or Verdict.UNETHICAL not in probs:
        return reading
    if probs[Verdict.UNETHICAL] >= threshold:
        verdict = Verdict.UNETHICAL
    elif reading.verdict is not Verdict.UNETHICAL:
        verdict = reading.verdict
    else:
        rest = {label: p for label, p in probs.items() if label != Verdict.UNETHICAL}
        verdict = Verdict(max(rest, key=rest.__getitem__))
    return replace(reading, verdict=verdict, confidence=probs.get(verdict))


def read_verdict(choice: dict[str, Any], rule: DecisionRule | None = None) -> VerdictReading:
    """Read one chat-completion choice of the judge into a verdict."""
    message = choice.get("message") or {}
    text = message.get("content") or ""
    logprobs = (choice.get("logprobs") or {}).get("content")
    probs = label_probs_from_logprobs(logprobs)
    if probs is None:
        return VerdictReading(parse_label_text(text), None, None, text)
    verdict = (rule or DecisionRule()).decide(probs)
    return VerdictReading(verdict, probs[verdict], probs, text)
