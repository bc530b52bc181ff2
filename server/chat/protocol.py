"""Protocol models mirroring OpenAI's chat-completions schema, fields in OpenAI's order.

Only what the proxy must understand is typed; every other field is accepted and passed to the
upstream unchanged (``extra="allow"``). Our additions ride under the single ``conscience`` key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from conscience.judgement import Judgement
from conscience.labels import Action, Policy, Verdict

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "ConscienceOptions",
    "ConscienceResult",
    "ContentPart",
    "FunctionCall",
    "ToolCall",
]


class ContentPart(BaseModel):
    """One part of a message's content (text, image_url, input_audio, file, refusal, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None  # typed because the reviewer reads it


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None = None
    arguments: str | None = None  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    """A call in an earlier assistant turn; typed because the reviewer reads it."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    type: str | None = None
    function: FunctionCall | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None


class ConscienceOptions(BaseModel):
    """Per-request choices, honoured only where the server allows overrides."""

    model_config = ConfigDict(extra="forbid")

    framework: str | None = None
    policy: Policy | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    model: str = Field(min_length=1, max_length=512)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None  # typed because a rewrite keeps it
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    conscience: ConscienceOptions | None = None

    def upstream_body(self, model: str) -> dict[str, Any]:
        """What the upstream receives: everything the client sent but our key and streaming."""
        body = self.model_dump(
            exclude_none=True, exclude={"conscience", "stream", "stream_options"}
        )
        body["model"] = model
        return body


class ConscienceResult(BaseModel):
    """The ``conscience`` object of a response (and of the last stream chunk)."""

    verdict: Verdict | None  # None only when the review failed and the server is fail-open
    framework: str
    action: Action
    confidence: float | None = None
    judgement_id: str | None = None
    choices: list[ConscienceResult] | None = None  # one per choice when n > 1
    screen: list[str] | None = None  # the screen's rules, when the screen decided the verdict
    reason: str | None = None  # why an answer was blocked without a verdict (it was unreadable)

    @classmethod
    def of(cls, judgement: Judgement) -> ConscienceResult:
        """The object for a judgement whose action is decided."""
        if judgement.action is None:
            raise ValueError(f"judgement {judgement.id} has no action yet")
        return cls(
            verdict=judgement.verdict,
            framework=judgement.framework,
            action=judgement.action,
            confidence=judgement.confidence,
            judgement_id=judgement.id,
            screen=judgement.screen,
        )

    def wire(self) -> dict[str, object]:
        """The JSON object clients see: every contract key, ``choices`` only when n > 1 and
        ``screen`` only when the screen decided, ``reason`` only when there is one."""
        left_out = {name for name in ("choices", "screen", "reason") if not getattr(self, name)}
        return self.model_dump(mode="json", exclude=left_out or None)
