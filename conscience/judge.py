"""The judge: how one window of an answer becomes a reading, one way per configuration.

A ``Judge`` reads an answer to a conversation under a framework, in a layout, and returns a
``VerdictReading``: the verdict, P(label) (P(unethical) among them), the method that read it
and its evidence (the label's text, or the probes' P(unethical) by layout). It may also work on
the answer while it is generated (``ahead``, ``conscience.ahead``). The methods that ship:

    SingleReview   the paper's one question; the label's log-probs decide (conscience/verdict.py)
    ProbeJudge     a linear probe on the judge's hidden state where one covers the review
                   (conscience/probe.py); elsewhere its single review judges
    SecondOpinion  two judges and a band: where the first's P(unethical) is in the band, the
                   second's reading decides (conscience/cascade.py)

``judge_for`` chooses once, when a ``Conscience`` is built, from the settings and what
``open_engine`` learnt of the engine (``EngineFacts``). Whether an upstream gives hidden
states is not known at start (asking would send it a request before the proxy serves, and an
upstream may still be starting): the probe's first read learns it, once, in one place
(``ProbeJudge.hidden_states``); after that an engine that refuses a state fails that review
(an ``EngineStatusError``), it does not switch the method.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from conscience.ahead import PrefixAhead, ReviewAhead, WindowsAhead
from conscience.calibration import Calibration
from conscience.cascade import Band
from conscience.client import Constraint, EngineClient
from conscience.errors import ConfigError, EngineStatusError
from conscience.framework import Framework
from conscience.labels import JudgeMethod, Layout, Verdict
from conscience.probe import Probe, StateReader, hidden_state
from conscience.prompts import render_label_after_reasoning, render_review
from conscience.verdict import LABEL_SURFACE_FORMS, DecisionRule, VerdictReading, read_verdict

__all__ = [
    "EngineFacts",
    "Judge",
    "ProbeJudge",
    "SecondOpinion",
    "SingleReview",
    "answer_windows",
    "check_bands",
    "free_reply",
    "free_text",
    "judge_for",
    "judge_request",
]

log = logging.getLogger("conscience.judge")

Message = dict[str, Any]

# What an engine answers when it has no way to a hidden state (vLLM serving a generative model,
# llama-server without --embeddings), or no /apply-template.
_NO_ROUTE = (404, 405, 501)

# Where the answer so far ends in a rendered review prompt (invisible separators and a word no
# answer or template writes), so the text before it can be prefilled (``SingleReview.warm``).
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


def _grammar(forms: tuple[str, ...]) -> str:
    return "root ::= " + " | ".join(f'"{form}"' for form in forms)


def judge_request(
    model: str, messages: list[Message], constraint: Constraint, top_logprobs: int
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


async def free_reply(
    client: EngineClient,
    model: str,
    messages: list[Message],
    *,
    temperature: float,
    max_tokens: int,
) -> tuple[str, dict[str, Any] | None]:
    """The judge's unconstrained reply to ``messages``, without its ``<think>`` blocks, and the
    engine's ``usage`` of it (None where it gave none)."""
    body = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    result = await client.chat(body)
    content = (result["choices"][0].get("message") or {}).get("content") or ""
    usage = result.get("usage")
    return _THINK_RE.sub("", content).strip(), usage if isinstance(usage, dict) else None


async def free_text(
    client: EngineClient,
    model: str,
    messages: list[Message],
    *,
    temperature: float,
    max_tokens: int,
) -> str:
    """The judge's unconstrained reply to ``messages``, without its ``<think>`` blocks."""
    text, _ = await free_reply(
        client, model, messages, temperature=temperature, max_tokens=max_tokens
    )
    return text


@dataclass(frozen=True)
class EngineFacts:
    """What is known of the engine when it opens (``Engine.facts`` of ``open_engine``)."""

    # Can the probe read the judge's state? The embedded engine knows at start (its reader, or
    # /v1/embeddings); None for an upstream: learnt at the probe's first read (``ProbeJudge``).
    hidden_states: bool | None = None
    # The embedded engine's read-out through its output layer (conscience/probe.py); None:
    # /v1/embeddings.
    state_reader: StateReader | None = None


