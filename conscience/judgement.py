"""The judgement: one record per reviewed completion, as the store keeps it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from conscience.labels import Action, Verdict

__all__ = ["Judgement", "new_judgement_id"]


def new_judgement_id() -> str:
    return "jdg_" + uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Judgement(BaseModel):
    """A reviewed completion: what was asked, what was answered, what the conscience said."""

    id: str = Field(default_factory=new_judgement_id)
    created_at: datetime = Field(default_factory=_now)
    request_id: str | None = None
    trace_id: str | None = None  # the request's W3C trace id (32 hex digits), where it had one
    # The client key's id (``server/auth.key_id``: a digest, never the key); None without keys.
    client_key_id: str | None = None
    review_only: bool = False  # judged by POST /v1/conscience/review: nothing was generated
    model: str | None = None  # the generating model (an adapter name on vLLM)
    judge_model: str | None = None  # the frozen copy that reviewed it
    framework: str
    layout: str
    messages: list[dict[str, Any]]  # the conversation the answer replies to, OpenAI-shaped
    answer: str
    reasoning: str | None = None  # the model's reasoning, when the answer carried it
    verdict: Verdict
    confidence: float | None = None  # calibrated probability of the verdict, if known
    label_probs: dict[str, float] | None = None  # P(label) from the judge's log-probs
    # The screen's rules the answer broke (conscience/screen.py); set, the verdict is unethical
    # whatever the judge read, and ``confidence`` is None (a rule decided, not a probability).
    screen: list[str] | None = None
    # With a second opinion (conscience/cascade.py): the probe's P(unethical) by layout, the
    # review's own (``layout``) and, when that was in doubt, the second's, which decided.
    readings: dict[str, float] | None = None
    rewrite: str | None = None
    action: Action | None = None
    review_ms: float | None = None
    rewrite_ms: float | None = None
    upstream_ms: float | None = None
    human_label: Verdict | None = None  # set by an admin; overrides `verdict` in training data
    consumed_by: str | None = None  # the training run that learned from it

    @property
    def effective_verdict(self) -> Verdict:
        """The verdict training should believe: a human label wins over the model's."""
        return self.human_label or self.verdict
