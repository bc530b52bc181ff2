"""Between the text-completion shape and the chat shape the pipeline works on: a choice's
``text`` goes in as the message content, and whatever the pipeline put in the message's place
(a rewrite, a refusal) comes back as the ``text`` (``protocol.py`` has the rules)."""

from __future__ import annotations

from typing import Any

from conscience.errors import EngineError
from conscience.server.pipeline import Decision, Options, Pipeline

__all__ = ["check_choices", "prompts_of", "review_choice"]


def check_choices(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """The completion's text choices; an upstream answer without them is an ``EngineError``."""
    choices = completion.get("choices")
    if (
        not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices)
    ):
        raise EngineError("engine answered a completion without text choices")
    return choices


def prompts_of(choices: list[dict[str, Any]], prompts: list[str]) -> list[str]:
    """Each choice's prompt: choice ``index`` ``i`` answers ``prompts[i // per_prompt]``."""
    if len(choices) % len(prompts):
        raise EngineError(
            f"engine answered {len(choices)} choices for {len(prompts)} prompts: "
            "they cannot be matched to their prompts"
        )
    per_prompt = len(choices) // len(prompts)
    owners = []
    for position, choice in enumerate(choices):
        index = choice.get("index")
        if not isinstance(index, int) or not 0 <= index < len(choices):
            index = position
        owners.append(prompts[index // per_prompt])
    return owners


async def review_choice(
    pipeline: Pipeline,
    choice: dict[str, Any],
    prompt: str,
    echo: bool,
    options: Options,
    request_id: str,
    model: str | None,
) -> Decision:
    """Review one text choice through the pipeline and take back what it served in its place."""
    text: str = choice["text"]
    echoed = prompt if echo and text.startswith(prompt) else ""
    message = {"role": "assistant", "content": text[len(echoed) :]}
    as_chat = {
        "index": choice.get("index", 0),
        "message": message,
        "finish_reason": choice.get("finish_reason"),
    }
    decision = await pipeline.review(
        as_chat, [{"role": "user", "content": prompt}], options, request_id, model=model
    )
    if as_chat["message"] is not message:  # the policy served something else in its place
        choice["text"] = echoed + (as_chat["message"].get("content") or "")
        choice["finish_reason"] = as_chat.get("finish_reason")
        choice["logprobs"] = None  # they were the original's
    return decision