class Judge(ABC):
    """One way to judge (see the module). ``read`` is the reading of one window of an answer;
    the rest says, for reports and for the review's record, how a review is read."""

    method: JudgeMethod

    def asked_in(self, framework: str, layout: Layout) -> Layout:
        """The layout a review under ``framework`` is asked in when ``layout`` is configured."""
        return layout.without_probe

    @abstractmethod
    async def read(
        self,
        framework: Framework,
        messages: list[Message],
        answer: str,
        layout: Layout,
        *,
        reasoning: str | None = None,
        ahead: ReviewAhead | None = None,
    ) -> VerdictReading:
        """The reading of ``answer`` (one window of it: ``Conscience`` windows long answers)."""

    def ahead(
        self, framework: Framework, messages: list[Message], layout: Layout, window_chars: int
    ) -> ReviewAhead | None:
        """Work on an answer to ``messages`` that can start while it is generated; None: none."""
        return None

    def probe_for(self, framework: str, layout: Layout) -> Probe | None:
        """The probe that reads reviews under ``framework`` in ``layout``; None: no probe."""
        return None

    def band_for(self, framework: str, layout: Layout) -> Band | None:
        """The band in which such a review asks for a second opinion; None: none does."""
        return None

    @property
    def probe_read(self) -> str | None:
        """How a probe reads the judge's state, for reports: ``logits`` (the embedded engine's
        output layer) or ``embeddings``; None when no probe judges."""
        return None


