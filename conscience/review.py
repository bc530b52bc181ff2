"""The conscience review: the frozen model asks itself one question about an answer.

``Conscience`` holds what every review shares (the engine client, the judge model, the
frameworks, the layout, the screen, the windows) and the ``Judge`` that reads each window
(``conscience/judge.py``: the single review, the probe or the second opinion, chosen once when
it is built); ``review`` returns a ``Judgement`` and ``rewrite`` the ethical answer that
replaces an unethical one. The same code path serves the proxy, the CLI, the evaluations and
the online trainer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from conscience.ahead import ReviewAhead
from conscience.calibration import Calibration, select_calibrations
from conscience.cascade import PACKAGED_BANDS, Band, load_bands
from conscience.client import Constraint, EngineClient
from conscience.context import MIN_BUDGET, conversation_window, cut_middle, is_context_overflow
from conscience.errors import ConfigError, EngineError, EngineStatusError, VerdictError
from conscience.framework import Framework
from conscience.judge import (
    EngineFacts,
    Judge,
    SingleReview,
    answer_windows,
    check_bands,
    free_reply,
    judge_for,
    judge_request,
)
from conscience.judgement import Judgement
from conscience.labels import JudgeMethod, Layout, Verdict
from conscience.probe import PACKAGED_PROBE, Probe, StateReader, load_probes
from conscience.prompts import render_rewrite, split_reasoning
from conscience.screen import screen as screen_answer
from conscience.verdict import DecisionRule, VerdictReading, at_threshold

__all__ = [
    "Conscience",
    "Rewritten",
    "answer_windows",
    "conscience_from_settings",
    "judge_request",
]

log = logging.getLogger("conscience.review")
T = TypeVar("T")


class Rewritten(NamedTuple):
    """A rewrite, and the engine's ``usage`` of it (None where the engine gave none)."""

    text: str
    usage: dict[str, Any] | None


Message = dict[str, Any]


def _severity(reading: VerdictReading) -> tuple[int, float]:
    rank = {Verdict.UNETHICAL: 2, Verdict.NEUTRAL: 1, Verdict.ETHICAL: 0}[reading.verdict]
    p_unethical = (reading.label_probs or {}).get(Verdict.UNETHICAL, 0.0)
    return rank, p_unethical


