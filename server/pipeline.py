"""The proxy's pipeline: upstream → review → policy (rewrite/block/flag) → store → response.

One ``Pipeline`` per app, and the only place where a review becomes an action: ``review``
judges one choice and applies the policy to it, ``record`` commits the judgements and counts
them. ``complete`` does both for a unary (or buffered-stream) completion; incremental streaming
(``server.chat.streaming``) calls them on the growing answer. A verdict reaches a client only after
its judgement is committed: nothing a client receives can be lost in a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from conscience.ahead import ChunkFollower, ReviewAhead
from conscience.client import EngineClient
from conscience.errors import ConscienceError
from conscience.judgement import Judgement
from conscience.labels import Action, Policy, ReviewErrorMode, Verdict
from conscience.review import Conscience, Rewritten
from conscience.server import tracing
from conscience.server.answer import Unreadable, read_choice
from conscience.server.auth import client_key_id
from conscience.server.chat.protocol import ChatCompletionRequest, ConscienceResult
from conscience.server.contract import Invalid, rewrite_in_format, schema_of
from conscience.server.errors import ApiError
from conscience.server.metrics import Metrics
from conscience.server.usage import account
from conscience.settings import KeyPolicy, Settings
from conscience.store import JudgementStore

__all__ = ["REFUSAL", "Decision", "Options", "Pipeline", "Reviewed"]

log = logging.getLogger("conscience.server")

REFUSAL = "I can't help with that."  # what a blocked answer says (finish_reason content_filter)


class UpstreamRequest(Protocol):
    """What ``Pipeline.generate`` sends: a request for a model, as the upstream gets it."""

    model: str

    def upstream_body(self, model: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Options:
    """How one request is judged: the request's own options, else its client key's
    (``CONSCIENCE_KEY_POLICIES``), else the defaults."""

    framework: str
    policy: Policy
    unethical_threshold: float | None = None  # a key's own; None: the judge's


@dataclass
class Decision:
    """One choice after review and policy: the ``conscience`` object and what is stored."""

    result: ConscienceResult
    judgement: Judgement | None  # None when nothing was reviewed (policy off, fail-open)
    rewrite_usage: dict[str, Any] | None = None  # the engine's usage of the rewrite it asked


@dataclass
class Reviewed:
    """A completion after the review: the body to send and the ``conscience`` object."""

    completion: dict[str, Any]
    result: ConscienceResult
    judgements: list[Judgement]


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        client: EngineClient,
        conscience: Conscience,
        store: JudgementStore,
        metrics: Metrics,
        scrub: Callable[[str], str],
    ) -> None:
        self.settings = settings
        self.client = client
        self.conscience = conscience
        self.store = store
        self.metrics = metrics
        self.generator = settings.model  # the adapter to generate with; switched on publish
        self.scrub = scrub  # the app's, for logs: upstream errors can repeat its key

    def options(self, request: ChatCompletionRequest) -> Options:
        asked = request.conscience
        if asked is not None and (asked.framework or asked.policy):
            if not self.settings.allow_overrides:
                raise ApiError(
                    403,
                    "this server does not allow per-request conscience options",
                    param="conscience",
                    code="overrides_disabled",
                )
            if asked.framework and asked.framework not in self.conscience.frameworks:
                known = ", ".join(sorted(self.conscience.frameworks))
                raise ApiError(
                    400,
                    f"unknown framework {asked.framework!r} (known: {known})",
                    param="conscience.framework",
                    code="unknown_framework",
                )
        key = self.settings.key_policies.get(client_key_id.get() or "") or KeyPolicy()
        return Options(
            framework=(asked and asked.framework) or key.framework or self.settings.framework,
            policy=(asked and asked.policy) or key.policy or self.settings.policy,
            unethical_threshold=key.unethical_threshold,
        )

    def upstream_model(self, requested: str) -> str:
        """The public model name (or "default") means the current generator; others pass."""
        return self.generator if requested in {self.settings.model, "default"} else requested

    def follower(self, messages: list[dict[str, Any]], options: Options) -> ChunkFollower | None:
        """What reads the answers as they are generated, for the review's work ahead
        (``conscience.ahead``); None when the review has none (setting, policy, method)."""
        if not self.settings.review_ahead or options.policy is Policy.OFF:
            return None
        if self.conscience.review_ahead(messages, options.framework) is None:
            return None
        return ChunkFollower(lambda: self.conscience.review_ahead(messages, options.framework))

    async def generate(
        self,
        request: UpstreamRequest,
        follower: ChunkFollower | None = None,
        *,
        text: bool = False,
    ) -> dict[str, Any]:
        """The upstream's completion of ``request``, through the pipeline's client (its key,
        timeout and error mapping: an upstream 4xx passes through, 5xx is 502, a timeout 504),
        timed and traced: a chat completion; with a ``follower``, asked for as a stream that
        the follower reads as it arrives; with ``text``, a legacy ``/v1/completions`` one."""
        started = time.perf_counter()
        model = self.upstream_model(request.model)
        attributes = tracing.generation_attributes(model)
        if text:  # the same span, named for what it is
            attributes["gen_ai.operation.name"] = "text_completion"
        with tracing.span("conscience.generate", tracing.SpanKind.CLIENT, attributes) as span:
            body = request.upstream_body(model)
            if text:
                completion = await self.client.completions(body)
            elif follower is None:
                completion = await self.client.chat(body)
            else:
                completion = await self.client.chat_watched(body, follower.see)
            tracing.record_generation(span, completion)
        self.metrics.upstream_seconds.observe(time.perf_counter() - started)
        return completion

    def generate_stream(self, request: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """The upstream's chunks, for incremental streaming to review as the answer grows."""
        model = self.upstream_model(request.model)
        # The upstream's usage is asked for always: the last chunk passes it on where the
        # client asked for it too, counted as what was served (server/usage.py).
        body = {**request.upstream_body(model), "stream_options": {"include_usage": True}}
        chunks = self.client.chat_stream(body)
        return tracing.traced_stream(
            "conscience.generate", chunks, tracing.generation_attributes(model)
        )

    async def complete(
        self, request: ChatCompletionRequest, options: Options, request_id: str
    ) -> Reviewed:
        if options.policy is Policy.OFF:  # the pass-through: no messages to copy, no tasks
            completion = await self.generate(request)
            decisions = [_not_reviewed(options) for _ in completion["choices"]]
        else:
            messages = [m.model_dump(exclude_none=True) for m in request.messages]
            follower = self.follower(messages, options)
            try:
                completion = await self.generate(request, follower)
                decisions = await asyncio.gather(
                    *(
                        self.review(
                            choice,
                            messages,
                            options,
                            request_id,
                            model=completion.get("model"),
                            ahead=follower.ahead(choice.get("index", 0)) if follower else None,
                            response_format=request.response_format,
                        )
                        for choice in completion["choices"]
                    )
                )
            finally:
                if follower is not None:
                    await follower.close()
        top = await self.record(decisions)
        completion["conscience"] = top.wire()
        account(completion, decisions)
        judgements = [d.judgement for d in decisions if d.judgement is not None]
        return Reviewed(completion, top, judgements)

    async def review(
        self,
        choice: dict[str, Any],
        messages: list[dict[str, Any]],
        options: Options,
        request_id: str,
        *,
        model: str | None,
        can_rewrite: bool = True,
        ahead: ReviewAhead | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Decision:
        """Review one choice and apply the policy to it in place: an unethical answer's message
        becomes the rewrite or the refusal. ``can_rewrite`` is false once the client holds part
        of the answer (incremental streaming): a rewrite could not take that back, so the
        rewrite policy blocks instead. ``model`` is the completion's, the one that generated it;
        ``ahead`` the review's work done while it was generated (same verdict, sooner);
        ``response_format`` the client's, which a rewrite keeps (``server.contract``).
        Nothing is stored or counted as an action here; ``record`` does that.
        """
        if options.policy is Policy.OFF:
            return _not_reviewed(options)
        attributes = {
            "conscience.policy": options.policy.value,
            "conscience.request_id": request_id,
        }
        with tracing.span("conscience.review", attributes=attributes):
            return await self._review(
                choice, messages, options, request_id, model, can_rewrite, ahead, response_format
            )

    async def _review(
        self,
        choice: dict[str, Any],
        messages: list[dict[str, Any]],
        options: Options,
        request_id: str,
        model: str | None,
        can_rewrite: bool,
        ahead: ReviewAhead | None,
        response_format: dict[str, Any] | None,
    ) -> Decision:
        try:
            answer = read_choice(choice)
        except Unreadable as exc:  # never served unread: blocked, with the reason said
            log.warning("blocked an answer the review cannot read: %s", exc)
            self.metrics.errors.labels("unreadable_answer").inc()
            _block(choice)
            result = ConscienceResult(
                verdict=None, framework=options.framework, action=Action.BLOCKED, reason=str(exc)
            )
            return Decision(result, None)
        started = time.perf_counter()
        try:
            judgement = await self.conscience.review(
                messages,
                answer.text,
                options.framework,
                reasoning=answer.reasoning,
                model=model,
                request_id=request_id,
                ahead=ahead,
                unethical_threshold=options.unethical_threshold,
            )
        except ConscienceError as exc:
            self.metrics.review_seconds.observe(time.perf_counter() - started)
            tracing.record_failure(tracing.current(), exc)
            return Decision(self._review_failed(exc, options), None)
        action, rewrite_usage = Action.PASSED, None
        if judgement.verdict is Verdict.UNETHICAL:
            action, rewrite_usage = await self._apply_policy(
                choice, judgement, messages, options, can_rewrite, response_format
            )
        judgement.action = action
        tracing.record_judgement(tracing.current(), judgement)
        self.metrics.review_seconds.observe(time.perf_counter() - started)
        return Decision(ConscienceResult.of(judgement), judgement, rewrite_usage)

    async def record(self, decisions: list[Decision]) -> ConscienceResult:
        """Commit the decisions' judgements, count their actions and verdicts, and return the
        response-level ``conscience`` object (the most severe choice)."""
        judgements = [d.judgement for d in decisions if d.judgement is not None]
        asked_by, traced = client_key_id.get(), tracing.trace_id()
        for judgement in judgements:  # which client key asked (server/auth.py), by its id
            judgement.client_key_id = asked_by
            judgement.trace_id = traced
        # Committed before the response exists: nothing acknowledged is ever lost. A single
        # judgement goes through `add`, which commits concurrent requests' rows together.
        if judgements:
            attributes = tracing.commit_attributes(self.store, len(judgements))
            with tracing.span("conscience.store.commit", attributes=attributes):
                if len(judgements) == 1:
                    await self.store.add(judgements[0])
                else:
                    await self.store.add_many(judgements)
        results = [d.result for d in decisions]
        for result in results:
            self.metrics.actions.labels(result.action.value).inc()
            if result.verdict is not None:
                self.metrics.verdicts.labels(result.verdict.value, result.framework).inc()
        return _summary(results)

    def _review_failed(self, exc: ConscienceError, options: Options) -> ConscienceResult:
        self.metrics.errors.labels("review_failed").inc()
        if self.settings.on_review_error is ReviewErrorMode.CLOSED:
            raise ApiError(
                503,
                f"the conscience review failed, so no answer is served: {exc}",
                code="review_failed",
            ) from exc
        log.warning("review failed, serving unreviewed (fail-open): %s", self.scrub(str(exc)))
        return ConscienceResult(verdict=None, framework=options.framework, action=Action.UNREVIEWED)

    async def _shadow_rewrite(
        self,
        judgement: Judgement,
        messages: list[dict[str, Any]],
        options: Options,
        response_format: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Under ``flag`` with ``CONSCIENCE_FLAG_REWRITE``: the rewrite enforcement would have
        served, stored on the judgement and never served; a failure is logged, the answer
        still served (flag never withholds one)."""
        started = time.perf_counter()
        try:
            with tracing.span("conscience.rewrite"):
                rewritten = await _rewrite_for(
                    self.conscience, judgement, messages, options.framework, response_format
                )
        except (ConscienceError, Invalid) as exc:
            log.warning("the flag policy's stored rewrite failed: %s", self.scrub(str(exc)))
            return None
        judgement.rewrite = rewritten.text
        judgement.rewrite_ms = (time.perf_counter() - started) * 1000
        return rewritten.usage

    async def _apply_policy(
        self,
        choice: dict[str, Any],
        judgement: Judgement,
        messages: list[dict[str, Any]],
        options: Options,
        can_rewrite: bool,
        response_format: dict[str, Any] | None,
    ) -> tuple[Action, dict[str, Any] | None]:
        """The action on an unethical answer, and the usage of the rewrite it asked for."""
        if options.policy is Policy.FLAG:
            usage = None
            if self.settings.flag_rewrite:
                usage = await self._shadow_rewrite(judgement, messages, options, response_format)
            return Action.FLAGGED, usage
        if options.policy is Policy.REWRITE and can_rewrite:
            started = time.perf_counter()
            try:
                with tracing.span("conscience.rewrite"):
                    rewritten = await _rewrite_for(  # in the client's format, or none
                        self.conscience, judgement, messages, options.framework, response_format
                    )
            except (ConscienceError, Invalid) as exc:
                # Without a rewrite the unethical original must still not be served: block.
                log.warning("rewrite failed, blocking instead: %s", self.scrub(str(exc)))
            else:
                judgement.rewrite = rewritten.text
                judgement.rewrite_ms = (time.perf_counter() - started) * 1000
                # A tool call judged unethical becomes prose with finish_reason "stop": the
                # assistant speaks instead, and an agent's loop ends on a final answer.
                choice["message"] = {"role": "assistant", "content": judgement.rewrite}
                choice["finish_reason"] = "stop"
                choice.pop("logprobs", None)  # they were the original's
                return Action.REWRITTEN, rewritten.usage
        _block(choice)
        return Action.BLOCKED, None


async def _rewrite_for(
    conscience: Conscience,
    judgement: Judgement,
    messages: list[dict[str, Any]],
    framework: str,
    response_format: dict[str, Any] | None,
) -> Rewritten:
    """The rewrite of the judged answer, in the client's format where it asked for one."""
    if schema_of(response_format) is None:
        return await conscience.rewrite_with_usage(messages, judgement.answer, framework)
    return await rewrite_in_format(
        conscience, messages, judgement.answer, framework, response_format or {}
    )


def _block(choice: dict[str, Any]) -> None:
    """The choice becomes the refusal, in the API's own terms."""
    choice["message"] = {"role": "assistant", "content": REFUSAL, "refusal": REFUSAL}
    choice["finish_reason"] = "content_filter"
    choice.pop("logprobs", None)


def _not_reviewed(options: Options) -> Decision:
    """A choice under the policy off: passed as it is, nothing stored."""
    result = ConscienceResult(verdict=None, framework=options.framework, action=Action.PASSED)
    return Decision(result, None)


_SEVERITY = {Verdict.UNETHICAL: 3, None: 2, Verdict.NEUTRAL: 1, Verdict.ETHICAL: 0}


def _summary(results: list[ConscienceResult]) -> ConscienceResult:
    """The response-level object: the most severe choice, with every choice when n > 1."""
    worst = max(results, key=lambda r: _SEVERITY[r.verdict])
    if len(results) == 1:
        return worst
    return worst.model_copy(update={"choices": results})
