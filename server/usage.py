"""What a reviewed completion's ``usage`` says: the tokens of what the client was served, and in
``conscience.usage`` what the review's rewrites cost.

The upstream's ``usage`` counts the generation. After a rewrite the client is served the
rewrite, not the generation, so for a one-choice completion::

    usage.completion_tokens = the rewrite's completion tokens
    usage.prompt_tokens     = the generation's (the client's prompt, which it sent)
    usage.total_tokens      = their sum

and ``conscience.usage`` holds ``generation`` (the upstream's usage as it came) and
``rewrite`` (the rewrites' tokens, summed over choices, under the judge's own prompt). With
several choices the upstream's usage does not say which choice spent what, so ``usage`` stays
the generation's and ``conscience.usage`` says what the rewrites added. Nothing is changed
where no rewrite was asked (a pass, a block, a flag without ``CONSCIENCE_FLAG_REWRITE``), or
where the engine gave no usage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["account"]

_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


class _Decided(Protocol):
    @property
    def rewrite_usage(self) -> dict[str, Any] | None: ...


def _count(usage: dict[str, Any], field: str) -> int:
    value = usage.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def account(completion: dict[str, Any], decisions: Sequence[_Decided]) -> None:
    """Set ``completion``'s ``usage`` and ``conscience.usage`` by the module's rule, in place;
    ``decisions`` in the order of the completion's choices."""
    rewrites = [d.rewrite_usage for d in decisions if d.rewrite_usage is not None]
    if not rewrites:
        return
    spent = {field: sum(_count(usage, field) for usage in rewrites) for field in _FIELDS}
    generated = completion.get("usage")
    completion.setdefault("conscience", {})["usage"] = {"generation": generated, "rewrite": spent}
    if not isinstance(generated, dict) or len(decisions) != 1:
        return
    served = {k: v for k, v in generated.items() if k != "completion_tokens_details"}
    served["completion_tokens"] = spent["completion_tokens"]
    served["total_tokens"] = _count(generated, "prompt_tokens") + spent["completion_tokens"]
    completion["usage"] = served
