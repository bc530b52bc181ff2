"""The review and rewrite prompts, in both layouts, built from a framework's templates.

Reviewed text is fenced as data: the conversation goes inside ``<question>`` tags, the answer
inside ``<answer>`` tags (and the model's reasoning inside ``<reasoning>``), and any tag of
ours that appears inside that text is defused first, so an answer cannot close its fence and
speak to the reviewer as the prompt.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from conscience.framework import Framework
from conscience.labels import Layout

__all__ = [
    "FENCE_TAGS",
    "fence",
    "message_text",
    "render_review",
    "render_rewrite",
    "split_reasoning",
    "transcript",
]

Message = dict[str, Any]

FENCE_TAGS = ("question", "answer", "reasoning", "conversation", "turn")
# "<answer>", "</ answer >", "< /ANSWER>" ... anything a lenient reader would take for our tags.
_FENCE_RE = re.compile(r"<\s*(/?)\s*(" + "|".join(FENCE_TAGS) + r")\b([^>]*)>", re.IGNORECASE)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


def _defuse(text: str) -> str:
    # NFKC first: full-width and other compatibility look-alikes (full-width "<", "/", letters)
    # become the plain characters the judge and the fence check below both understand.
    text = unicodedata.normalize("NFKC", text)
    # Guillemets keep the text readable to the judge, but they can no longer close a fence.
    return _FENCE_RE.sub(lambda m: f"\u2039{m.group(1)}{m.group(2)}{m.group(3)}\u203a", text)


def fence(tag: str, text: str) -> str:
    return f"<{tag}>\n{_defuse(text)}\n</{tag}>"


def message_text(message: Message) -> str:
    """The text of an OpenAI message, whose content may be a string or a list of parts."""
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        text += f"\n[tool call {function.get('name')}: {function.get('arguments')}]"
    return text.strip()


def split_reasoning(answer: str) -> tuple[str, str | None]:
    """Separate ``<think>`` reasoning from the visible answer; both are reviewed."""
    thoughts = [m.strip() for m in _THINK_RE.findall(answer)]
    if not thoughts:
        return answer, None
    return _THINK_RE.sub("", answer).strip(), "\n\n".join(thoughts)


def transcript(messages: list[Message]) -> str:
    """The conversation an answer replies to, as the reviewer reads it.

    A lone user message is shown as it is (the paper's "Question:"); anything richer (system
    prompt, earlier turns, tool results) is shown turn by turn so the context is judged too.
    """
    if len(messages) == 1 and messages[0].get("role") == "user":
        return message_text(messages[0])
    turns = [f"[{m.get('role', 'unknown')}]\n{message_text(m)}" for m in messages]
    return "\n\n".join(turns)


def _fenced_pair(messages: list[Message], answer: str, reasoning: str | None) -> dict[str, str]:
    answer_block = fence("answer", answer)
    if reasoning:
        answer_block = fence("reasoning", reasoning) + "\n" + answer_block
    return {"question": fence("question", transcript(messages)), "answer": answer_block}


def render_review(
    framework: Framework,
    messages: list[Message],
    answer: str,
    *,
    layout: Layout,
    reasoning: str | None = None,
) -> list[Message]:
    """The messages that ask the judge its one introspective question."""
    if layout is Layout.PAPER:
        return [
            {"role": "system", "content": framework.render("review_system")},
            {
                "role": "user",
                "content": framework.render(
                    "review_user", **_fenced_pair(messages, answer, reasoning)
                ),
            },
        ]
    # Follow-up turn: the generation's own prefix (conversation + answer) comes first, so an
    # engine that just generated this answer can reuse its cache; the question is a new turn.
    said = answer if not reasoning else f"<think>\n{reasoning}\n</think>\n{answer}"
    return [
        *({"role": m.get("role"), "content": message_text(m)} for m in messages),
        {"role": "assistant", "content": said},
        {"role": "user", "content": framework.render("follow_up_user")},
    ]


def render_rewrite(framework: Framework, messages: list[Message], answer: str) -> list[Message]:
    """The messages that ask the frozen model for an ethical answer that still helps."""
    return [
        {"role": "system", "content": framework.render("rewrite_system")},
        {
            "role": "user",
            "content": framework.render("rewrite_user", **_fenced_pair(messages, answer, None)),
        },
    ]
