"""Legacy completions, ``POST /v1/completions``, reviewed like chat completions.

The prompt is the question: each choice is reviewed as the answer to
``[{"role": "user", "content": prompt}]`` by the same ``Pipeline.review`` (policy included) and
committed by ``Pipeline.record``. This module only translates between the text-completion shape
and the chat shape the pipeline works on: a choice's ``text`` goes in as the message content,
and whatever the pipeline put in the message's place (a rewrite, a refusal) comes back as the
``text``.

Decisions (README, "The API"):

- A batch ``prompt`` (a list of strings) and ``n``: the upstream answers ``len(prompt) * n``
  choices, choice ``index`` ``i`` belonging to ``prompt[i // n]`` (OpenAI's and vLLM's order);
  each choice is reviewed against its own prompt. At most ``MAX_CHOICES`` choices a request.
- Token-id prompts (``[1, 2]``, ``[[1, 2]]``) cannot be reviewed: 400 ``unsupported_prompt``.
- ``suffix`` (insertion) is refused: 400 ``unsupported_parameter`` (the answer would be the
  middle of a text the review never sees whole; vLLM refuses it too).
- ``echo``: the upstream's text starts with the prompt; only what follows it is reviewed, and a
  rewrite or refusal replaces only that part (the echoed prompt is the client's own text).
- Streaming is always buffered (generate, review, then stream), whatever
  ``CONSCIENCE_STREAM_MODE`` says: no unreviewed text is ever released. Each choice's text comes
  in one chunk (with its log-probs, where asked), then its ``finish_reason``; the last chunk
  (``"choices": []``) carries the ``conscience`` object (and ``usage`` with
  ``stream_options.include_usage``), then ``data: [DONE]``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from conscience.server.body import parse_body
from conscience.server.chat.protocol import ConscienceOptions
from conscience.server.errors import ApiError

__all__ = ["MAX_CHOICES", "CompletionRequest", "check_supported", "parse"]

MAX_CHOICES = 64  # len(prompt) * n: every choice is one review (and maybe a rewrite)


class CompletionRequest(BaseModel):
    """OpenAI's legacy completion request; unknown fields pass to the upstream unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=512)
    # Token ids are typed so that they get a clear refusal instead of a type error.
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1, le=16)
    echo: bool | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    conscience: ConscienceOptions | None = None

    @model_validator(mode="after")
    def _reviewable(self) -> CompletionRequest:
        prompts = self.prompts
        if len(prompts) * (self.n or 1) > MAX_CHOICES:
            raise ValueError(f"at most {MAX_CHOICES} choices (prompts times n) a request")
        return self

    @property
    def prompts(self) -> list[Any]:
        """The prompts, one per entry of a batch (token ids are refused by the handler)."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def upstream_body(self, model: str) -> dict[str, Any]:
        """Everything the client sent but our key and streaming (the proxy streams itself)."""
        body = self.model_dump(
            exclude_none=True, exclude={"conscience", "stream", "stream_options"}
        )
        body["model"] = model
        return body


def check_supported(body: CompletionRequest) -> None:
    prompt = body.prompt
    if isinstance(prompt, list) and (not prompt or not all(isinstance(p, str) for p in prompt)):
        message = (
            "a list prompt must hold one or more strings"
            if not prompt
            else "token-id prompts cannot be reviewed: send the prompt as text"
        )
        raise ApiError(400, message, param="prompt", code="unsupported_prompt")
    if body.suffix:
        raise ApiError(
            400,
            "suffix (insertion) is not supported: the review needs the whole text",
            param="suffix",
            code="unsupported_parameter",
        )


async def parse(request: Request) -> CompletionRequest:
    body = await parse_body(request, CompletionRequest)
    check_supported(body)
    return body
