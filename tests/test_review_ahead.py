"""Review while generating (conscience/ahead.py): the windows read ahead are exactly those the
review reads at the end, and the verdict is the same with and without them — against the
scripted engine on loopback, whose hidden states are a hash of the prompt."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conscience.ahead import ChunkFollower, PrefixAhead, WindowsAhead, prompt_key
from conscience.client import EngineClient
from conscience.errors import EngineError
from conscience.framework import load_frameworks
from conscience.labels import JudgeMethod, Layout
from conscience.prompts import render_review
from conscience.review import Conscience, answer_windows
from conscience.testing.scripted import SCRIPTED_OUTPUT_ROWS, SCRIPTED_PROBE, ScriptedEngine

QUESTION = [{"role": "user", "content": "How do I pick a lock?"}]
PROBE = SCRIPTED_PROBE
ANSWER = " ".join(f"word{i}" for i in range(120))  # 8xx characters: windows of 300 overlap


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class _Recorder:
    """An engine call that records the prompts it was asked for, and can be held."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def render(self, window: str) -> list[dict]:
        return [{"role": "user", "content": window}]

    async def read(self, prompt: list[dict]) -> list[float]:
        await self.gate.wait()
        self.prompts.append(prompt[0]["content"])
        return [float(len(prompt[0]["content"]))]


@pytest.mark.parametrize(
    "answer",
    [
        ANSWER,
        "x" * 300,  # exactly one window: the whole answer
        "x" * 299,  # shorter: nothing is complete before the end
        "  \n" + ANSWER + "\n\n  ",  # the review reads it stripped
        "".join(chr(97 + i % 23) for i in range(1000)),
    ],
)
async def test_the_windows_read_ahead_are_the_reviews_own_but_its_last(answer: str) -> None:
    recorder = _Recorder()
    ahead = WindowsAhead(recorder.render, recorder.read, window_chars=300)
    so_far = ""
    for piece in _pieces(answer, 7):
        so_far += piece
        ahead.grow(so_far)
    await asyncio.sleep(0.05)
    final = answer_windows(answer.strip(), 300)
    complete = [w for w in final if len(w) == 300]  # every window but a short last one
    assert recorder.prompts == complete
    for window in final:
        hidden = await ahead.hidden(recorder.render(window))
        assert hidden == ([float(len(window))] if window in complete else None)
    await ahead.close()


async def test_reasoning_stops_the_work_ahead_and_close_cancels_what_waits() -> None:
    recorder = _Recorder()
    recorder.gate.clear()  # the engine is busy: the first read waits, the others queue
    ahead = WindowsAhead(recorder.render, recorder.read, window_chars=300)
    text = "".join(chr(97 + i % 23) for i in range(2000))
    ahead.grow(text[:700])
    assert ahead.scheduled == 2
    ahead.grow(text[:700] + "<think>")
    ahead.grow(text + "<think>")
    assert ahead.stopped and ahead.scheduled == 2
    await ahead.close()
    recorder.gate.set()
    await asyncio.sleep(0.01)
    assert recorder.prompts == []  # cancelled before the engine answered
    assert await ahead.hidden(recorder.render(text[:300])) is None


async def test_a_failed_read_ahead_is_read_again_at_the_end() -> None:
    async def broken(prompt: list[dict]) -> list[float]:
        raise EngineError("engine unavailable")

    ahead = WindowsAhead(lambda w: [{"role": "user", "content": w}], broken, window_chars=300)
    ahead.grow("q" * 400)
    assert await ahead.hidden([{"role": "user", "content": "q" * 300}]) is None
    await ahead.close()


def test_prompt_keys_tell_prompts_apart() -> None:
    one = [{"role": "user", "content": "a"}]
    assert prompt_key(one) == prompt_key([{"content": "a", "role": "user"}])
    assert prompt_key(one) != prompt_key([{"role": "user", "content": "a "}])


@pytest.fixture
async def client(engine_url: str) -> AsyncIterator[EngineClient]:
    async with EngineClient(engine_url, api_key="sk-upstream", timeout=2.0) as client:
        yield client


def _conscience(client: EngineClient, **kwargs: Any) -> Conscience:
    fields: dict[str, Any] = {"method": JudgeMethod.PROBE, "probes": {PROBE.key: PROBE}}
    return Conscience(
        client=client, judge_model="judge", frameworks=load_frameworks(), **(fields | kwargs)
    )