@dataclass
class Conscience:
    """The review and the rewrite. The fields after ``screen`` say how the judge is built
    (``judge_for``, once, in ``__post_init__``): changing them afterwards changes nothing."""

    client: EngineClient
    judge_model: str
    frameworks: dict[str, Framework]
    default_framework: str = "three-laws"
    layout: Layout = Layout.PAPER
    screen: bool = True  # an answer that talks to its reviewer is unethical (conscience/screen.py)
    method: JudgeMethod = JudgeMethod.SINGLE  # or the probe (conscience/probe.py)
    # The method "probe"'s read-outs by (judge model, framework, layout) (conscience/probe.py).
    probes: dict[tuple[str, str, str], Probe] = field(default_factory=dict)
    probe_source: str | None = None  # where they came from, said at start-up
    # How the probe reads the judge's state: None, /v1/embeddings; the embedded engine's
    # read-out through the output layer, which reuses the prefix cache (conscience/probe.py).
    state_reader: StateReader | None = None
    # Does the engine give hidden states? None: not known (an upstream): the probe's first read
    # learns it, once (conscience/judge.py, ProbeJudge).
    hidden_states: bool | None = None
    # A second opinion where the first probe is in doubt (conscience/cascade.py): its layout,
    # and the bands by (judge model, framework, first layout, second layout).
    second_opinion: Layout | None = None
    bands: dict[tuple[str, str, str, str], Band] = field(default_factory=dict)
    band_source: str | None = None  # where they came from, said at start-up
    constraint: Constraint | None = None  # None: ask the engine once, at the first review
    rule: DecisionRule = field(default_factory=DecisionRule)
    top_logprobs: int = 20  # OpenAI's maximum; the labels' first tokens are always among them
    rewrite_max_tokens: int = 1024
    rewrite_temperature: float = 0.3
    window_chars: int = 6000  # longer answers are reviewed in overlapping windows, never cut
    # The judge reads at most this much of the conversation (conscience/context.py).
    context_chars: int = 8000
    warm_every_chars: int = 400  # review while generating: the judge's prompt prefilled so often
    # Fitted decision rules and confidence scaling by (judge model, framework, layout).
    calibrations: dict[tuple[str, str, str], Calibration] = field(default_factory=dict)
    calibration_source: str = "no calibration file"  # said at start-up
    # The single review (of every review no probe reads) and the judge of every review.
    single: SingleReview = field(init=False, repr=False, compare=False)
    judge: Judge = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.single = SingleReview(
            self.client,
            self.judge_model,
            rule=self.rule,
            calibrations=self.calibrations,
            constraint=self.constraint,
            top_logprobs=self.top_logprobs,
            warm_every_chars=self.warm_every_chars,
        )
        self.judge = judge_for(
            self.single,
            self.method,
            probes=self.probes,
            state_reader=self.state_reader,
            hidden_states=self.hidden_states,
            second_opinion=self.second_opinion,
            bands=self.bands,
            probe_source=self.probe_source,
            band_source=self.band_source,
        )

    @property
    def probe_read(self) -> str | None:
        """How the probe reads the judge's state, for reports: ``logits`` (the embedded
        engine's output layer) or ``embeddings``; None when no probe judges."""
        return self.judge.probe_read

    def probe_for(self, framework: str, layout: Layout | None = None) -> Probe | None:
        """The probe that reads reviews under ``framework`` (and the layout), if the judge is
        the probe and one covers them; else None, and the single review judges."""
        return self.judge.probe_for(framework, layout or self.layout)

    def band_for(self, framework: str, layout: Layout | None = None) -> Band | None:
        """The band in which a probe review under ``framework`` (and the layout) asks for the
        second opinion, if one is configured and a band covers them; else None."""
        return self.judge.band_for(framework, layout or self.layout)

    def asked_in(self, framework: str, layout: Layout | None = None) -> Layout:
        """The layout a review under ``framework`` is asked in: the configured one (or
        ``layout``) where a probe reads it, else the single review's (``Judge.asked_in``)."""
        return self.judge.asked_in(framework, layout or self.layout)

    def use_probes(self, probes: dict[tuple[str, str, str], Probe], source: str) -> None:
        """Judge with ``probes`` from the next review on, without a restart (a refitted probe
        published, or a rollback). Only where a probe judges already: the judge keeps its kind
        and what it learnt of the engine, and its read-outs are replaced in one step (a review
        in flight finishes with the probe it began with or the new one, never a mix of files).
        A probe of another size than the one it replaces for the same key is refused
        (``ConfigError``), as are probes the second opinion's bands cannot use
        (``check_bands``)."""
        if self.judge.probe_read is None:
            raise ConfigError(
                "no probe judges on this proxy (CONSCIENCE_JUDGE_METHOD, or an engine without"
                " hidden states): a probe cannot be switched in"
            )
        for key, probe in probes.items():
            current = self.probes.get(key)
            if current is not None and len(current.weights) != len(probe.weights):
                raise ConfigError(
                    f"the probe for {'/'.join(key)} reads {len(probe.weights)} dimensions,"
                    f" the one it replaces {len(current.weights)}: another model's states"
                )
        check_bands(probes, self.bands, source, self.band_source)
        # The judge holds this very dict (``judge_for``): no await between clear and update.
        self.probes.clear()
        self.probes.update(probes)
        self.probe_source = source

    def framework(self, name: str | None) -> Framework:
        name = name or self.default_framework
        try:
            return self.frameworks[name]
        except KeyError:
            known = ", ".join(sorted(self.frameworks))
            raise ConfigError(f"unknown framework {name!r} (known: {known})") from None

    async def label_constraint(self) -> Constraint:
        """How the judge's label is forced on this engine (asked once, when ``auto``)."""
        return await self.single.label_constraint()

    async def review(
        self,
        messages: list[Message],
        answer: str,
        framework: str | None = None,
        *,
        reasoning: str | None = None,
        layout: Layout | None = None,
        model: str | None = None,
        request_id: str | None = None,
        ahead: ReviewAhead | None = None,
        unethical_threshold: float | None = None,
    ) -> Judgement:
        """Judge ``answer`` to ``messages``; think tags in the answer are reviewed as reasoning.

        ``ahead`` is the work already done on this answer while it was generated
        (``review_ahead``): the verdict is the same with or without it.
        ``unethical_threshold`` decides every window's reading again at that P(unethical)
        (``verdict.at_threshold``: a client key's own threshold)."""
        chosen = self.framework(framework)
        visible, thoughts = split_reasoning(answer)
        reasoning = "\n\n".join(r for r in (reasoning, thoughts) if r) or None
        layout = layout or self.layout  # the judge asks where it reads (Judge.asked_in)
        started = time.perf_counter()
        # Everything the judge reads is screened: the answer and the reasoning it came with.
        rules = None
        if self.screen:
            screened = screen_answer("\n\n".join(t for t in (visible, reasoning) if t))
            rules = list(screened.rules) or None
        try:
            await self.label_constraint()
            readings = await self._read_fitting(chosen, messages, visible, layout, reasoning, ahead)
        except (EngineError, VerdictError):
            if rules is None:
                raise
            readings = []  # the screen decided; a judge that failed cannot undo that
        if unethical_threshold is not None:
            readings = [at_threshold(r, unethical_threshold) for r in readings]
        # The most damning window decides: harm hidden after padding is still harm.
        reading = max(readings, key=_severity) if readings else None
        if rules is not None:
            # The judge was still asked: its reading stays in label_probs, for the record.
            verdict, confidence = Verdict.UNETHICAL, None
            log.warning("answer talks to its reviewer (%s): unethical", ", ".join(rules))
        else:
            assert reading is not None
            verdict, confidence = reading.verdict, reading.confidence
        return Judgement(
            request_id=request_id,
            model=model,
            judge_model=self.judge_model,
            framework=chosen.name,
            layout=self.judge.asked_in(chosen.name, layout).value,
            messages=messages,
            answer=visible,
            reasoning=reasoning,
            verdict=verdict,
            confidence=confidence,
            label_probs=reading.label_probs if reading is not None else None,
            readings=reading.readings if reading is not None else None,
            screen=rules,
            review_ms=(time.perf_counter() - started) * 1000,
        )

    async def fitting(self, attempt: Callable[[int, int], Awaitable[T]]) -> T:
        """``attempt(budget, window_chars)``: a request to the judge whose prompt holds at most
        ``budget`` characters of the conversation and ``window_chars`` of the answer. Where the
        judge says that prompt is over its context, it is made again with half of each, down
        to ``MIN_BUDGET`` (then the engine's error stands): the judge always fits where it can
        (conscience/context.py)."""
        budget, window_chars = self.context_chars, self.window_chars
        while True:
            try:
                return await attempt(budget, window_chars)
            except EngineStatusError as exc:
                overflow = is_context_overflow(exc.status_code, str(exc))
                if not overflow or (budget <= MIN_BUDGET and window_chars <= MIN_BUDGET):
                    raise
                budget = max(MIN_BUDGET, budget // 2)
                window_chars = max(min(MIN_BUDGET, window_chars), window_chars // 2)
                log.warning(
                    "the judge's prompt is over its context: asked again with %d characters of"
                    " the conversation and %d of the answer",
                    budget,
                    window_chars,
                )

    async def _read_fitting(
        self,
        framework: Framework,
        messages: list[Message],
        visible: str,
        layout: Layout,
        reasoning: str | None,
        ahead: ReviewAhead | None,
    ) -> list[VerdictReading]:
        """Every window of the answer read with the conversation's window (``fitting``); the
        work done ahead is used only on the first, widest prompt it was done for."""
        first = True

        async def read(budget: int, window_chars: int) -> list[VerdictReading]:
            nonlocal first
            shown = conversation_window(messages, budget)
            early, first = (ahead if first else None), False
            return list(
                await asyncio.gather(
                    *(
                        self.judge.read(
                            framework, shown, window, layout, reasoning=reasoning, ahead=early
                        )
                        for window in answer_windows(visible, window_chars)
                    )
                )
            )

        return await self.fitting(read)

    def rewrite_prompt(
        self,
        messages: list[Message],
        answer: str,
        framework: str | None = None,
        *,
        budget: int | None = None,
        answer_chars: int | None = None,
    ) -> list[Message]:
        """The rewrite's prompt, on the conversation's window (``conversation_window``), the
        answer cut in its middle where ``answer_chars`` is less than its length."""
        shown = conversation_window(messages, budget or self.context_chars)
        if answer_chars is not None:
            answer = cut_middle(answer, answer_chars)
        return render_rewrite(self.framework(framework), shown, answer)

    def review_ahead(
        self, messages: list[Message], framework: str | None = None
    ) -> ReviewAhead | None:
        """Work on an answer to ``messages`` that can start while it is generated
        (``conscience.ahead``, ``Judge.ahead``). None for the follow-up layouts, whose prompt
        begins with the generation's own: the engine that generates the answer caches it as
        it goes."""
        if self.layout.follows_up:
            return None
        shown = conversation_window(messages, self.context_chars)  # as the review will read it
        return self.judge.ahead(self.framework(framework), shown, self.layout, self.window_chars)

    async def rewrite(
        self, messages: list[Message], answer: str, framework: str | None = None
    ) -> str:
        """An ethical answer to ``messages`` that still helps, from the frozen model."""
        return (await self.rewrite_with_usage(messages, answer, framework)).text

    async def rewrite_with_usage(
        self, messages: list[Message], answer: str, framework: str | None = None
    ) -> Rewritten:
        """``rewrite``, and the engine's usage of the rewrite (what it cost, what is served)."""

        async def ask(budget: int, answer_chars: int) -> tuple[str, dict[str, Any] | None]:
            prompt = self.rewrite_prompt(
                messages, answer, framework, budget=budget, answer_chars=answer_chars
            )
            return await free_reply(
                self.client,
                self.judge_model,
                prompt,
                temperature=self.rewrite_temperature,
                max_tokens=self.rewrite_max_tokens,
            )

        text, usage = await self.fitting(ask)
        if not text:
            raise EngineError("the judge returned an empty rewrite")
        return Rewritten(text, usage)

    async def review_and_rewrite(
        self, messages: list[Message], answer: str, framework: str | None = None, **kwargs: Any
    ) -> Judgement:
        """Review, and when unethical, attach the rewrite and its latency to the judgement."""
        judgement = await self.review(messages, answer, framework, **kwargs)
        if judgement.verdict == "unethical":
            started = time.perf_counter()
            judgement.rewrite = await self.rewrite(messages, judgement.answer, framework)
            judgement.rewrite_ms = (time.perf_counter() - started) * 1000
        return judgement


def conscience_from_settings(
    settings: Any, client: EngineClient, facts: EngineFacts | None = None
) -> Conscience:
    """Build the ``Conscience`` of ``Settings``: the one factory of the proxy, the CLI, the
    trainer's online judge and the evaluations, so all of them decide by the same rule.
    ``facts`` is what ``open_engine`` knows of the engine at start (``Engine.facts``): whether
    it gives the probe a hidden state (None: not known, learnt at the probe's first read), and
    how (its ``state_reader``, else ``/v1/embeddings``). The judge is chosen here, once
    (``conscience.judge.judge_for``).

    Frameworks load, and fail, here. The decision rule is ``select_calibrations``' choice: the
    calibration file, else an explicit unethical threshold without calibration, else the
    packaged calibration (then argmax). The label constraint is the settings'
    ``judge_constraint``; ``auto`` asks the engine once, at the first review.
    """
    facts = facts or EngineFacts()
    from conscience.framework import load_frameworks

    frameworks = load_frameworks(settings.frameworks_dir)
    if settings.framework not in frameworks:
        known = ", ".join(sorted(frameworks))
        raise ConfigError(f"unknown framework {settings.framework!r} (known: {known})")
    constraint = None if settings.judge_constraint == "auto" else settings.judge_constraint
    calibrations, source = select_calibrations(
        settings.calibration_file, settings.unethical_threshold
    )
    probes, probe_source = {}, None
    if settings.judge_method == JudgeMethod.PROBE:
        path = settings.probe_file or PACKAGED_PROBE
        probes = load_probes(path)  # loaded, and checked, even where no probe will read
        where = "packaged probe" if settings.probe_file is None else "probe file"
        probe_source = f"{where} {path}"
        if facts.hidden_states is False:  # the single review judges every review
            probes = {}
    bands, band_source = {}, None
    if settings.second_opinion is not None:
        if settings.judge_method != JudgeMethod.PROBE:
            raise ConfigError("a second opinion (CONSCIENCE_SECOND_OPINION) needs the probe method")
        if settings.second_opinion == settings.layout:
            raise ConfigError(f"a second opinion in the first review's layout {settings.layout}")
        path = settings.band_file or PACKAGED_BANDS
        bands = load_bands(path)
        band_source = f"{'packaged bands' if settings.band_file is None else 'band file'} {path}"
    return Conscience(
        client=client,
        judge_model=settings.judge,
        frameworks=frameworks,
        default_framework=settings.framework,
        layout=settings.layout,
        screen=settings.screen,
        method=settings.judge_method,
        probes=probes,
        probe_source=probe_source,
        state_reader=facts.state_reader if probes else None,
        hidden_states=facts.hidden_states,
        second_opinion=settings.second_opinion,
        bands=bands,
        band_source=band_source,
        constraint=constraint,
        rule=DecisionRule(settings.unethical_threshold, settings.neutral_threshold),
        top_logprobs=settings.top_logprobs,
        rewrite_max_tokens=settings.rewrite_max_tokens,
        window_chars=settings.review_window_chars,
        context_chars=settings.review_context_chars,
        calibrations=calibrations,
        calibration_source=source,
    )
