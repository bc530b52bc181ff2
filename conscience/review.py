"""The conscience review: the frozen model asks itself one question about an answer.

``Conscience`` holds what every review shares (the engine client, the judge model, the
frameworks, the layout, the decision rule, the probes and where a second opinion is asked);
``review`` returns a ``Judgement`` and ``rewrite`` the ethical answer that replaces an
unethical one. The same code path serves the proxy, the
CLI, the evaluations and the online trainer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from conscience.ahead import PrefixAhead, ReviewAhead, WindowsAhead
from conscience.calibration import Calibration, select_calibrations
from conscience.cascade import PACKAGED_BANDS, Band, load_bands
from conscience.client import Constraint, EngineClient
from conscience.errors import ConfigError, EngineError, EngineStatusError, VerdictError
from conscience.framework import Framework
from conscience.judgement import Judgement
from conscience.labels import JudgeMethod, Layout, Verdict
from conscience.probe import PACKAGED_PROBE, Probe, StateReader, hidden_state, load_probes
from conscience.prompts import (
    render_label_after_reasoning,
    render_review,
    render_rewrite,
    split_reasoning,
)
from conscience.screen import screen as screen_answer
from conscience.verdict import LABEL_SURFACE_FORMS, DecisionRule, VerdictReading, read_verdict

__all__ = ["Conscience", "answer_windows", "conscience_from_settings", "judge_request"]

log = logging.getLogger("conscience.review")

Message = dict[str, Any]


def _grammar(forms: tuple[str, ...]) -> str:
    return "root ::= " + " | ".join(f'"{form}"' for form in forms)


# Where the answer so far ends in a rendered review prompt (invisible separators and a word no
# answer or template writes), so the text before it can be prefilled (``_warm_prefix``).
_CUT = "\u2063\u2063conscience-cut\u2063\u2063"

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def answer_windows(answer: str, size: int) -> list[str]:
    """The answer whole if it fits, else overlapping windows that cover every character.

    Windows overlap by a tenth so that a harmful sentence cut by one boundary is whole in the
    next window; the review never silently drops the end of a long answer.
    """
    if len(answer) <= size:
        return [answer]
    step = max(1, size - size // 10)
    return [answer[i : i + size] for i in range(0, len(answer) - size // 10, step)]


def _severity(reading: VerdictReading) -> tuple[int, float]:
    rank = {Verdict.UNETHICAL: 2, Verdict.NEUTRAL: 1, Verdict.ETHICAL: 0}[reading.verdict]
    p_unethical = (reading.label_probs or {}).get(Verdict.UNETHICAL, 0.0)
    return rank, p_unethical


def judge_request(
    model: str,
    messages: list[Message],
    constraint: Constraint,
    top_logprobs: int,
) -> dict[str, Any]:
    """The chat-completion body that asks for one label, forced where the engine can."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": 0.0,
        "max_tokens": 6,  # the longest label is three tokens in the tokenizers we know
        "logprobs": True,
        "top_logprobs": top_logprobs,
    }
    if constraint == "choice":
        body["structured_outputs"] = {"choice": list(LABEL_SURFACE_FORMS)}
    elif constraint == "grammar":
        body["grammar"] = _grammar(LABEL_SURFACE_FORMS)
    return body