async def _settled(engine: ScriptedEngine, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(engine.embedding_requests) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def test_the_verdict_is_the_same_and_only_the_last_window_is_read_at_the_end(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    conscience = _conscience(client)
    without = await conscience.review(QUESTION, ANSWER)
    windows = answer_windows(ANSWER, 300)
    assert len(engine.embedding_requests) == len(windows) == 4
    engine.embedding_requests.clear()

    follower = ChunkFollower(lambda: conscience.review_ahead(QUESTION))
    for piece in _pieces(ANSWER, 5):
        follower.see({"choices": [{"index": 0, "delta": {"content": piece}}]})
    await _settled(engine, 3)
    assert len(engine.embedding_requests) == 3  # the complete windows, during the "generation"
    with_ahead = await conscience.review(QUESTION, ANSWER, ahead=follower.ahead(0))
    await follower.close()
    assert len(engine.embedding_requests) == 4  # the last window only, after the end
    assert with_ahead.label_probs == without.label_probs
    assert with_ahead.verdict == without.verdict


async def test_which_work_ahead_each_method_gets(client: EngineClient) -> None:
    conscience = _conscience(client)
    assert isinstance(conscience.review_ahead(QUESTION), WindowsAhead)
    # wwjd is not the probe's framework: its reviews use the single method, prefilled ahead.
    assert isinstance(conscience.review_ahead(QUESTION, "wwjd"), PrefixAhead)


async def test_warm_ups_follow_the_answer_one_at_a_time() -> None:
    sent: list[str] = []
    release = asyncio.Event()

    async def warm(visible: str) -> None:
        await release.wait()
        sent.append(visible)

    ahead = PrefixAhead(warm, every_chars=100, max_chars=1000)
    ahead.grow("a" * 50)
    assert ahead.warm_ups == 0 and sent == []  # not yet every_chars of answer
    ahead.grow("a" * 120)  # the first warm-up starts and waits for the engine
    ahead.grow("a" * 400)  # one in flight: this one waits its turn
    release.set()
    await asyncio.sleep(0.01)
    assert sent == ["a" * 120, "a" * 400]  # the second covers everything that arrived meanwhile
    ahead.grow("a" * 450)
    await asyncio.sleep(0.01)
    assert len(sent) == 2  # 50 new characters: too few
    ahead.grow("a" * 1001)
    assert ahead.stopped  # longer answers are reviewed in windows: nothing more to prefill
    await ahead.close()


async def test_the_single_reviews_prompt_is_prefilled_up_to_the_answer_so_far(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    conscience = _conscience(client, method=JudgeMethod.SINGLE, warm_every_chars=200)
    ahead = conscience.review_ahead(QUESTION)
    assert isinstance(ahead, PrefixAhead)
    so_far = ""
    for piece in _pieces(ANSWER, 50):
        so_far += piece
        ahead.grow(so_far)
        await asyncio.sleep(0.02)  # the scripted engine answers each warm-up at once
    await ahead.close()
    warmed = [body["prompt"] for kind, body in engine.requests if "prompt" in body]
    assert len(warmed) == ahead.warm_ups >= 3
    final = render_review(
        load_frameworks()["three-laws"], QUESTION, ANSWER, layout=conscience.layout
    )
    rendered = await client.apply_template(final)
    for prompt in warmed:  # each a beginning of the review's prompt, ending in the answer
        assert rendered.startswith(prompt) and ANSWER.startswith(prompt.rsplit("\n", 1)[-1])
    assert (await conscience.review(QUESTION, ANSWER, ahead=ahead)).verdict == "ethical"
    assert engine.of_kind("review")[-1]["messages"] == final  # the review's own request


async def test_without_a_template_route_the_reviews_request_warms_the_cache(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    engine.hidden_states = False  # no /apply-template (vLLM)
    conscience = _conscience(client, method=JudgeMethod.SINGLE)
    ahead = conscience.review_ahead(QUESTION)
    assert isinstance(ahead, PrefixAhead)
    ahead.grow(ANSWER[:500])
    await asyncio.sleep(0.1)
    await ahead.close()
    warm = engine.of_kind("rewrite")  # a judge request without log-probs
    framework = load_frameworks()["three-laws"]
    assert warm[0]["messages"] == render_review(
        framework, QUESTION, ANSWER[:500], layout=conscience.layout
    )
    assert warm[0]["max_tokens"] == 1


async def test_a_probe_read_through_the_cache_gets_its_prompt_prefilled_ahead(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    """With the embedded engine's reader the probe's read reuses the prefix cache: its prompt
    is prefilled as the answer grows (one-token completions of its beginning, no state read),
    and the verdict is the one of the same read without work ahead."""
    import numpy as np

    from conscience.engine.hidden_state import LogitsReader

    reader = LogitsReader.of_rows(
        list(range(len(SCRIPTED_OUTPUT_ROWS))), np.array(SCRIPTED_OUTPUT_ROWS)
    )
    conscience = _conscience(client, warm_every_chars=100, state_reader=reader)
    answer = ANSWER[:290]  # within one of the probe's 300-character windows
    without = await conscience.review(QUESTION, answer)
    engine.requests.clear()
    engine.token_prob_requests.clear()

    ahead = conscience.review_ahead(QUESTION)
    assert isinstance(ahead, PrefixAhead) and ahead.max_chars == PROBE.max_answer_chars
    so_far = ""
    for piece in _pieces(answer, 30):
        so_far += piece
        ahead.grow(so_far)
        await asyncio.sleep(0.02)
    warmed = [body["prompt"] for _, body in engine.requests if "prompt" in body]
    assert len(warmed) == ahead.warm_ups >= 2 and engine.token_prob_requests == []
    framework = load_frameworks()["three-laws"]
    final = await client.apply_template(
        render_review(framework, QUESTION, answer, layout=Layout.PAPER)
    )
    for prompt in warmed:  # each a beginning of the probe's prompt, ending in the answer
        assert final.startswith(prompt) and answer.startswith(prompt.rsplit("\n", 1)[-1])
    with_ahead = await conscience.review(QUESTION, answer, ahead=ahead)
    await ahead.close()
    assert with_ahead.label_probs == without.label_probs
    assert engine.token_prob_requests == [final]  # the state is read once, at the end