@dataclass
class SingleReview(Judge):
    """The paper's one question: the label's probabilities, decided by the calibration of the
    (judge model, framework, layout) where one was fitted, else by ``rule``."""

    client: EngineClient
    judge_model: str
    rule: DecisionRule = field(default_factory=DecisionRule)
    calibrations: dict[tuple[str, str, str], Calibration] = field(default_factory=dict)
    constraint: Constraint | None = None  # None: ask the engine once, at the first review
    top_logprobs: int = 20  # OpenAI's maximum; the labels' first tokens are always among them
    warm_every_chars: int = 400  # review while generating: the prompt prefilled so often
    _templates: bool = field(default=True, repr=False)  # does the engine answer /apply-template?
    # Concurrent first reviews ask the engine once, not once each.
    _detecting: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    method = JudgeMethod.SINGLE

    async def label_constraint(self) -> Constraint:
        """How the judge's label is forced on this engine (asked once, when not known)."""
        if self.constraint is None:
            async with self._detecting:
                if self.constraint is None:
                    self.constraint = await self.client.detect_constraint(self.judge_model)
        return self.constraint

    async def read(
        self,
        framework: Framework,
        messages: list[Message],
        answer: str,
        layout: Layout,
        *,
        reasoning: str | None = None,
        ahead: ReviewAhead | None = None,
    ) -> VerdictReading:
        layout = self.asked_in(framework.name, layout)
        constraint = await self.label_constraint()
        prompt = render_review(framework, messages, answer, layout=layout, reasoning=reasoning)
        budget = framework.prompt_variant.reasoning_tokens
        if budget:  # a short reasoning first (greedy), then the forced label after it
            thought = await free_text(
                self.client, self.judge_model, prompt, temperature=0.0, max_tokens=budget
            )
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

    def ahead(
        self, framework: Framework, messages: list[Message], layout: Layout, window_chars: int
    ) -> ReviewAhead | None:
        """The review's prompt prefilled in the engine's cache as the answer grows, up to
        ``window_chars`` of it (longer answers are reviewed in windows)."""

        async def warm(visible: str) -> None:
            await self.warm(framework, messages, visible, layout)

        return PrefixAhead(warm, self.warm_every_chars, window_chars)

    async def warm(
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
                if exc.status_code not in _NO_ROUTE:
                    raise
                self._templates = False  # how to warm, not what the verdict is
            else:
                head, found, _ = rendered.partition(_CUT)
                if found:
                    body = {"model": self.judge_model, "prompt": head, "max_tokens": 1}
                    await self.client.completions({**body, "temperature": 0.0})
                return
        prompt = render_review(framework, messages, answer, layout=layout)
        await self.client.chat({"model": self.judge_model, "messages": prompt, "max_tokens": 1})


@dataclass
class ProbeJudge(Judge):
    """The probe's reading of the review's prompt where a probe covers the (judge model,
    framework, layout); ``single`` judges every other review (another judge, a user's own
    framework)."""

    single: SingleReview
    probes: dict[tuple[str, str, str], Probe]
    # How the probe reads the judge's state: None, /v1/embeddings; the embedded engine's
    # read-out through the output layer, which reuses the prefix cache (conscience/probe.py).
    state_reader: StateReader | None = None
    # Does the engine give hidden states? None: not known yet (an upstream), learnt at the
    # first read: a refusal then (no route) makes it False, once, and the single review judges.
    hidden_states: bool | None = True

    method = JudgeMethod.PROBE

    @property
    def probe_read(self) -> str | None:
        if not self.probes or self.hidden_states is False:
            return None
        return "logits" if self.state_reader is not None else "embeddings"

    def probe_for(self, framework: str, layout: Layout) -> Probe | None:
        if self.hidden_states is False:
            return None
        return self.probes.get((self.single.judge_model, framework, layout.value))

    def asked_in(self, framework: str, layout: Layout) -> Layout:
        """The configured layout where a probe reads it; else the single review's: the brief
        question, which names the framework by its title only, is for a probe, and a brief
        review no probe reads is asked in the paper layout, with the framework's laws."""
        return layout if self.probe_for(framework, layout) is not None else layout.without_probe

    async def read(
        self,
        framework: Framework,
        messages: list[Message],
        answer: str,
        layout: Layout,
        *,
        reasoning: str | None = None,
        ahead: ReviewAhead | None = None,
    ) -> VerdictReading:
        probe = self.probe_for(framework.name, layout)
        if probe is not None:
            try:
                reading = await self.read_probe(
                    probe, framework, messages, answer, reasoning, ahead
                )
            except EngineStatusError as exc:
                if exc.status_code not in _NO_ROUTE or self.hidden_states is not None:
                    raise  # known to give states: an error of this review, not a switch
                self._no_hidden_states(exc)
            else:
                self.hidden_states = True
                return reading
        return await self.single.read(
            framework, messages, answer, layout, reasoning=reasoning, ahead=ahead
        )

    def _no_hidden_states(self, exc: EngineStatusError) -> None:
        """The engine has no way to a hidden state (vLLM serving a generative model,
        llama-server without --embeddings): learnt once, said once."""
        if self.hidden_states is None:
            self.hidden_states = False
            log.warning("the probe needs the engine's embeddings (%s): single method", exc)

    async def read_probe(
        self,
        probe: Probe,
        framework: Framework,
        messages: list[Message],
        answer: str,
        reasoning: str | None = None,
        ahead: ReviewAhead | None = None,
    ) -> VerdictReading:
        """The single review's prompt in the probe's layout, read at the verdict position; a
        longer answer in the probe's windows, the worst deciding. A window read ahead
        (``ahead``) for the same prompt is not read again."""
        p_unethical = 0.0
        layout = Layout(probe.layout)
        model = self.single.judge_model
        for window in answer_windows(answer, probe.max_answer_chars):
            prompt = render_review(framework, messages, window, layout=layout, reasoning=reasoning)
            hidden = await ahead.hidden(prompt) if ahead is not None else None
            if hidden is None:
                hidden = await hidden_state(self.single.client, model, prompt, self.state_reader)
            p_unethical = max(p_unethical, probe.score(hidden))
        probs = {Verdict.ETHICAL: 1.0 - p_unethical, Verdict.NEUTRAL: 0.0}
        probs[Verdict.UNETHICAL] = p_unethical
        verdict = Verdict.UNETHICAL if p_unethical >= probe.threshold else Verdict.ETHICAL
        return VerdictReading(verdict, probs[verdict], probs, "", method=JudgeMethod.PROBE)

    def ahead(
        self, framework: Framework, messages: list[Message], layout: Layout, window_chars: int
    ) -> ReviewAhead | None:
        """A probe reading ``/v1/embeddings`` gets its complete windows read ahead; one whose
        reader reuses the engine's cache (the embedded engine's), and the single review, get
        the prompt prefilled, up to the probe's window (``read_probe``) or the review's."""
        probe = self.probe_for(framework.name, layout)
        if probe is None:
            return self.single.ahead(framework, messages, layout, window_chars)
        if self.state_reader is None:

            def render(window: str) -> list[Message]:
                return render_review(framework, messages, window, layout=layout)

            async def read(prompt: list[Message]) -> list[float]:
                return await hidden_state(self.single.client, self.single.judge_model, prompt)

            return WindowsAhead(render, read, probe.max_answer_chars)
        return self.single.ahead(framework, messages, layout, probe.max_answer_chars)


@dataclass
class SecondOpinion(Judge):
    """Two judges and a band: the first's reading where its band (by judge model, framework,
    first layout, ``then``) is sure or none covers the review, else the second's reading in
    the layout ``then``; ``readings`` holds the first's P(unethical) by layout, and the
    second's when it was asked (then it decided)."""

    first: ProbeJudge
    second: ProbeJudge
    then: Layout
    bands: dict[tuple[str, str, str, str], Band]
    band_source: str | None = None  # where they came from, said at start-up

    method = JudgeMethod.PROBE

    @property
    def probe_read(self) -> str | None:
        return self.first.probe_read

    def probe_for(self, framework: str, layout: Layout) -> Probe | None:
        return self.first.probe_for(framework, layout)

    def band_for(self, framework: str, layout: Layout) -> Band | None:
        if self.first.probe_for(framework, layout) is None:
            return None
        key = (self.first.single.judge_model, framework, layout.value, self.then.value)
        return self.bands.get(key)

    def asked_in(self, framework: str, layout: Layout) -> Layout:
        return self.first.asked_in(framework, layout)

    async def read(
        self,
        framework: Framework,
        messages: list[Message],
        answer: str,
        layout: Layout,
        *,
        reasoning: str | None = None,
        ahead: ReviewAhead | None = None,
    ) -> VerdictReading:
        first = await self.first.read(
            framework, messages, answer, layout, reasoning=reasoning, ahead=ahead
        )
        band = self.band_for(framework.name, layout)
        if band is None:
            return first
        score = (first.label_probs or {})[Verdict.UNETHICAL]
        readings = {layout.value: score}
        if not band.doubts(score):
            return dataclasses.replace(first, readings=readings)
        second = await self.second.read(
            framework, messages, answer, Layout(band.then), reasoning=reasoning
        )
        readings[band.then] = (second.label_probs or {})[Verdict.UNETHICAL]
        return dataclasses.replace(second, readings=readings)

    def ahead(
        self, framework: Framework, messages: list[Message], layout: Layout, window_chars: int
    ) -> ReviewAhead | None:
        return self.first.ahead(framework, messages, layout, window_chars)


def check_bands(
    probes: dict[tuple[str, str, str], Probe],
    bands: dict[tuple[str, str, str, str], Band],
    probe_source: str | None = None,
    band_source: str | None = None,
) -> None:
    """A band whose first probe judges must have its second probe, and contain the first
    one's threshold (outside the band the first verdict stands): checked at start."""
    for band in bands.values():
        first = probes.get((band.model, band.framework, band.first))
        if first is None:
            continue  # never used: no review reads that layout's probe
        if (band.model, band.framework, band.then) not in probes:
            raise ConfigError(
                f"the band {band.key} ({band_source}) escalates to the {band.then}"
                f" layout, and no probe reads it ({probe_source})"
            )
        if not band.lo <= first.threshold <= band.hi:
            raise ConfigError(
                f"the band {band.key} [{band.lo}, {band.hi}) ({band_source}) does not"
                f" contain its first probe's threshold {first.threshold:.3f}"
            )


def judge_for(
    single: SingleReview,
    method: JudgeMethod,
    *,
    probes: dict[tuple[str, str, str], Probe] | None = None,
    state_reader: StateReader | None = None,
    hidden_states: bool | None = None,
    second_opinion: Layout | None = None,
    bands: dict[tuple[str, str, str, str], Band] | None = None,
    probe_source: str | None = None,
    band_source: str | None = None,
) -> Judge:
    """The judge of a configuration: the single review; the probe, where there are probes and
    the engine may give hidden states (``hidden_states``: True, or None when not known yet);
    with a second opinion's layout, the probe asking itself again in that layout inside the
    bands."""
    check_bands(probes or {}, bands or {}, probe_source, band_source)
    if method != JudgeMethod.PROBE or not probes or hidden_states is False:
        return single
    probe = ProbeJudge(single, probes, state_reader, hidden_states)
    if second_opinion is None:
        return probe
    return SecondOpinion(probe, probe, second_opinion, bands or {}, band_source)
