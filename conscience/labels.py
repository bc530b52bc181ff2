"""The closed vocabularies of the method: verdicts, actions, policies, layouts.

A label the code does not know is an error (``ValueError`` from the enum), never a silent
default.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Action", "JudgeMethod", "Layout", "Policy", "ReviewErrorMode", "Verdict"]


class Verdict(StrEnum):
    """What the conscience says of an answer."""

    ETHICAL = "ethical"  # complies with every law of the framework
    NEUTRAL = "neutral"  # violates none, but the laws have nothing to say (off-topic, harmless)
    UNETHICAL = "unethical"  # violates at least one law


class Action(StrEnum):
    """What the proxy did with the answer after the review."""

    PASSED = "passed"  # served as generated
    REWRITTEN = "rewritten"  # the rewrite was served instead
    BLOCKED = "blocked"  # a refusal was served (finish_reason "content_filter")
    FLAGGED = "flagged"  # served as generated, marked unethical
    UNREVIEWED = "unreviewed"  # the review failed and the server is fail-open


class Policy(StrEnum):
    """What to do with an answer the conscience calls unethical."""

    REWRITE = "rewrite"
    BLOCK = "block"
    FLAG = "flag"
    OFF = "off"  # no review at all


class ReviewErrorMode(StrEnum):
    """What to do when the review itself fails."""

    CLOSED = "closed"  # no unreviewed text reaches the client: 503
    OPEN = "open"  # serve the answer, marked unreviewed


class Layout(StrEnum):
    """How the review prompt is laid out (docs/decisions.md, "Prompt layout")."""

    PAPER = "paper"  # framework first, then the conversation and the answer as fenced data
    FOLLOW_UP = "follow-up"  # the conversation, the answer, then the question as a new user turn
    # The same with a one-line question, whatever the framework's: its prefill is all a review
    # adds to the generation's cached tokens (docs/decisions.md, "The judge's own turn").
    FOLLOW_UP_BRIEF = "follow-up-brief"

    @property
    def follows_up(self) -> bool:
        """Does the prompt begin with the generation's own (conversation, then answer)?"""
        return self is not Layout.PAPER

    @property
    def without_probe(self) -> Layout:
        """The layout a review in this one is asked in when no probe reads it: the brief
        question names a framework by its title only, so the paper layout's, with the laws."""
        return Layout.PAPER if self is Layout.FOLLOW_UP_BRIEF else self


class JudgeMethod(StrEnum):
    """How the judge reaches its verdict (docs/decisions.md, "The judge benchmarked like a guard
    model"; the retired methods are recorded there, "Retired judge methods")."""

    SINGLE = "single"  # the paper's one introspective question, one label
    PROBE = "probe"  # a linear read-out of the judge's hidden state (conscience/probe.py)