@dataclass
class Conscience:
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
    # A second opinion where the first probe is in doubt (conscience/cascade.py): its layout,
    # and the bands by (judge model, framework, first layout, second layout).
    second_opinion: Layout | None = None
    bands: dict[tuple[str, str, str, str], Band] = field(default_factory=dict)
    band_source: str | None = None  # where they came from, said at start-up
    constraint: Constraint | None = None  # None: ask the engine once who it is
    rule: DecisionRule = field(default_factory=DecisionRule)
    top_logprobs: int = 20  # OpenAI's maximum; the labels' first tokens are always among them
    rewrite_max_tokens: int = 1024
    rewrite_temperature: float = 0.3
    window_chars: int = 6000  # longer answers are reviewed in overlapping windows, never cut
    warm_every_chars: int = 400  # review while generating: the judge's prompt prefilled so often
    _templates: bool = field(default=True, repr=False, compare=False)  # /apply-template answers
    # Fitted decision rules and confidence scaling by (judge model, framework, layout).
    calibrations: dict[tuple[str, str, str], Calibration] = field(default_factory=dict)
    calibration_source: str = "no calibration file"  # said at start-up
    # Concurrent first reviews ask the engine once, not once each.
    _detecting: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A band whose first probe judges must have its second probe, and contain the first
        # one's threshold (outside the band the first verdict stands): checked at start.
        for band in self.bands.values():
            first = self.probes.get((band.model, band.framework, band.first))
            if first is None:
                continue  # never used: no review reads that layout's probe
            if (band.model, band.framework, band.then) not in self.probes:
                raise ConfigError(
                    f"the band {band.key} ({self.band_source}) escalates to the {band.then}"
                    f" layout, and no probe reads it ({self.probe_source})"
                )
            if not band.lo <= first.threshold <= band.hi:
                raise ConfigError(
                    f"the band {band.key} [{band.lo}, {band.hi}) ({self.band_source}) does not"
                    f" contain its first probe's threshold {first.threshold:.3f}"
                )

    @property
    def probe_read(self) -> str | None:
        """How the probe reads the judge's state, for reports: ``logits`` (the embedded
        engine's output layer) or ``embeddings``; None when no probe judges."""
        if self.method != JudgeMethod.PROBE or not self.probes:
            return None
        return "logits" if self.state_reader is not None else "embeddings"

    def probe_for(self, framework: str, layout: Layout | None = None) -> Probe | None:
        """The probe that reads reviews under ``framework`` (and the layout), if the method is
        the probe and one covers them; else None, and the single method judges."""
        if self.method != JudgeMethod.PROBE:
            return None
        return self.probes.get((self.judge_model, framework, (layout or self.layout).value))

    def band_for(self, framework: str, layout: Layout | None = None) -> Band | None:
        """The band in which a probe review under ``framework`` (and the layout) asks for the
        second opinion, if one is configured and a band covers them; else None."""
        if self.second_opinion is None or self.probe_for(framework, layout) is None:
            return None
        key = (self.judge_model, framework, (layout or self.layout).value)
        return self.bands.get((*key, self.second_opinion.value))

    def asked_in(self, framework: str, layout: Layout | None = None) -> Layout:
        """The layout a review under ``framework`` is asked in: the configured one (or
        ``layout``), except that the brief question, which names the framework by its title
        only, is for a probe: a brief review no probe reads (another judge, a user's own
        framework, an engine without hidden states, another method) is asked in the paper
        layout, where the single method reads the framework's laws and is calibrated."""
        layout = layout or self.layout
        return layout if self.probe_for(framework, layout) is not None else layout.without_probe

    def framework(self, name: str | None) -> Framework:
        name = name or self.default_framework
        try:
            return self.frameworks[name]
        except KeyError:
            known = ", ".join(sorted(self.frameworks))
            raise ConfigError(f"unknown framework {name!r} (known: {known})") from None

    async def label_constraint(self) -> Constraint:
        """How the judge's label is forced on this engine (asked once, when ``auto``)."""
        if self.constraint is None:
            async with self._detecting:
                if self.constraint is None:
                    self.constraint = await self.client.detect_constraint(self.judge_model)
        return self.constraint

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
    ) -> Judgement:
        """Judge ``answer`` to ``messages``; think tags in the answer are reviewed as reasoning.

        ``ahead`` is the work already done on this answer while it was generated
        (``review_ahead``): the verdict is the same with or without it."""
        chosen = self.framework(framework)
        visible, thoughts = split_reasoning(answer)
        reasoning = "\n\n".join(r for r in (reasoning, thoughts) if r) or None
        layout = layout or self.layout  # _judge asks where no probe reads it (asked_in)
        started = time.perf_counter()
        # Everything the judge reads is screened: the answer and the reasoning it came with.
        rules = None
        if self.screen:
            screened = screen_answer("\n\n".join(t for t in (visible, reasoning) if t))
            rules = list(screened.rules) or None
        try:
            constraint = await self.label_constraint()
            readings = await asyncio.gather(
                *(
                    self._judge(chosen, messages, window, layout, reasoning, constraint, ahead)
                    for window in answer_windows(visible, self.window_chars)
                )
            )
        except (EngineError, VerdictError):
            if rules is None:
                raise
            readings = []  # the screen decided; a judge that failed cannot undo that
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
            layout=self.asked_in(chosen.name, layout).value,  # as _judge decided
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

    async def _judge(
        self,
        framework: Framework,
        messages: list[Message],
        answer: str,
        layout: Layout,
        reasoning: str | None,
        constraint: Constraint,
        ahead: ReviewAhead | None = None,
    ) -> VerdictReading:
        probe = self.probe_for(framework.name, layout)
        if probe is not None:
            try:
                first = await self._judge_probe(
                    probe, framework, messages, answer, reasoning, ahead
                )
                return await self._second_opinion(
                    first, framework, messages, answer, layout, reasoning
                )
            except EngineStatusError as exc:
                if exc.status_code not in (404, 405, 501):
                    raise
                # This engine cannot return hidden states (vLLM serving a generative model,
                # llama-server without --embeddings): the single method, said once.
                log.warning("the probe needs the engine's embeddings (%s): single method", exc)
                self.probes = {}
        layout = self.asked_in(framework.name, layout)  # no probe reads it: see asked_in
        prompt = render_review(framework, messages, answer, layout=layout, reasoning=reasoning)
        budget = framework.prompt_variant.reasoning_tokens
        if budget:  # a short reasoning first (greedy), then the forced label after it
            thought = await self._free_text(prompt, temperature=0.0, max_tokens=budget)
            prompt = render_label_after_reasoning(prompt, thought)
        body = judge_request(self.judge_model, prompt, constraint, self.top_logprobs)
        result = await self.client.chat(body)
        calibration = self.calibrations.get((self.judge_model, framework.name, layout.value))
        if calibration is None:
            return read_verdict(result["choices"][0], self.rule)
        reading = read_verdict(result["choices"][0], calibration.rule())
        if reading.label_probs is None:
            return reading
        confidence = calibration.confidence(reading.label_probs, reading.verdict)
        return dataclasses.replace(reading, confidence=confidence)

    def review_ahead(
        self, messages: list[Message], framework: str | None = None
    ) -> ReviewAhead | None:
        """Work on an answer to ``messages`` that can start while it is generated
        (``conscience.ahead``): the judge's prompt prefilled in the engine's cache, for the
        single method and for a probe whose reader reuses that cache (the embedded engine's);
        a probe reading ``/v1/embeddings`` gets its complete windows read instead. None for
        the follow-up layouts, whose prompt begins with the
        generation's own: the engine that generates the answer caches it as it goes."""
        chosen = self.framework(framework)
        if self.layout.follows_up:
            return None
        probe = self.probe_for(chosen.name)
        if probe is not None and self.state_reader is None:

            def render(window: str) -> list[Message]:
                return render_review(chosen, messages, window, layout=self.layout)

            async def read(prompt: list[Message]) -> list[float]:
                return await hidden_state(self.client, self.judge_model, prompt)

            return WindowsAhead(render, read, probe.max_answer_chars)
        # The probe reads answers in windows of its own size (review._judge_probe).
        max_chars = self.window_chars if probe is None else probe.max_answer_chars

        async def warm(visible: str) -> None:
            await self._warm_prefix(chosen, messages, visible, self.layout)

        return PrefixAhead(warm, self.warm_every_chars, max_chars)

    async def _warm_prefix(
        self, framework: Framework, messages: list[Message], answer: str, layout: Layout
    ) -> None:
        """Leave the review's prompt in ``layout``, up to the end of ``answer``, in the
        engine's prefix cache: the prompt text cut where the answer ends (llama.cpp's
        ``/apply-template``) as a one-token completion; an engine without that route gets the
        review's own request with the answer so far, whose shared beginning its cache keeps
        (vLLM's prefix caching)."""
        prompt = render_review(framework, messages, answer + _CUT, layout=layout)
        if self._templates:
            try:
                rendered = await self.client.apply_template(prompt)
            except EngineStatusError as exc:
                if exc.status_code not in (404, 405, 501):
                    raise
                self._templates = False
            else:
                head, found, _ = rendered.partition(_CUT)
                if found:
                    body = {"model": self.judge_model, "prompt": head, "max_tokens": 1}
                    await self.client.completions({**body, "temperature": 0.0})
                return
        prompt = render_review(framework, messages, answer, layout=layout)
        await self.client.chat({"model": self.judge_model, "messages": prompt, "max_tokens": 1})

    async def _judge_probe(
        self,
        probe: Probe,
        framework: Framework,
        messages: list[Message],
        answer: str,
        reasoning: str | None,
        ahead: ReviewAhead | None = None,
    ) -> VerdictReading:
        """The probe's verdict: the single review's prompt in the probe's layout, read at the
        verdict position; a longer answer in the probe's windows, the worst deciding. A window
        read ahead (``ahead``) for the same prompt is not read again."""
        p_unethical = 0.0
        layout = Layout(probe.layout)
        for window in answer_windows(answer, probe.max_answer_chars):
            prompt = render_review(framework, messages, window, layout=layout, reasoning=reasoning)
            hidden = await ahead.hidden(prompt) if ahead is not None else None
            if hidden is None:
                hidden = await hidden_state(
                    self.client, self.judge_model, prompt, self.state_reader
                )
            p_unethical = max(p_unethical, probe.score(hidden))
        probs = {Verdict.ETHICAL: 1.0 - p_unethical, Verdict.NEUTRAL: 0.0}
        probs[Verdict.UNETHICAL] = p_unethical
        verdict = Verdict.UNETHICAL if p_unethical >= probe.threshold else Verdict.ETHICAL
        return VerdictReading(verdict, probs[verdict], probs, "")

    async def _second_opinion(
        self,
        first: VerdictReading,
        framework: Framework,
        messages: list[Message],
        answer: str,
        layout: Layout,
        reasoning: str | None,
    ) -> VerdictReading:
        """The first probe's reading where its band is sure, else the second layout's probe's
        (``conscience.cascade``); with a band, ``readings`` holds the first layout's
        P(unethical), and the second's when it was asked (then it decided)."""
        band = self.band_for(framework.name, layout)
        if band is None:
            return first
        score = (first.label_probs or {})[Verdict.UNETHICAL]
        readings = {layout.value: score}
        if not band.doubts(score):
            return dataclasses.replace(first, readings=readings)
        then = self.probes[(self.judge_model, framework.name, band.then)]
        second = await self._judge_probe(then, framework, messages, answer, reasoning)
        readings[band.then] = (second.label_probs or {})[Verdict.UNETHICAL]
        return dataclasses.replace(second, readings=readings)

    async def _free_text(
        self, messages: list[Message], *, temperature: float, max_tokens: int
    ) -> str:
        """The judge's unconstrained reply to ``messages``, without its ``<think>`` blocks."""
        result = await self.client.chat(
            {
                "model": self.judge_model,
                "messages": messages,
                "temperature": temperature,
                "max_tokens": max_tokens,
            }
        )
        content = (result["choices"][0].get("message") or {}).get("content") or ""
        return _THINK_RE.sub("", content).strip()

    async def rewrite(
        self, messages: list[Message], answer: str, framework: str | None = None
    ) -> str:
        """An ethical answer to ``messages`` that still helps, from the frozen model."""
        prompt = render_rewrite(self.framework(framework), messages, answer)
        text = await self._free_text(
            prompt, temperature=self.rewrite_temperature, max_tokens=self.rewrite_max_tokens
        )
        if not text:
            raise EngineError("the judge returned an empty rewrite")
        return text

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
    settings: Any, client: EngineClient, state_reader: StateReader | None = None
) -> Conscience:
    """Build the ``Conscience`` of ``Settings``: the one factory of the proxy, the CLI, the
    trainer's online judge and the evaluations, so all of them decide by the same rule.
    ``state_reader`` is the engine's way to the probe's hidden state (``Engine.state_reader``
    of ``open_engine``; None: ``/v1/embeddings``).

    Frameworks load, and fail, here. The decision rule is ``select_calibrations``' choice: the
    calibration file, else an explicit unethical threshold without calibration, else the
    packaged calibration (then argmax). The label constraint is the settings'
    ``judge_constraint``; ``auto`` asks the engine once, at the first review.
    """
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
        probes = load_probes(path)
        where = "packaged probe" if settings.probe_file is None else "probe file"
        probe_source = f"{where} {path}"
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
        state_reader=state_reader if probes else None,
        second_opinion=settings.second_opinion,
        bands=bands,
        band_source=band_source,
        constraint=constraint,
        rule=DecisionRule(settings.unethical_threshold, settings.neutral_threshold),
        top_logprobs=settings.top_logprobs,
        rewrite_max_tokens=settings.rewrite_max_tokens,
        window_chars=settings.review_window_chars,
        calibrations=calibrations,
        calibration_source=source,
    )
