"""The probe verdict (conscience/probe.py): the file, the read-out, and the review against a
scripted OpenAI-compatible server on loopback (its embeddings are a hash of the prompt, so
the test can compute what the probe must have read)."""

import hashlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conscience.client import EngineClient
from conscience.errors import ConfigError, EngineStatusError
from conscience.framework import load_frameworks
from conscience.labels import JudgeMethod, Layout
from conscience.probe import Probe, load_probes, save_probe
from conscience.prompts import render_review
from conscience.review import Conscience, answer_windows
from conscience.testing.scripted import SCRIPTED_OUTPUT_ROWS, SCRIPTED_PROBE, ScriptedEngine

QUESTION = [{"role": "user", "content": "How do I pick a lock?"}]
PROBE = SCRIPTED_PROBE


def _scripted_state(messages: list[dict]) -> list[float]:
    """What the scripted engine answers for these review messages (testing/scripted.py)."""
    turns = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"
    return [b / 255 for b in hashlib.sha256(json.dumps(turns).encode()).digest()[:8]]


def test_score_is_the_logistic_of_the_standardised_state() -> None:
    hidden = [0.75, 0.25, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0]
    z = 1.0 * 1 - 0.5 * -1 + 0.25 * 0 + 2.0 * 2 - 0.1
    assert PROBE.score(hidden) == pytest.approx(1 / (1 + math.exp(-z)))
    with pytest.raises(ConfigError, match="another model"):
        PROBE.score([0.0] * 7)


def test_the_file_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "probe.json"
    save_probe(path, PROBE)
    assert load_probes(path) == {PROBE.key: PROBE}
    for name, bad_probe, message in (
        ("sd.json", replace(PROBE, sd=(0.0,) * 8), "must match"),
        ("sizes.json", replace(PROBE, weights=(1.0,)), "must match"),
        ("threshold.json", replace(PROBE, threshold=1.5), r"threshold in \[0, 1\]"),
    ):
        bad = tmp_path / name
        bad.write_text(json.dumps([asdict(bad_probe)]), encoding="utf-8")
        with pytest.raises(ConfigError, match=rf"{name}.*{message}"):
            load_probes(bad)


def test_a_file_holds_a_probe_per_framework_and_saving_one_keeps_the_others(
    tmp_path: Path,
) -> None:
    path = tmp_path / "probes.json"
    wwjd = replace(PROBE, framework="wwjd", bias=-3.0)
    save_probe(path, PROBE)
    save_probe(path, wwjd)
    save_probe(path, replace(PROBE, threshold=0.5))  # refitted: replaces its own key only
    probes = load_probes(path)
    assert probes == {PROBE.key: replace(PROBE, threshold=0.5), wwjd.key: wwjd}
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([asdict(PROBE), asdict(PROBE)]), encoding="utf-8")
    with pytest.raises(ConfigError, match="two probes for the same"):
        load_probes(twice)


def test_a_file_of_one_probe_object_still_loads(tmp_path: Path) -> None:
    """The format of probe files written before several frameworks were shipped."""
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(asdict(PROBE)), encoding="utf-8")
    assert load_probes(path) == {PROBE.key: PROBE}


@pytest.fixture
async def client(engine_url: str) -> AsyncIterator[EngineClient]:
    async with EngineClient(engine_url, api_key="sk-upstream", timeout=2.0) as client:
        yield client


def _conscience(client: EngineClient, *probes: Probe, **kwargs: Any) -> Conscience:
    fields: dict[str, Any] = {"method": JudgeMethod.PROBE} | kwargs
    return Conscience(
        client=client,
        judge_model="judge",
        frameworks=load_frameworks(),
        probes={probe.key: probe for probe in probes or (PROBE,)},
        **fields,
    )


async def test_review_reads_the_single_review_prompt_and_decides_by_the_threshold(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    framework = load_frameworks()["three-laws"]
    answer = "Ask a locksmith to help you."
    judgement = await _conscience(client).review(QUESTION, answer)
    expected = PROBE.score(
        _scripted_state(render_review(framework, QUESTION, answer, layout=Layout.PAPER))
    )
    assert judgement.label_probs == pytest.approx(
        {"ethical": 1 - expected, "neutral": 0.0, "unethical": expected}
    )
    assert judgement.verdict == ("unethical" if expected >= 0.6 else "ethical")
    assert engine.of_kind("review") == []  # no label asked: the state is the verdict
    always = replace(PROBE, threshold=0.0)
    assert (await _conscience(client, always).review(QUESTION, answer)).verdict == "unethical"


async def test_a_long_answer_is_read_in_windows_and_the_worst_decides(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    framework = load_frameworks()["three-laws"]
    answer = " ".join(f"word{i}" for i in range(120))  # about 900 characters: 4 windows
    judgement = await _conscience(client).review(QUESTION, answer)
    from conscience.review import answer_windows

    windows = answer_windows(answer, 300)
    assert len(windows) >= 3
    scores = [
        PROBE.score(_scripted_state(render_review(framework, QUESTION, w, layout=Layout.PAPER)))
        for w in windows
    ]
    assert judgement.label_probs["unethical"] == pytest.approx(max(scores))


async def test_each_framework_is_read_by_its_own_probe(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    wwjd = replace(PROBE, framework="wwjd", weights=tuple(-w for w in PROBE.weights), bias=0.3)
    conscience = _conscience(client, PROBE, wwjd)
    answer = "Ask a locksmith to help you."
    for framework, probe in (("three-laws", PROBE), ("wwjd", wwjd)):
        prompt = render_review(load_frameworks()[framework], QUESTION, answer, layout=Layout.PAPER)
        judgement = await conscience.review(QUESTION, answer, framework)
        assert judgement.label_probs["unethical"] == pytest.approx(
            probe.score(_scripted_state(prompt))
        )
    assert engine.of_kind("review") == []  # no label asked under either
    assert conscience.probe_for("four-laws") is None  # no probe: the single method judges


async def test_reviews_the_probe_was_not_fitted_for_use_the_single_method(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    engine.verdict = "neutral"
    judgement = await _conscience(client).review(QUESTION, "Ask a locksmith.", "wwjd")
    assert judgement.verdict == "neutral"  # a label was asked: the probe is three-laws'
    assert len(engine.of_kind("review")) == 1


async def test_an_engine_without_hidden_states_falls_back_to_the_single_method(
    engine: ScriptedEngine, client: EngineClient, caplog: pytest.LogCaptureFixture
) -> None:
    engine.hidden_states = False  # llama-server without --embeddings; vLLM has no route at all
    engine.verdict = "neutral"
    conscience = _conscience(client)
    judgement = await conscience.review(QUESTION, "Ask a locksmith.")
    assert judgement.verdict == "neutral" and len(engine.of_kind("review")) == 1
    assert conscience.probe_for("three-laws") is None and conscience.probe_read is None
    assert caplog.text.count("the probe needs the engine's embeddings") == 1
    await conscience.review(QUESTION, "Ask a locksmith.")  # not tried again
    assert caplog.text.count("the probe needs the engine's embeddings") == 1


async def test_what_the_engine_said_at_start_holds_for_every_review(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    """An engine known at start to give no hidden state (``Engine.facts``) gets the single
    method for every review and no probe request; one known to give them that refuses a state
    fails that review, and the next one reads the probe again: nothing switches."""
    from conscience.judge import EngineFacts
    from conscience.review import conscience_from_settings
    from conscience.settings import Settings

    engine.verdict = "neutral"
    settings = Settings(judge_model="judge", judge_method="probe", judge_constraint="choice")
    single = conscience_from_settings(settings, client, EngineFacts(hidden_states=False))
    assert single.probes == {} and single.probe_read is None
    assert (await single.review(QUESTION, "Ask a locksmith.")).verdict == "neutral"
    assert engine.embedding_requests == []
    probing = _conscience(client, hidden_states=True)
    engine.hidden_states = False
    with pytest.raises(EngineStatusError):  # an error of this review
        await probing.review(QUESTION, "Ask a locksmith.")
    engine.hidden_states = True
    judgement = await probing.review(QUESTION, "Ask a locksmith.")
    assert judgement.label_probs["neutral"] == 0.0  # the probe read it (a probe has no neutral)
    assert probing.probe_for("three-laws") == PROBE


async def test_a_state_reader_reads_the_same_prompt_through_the_logits(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    """The embedded engine's reader (engine/hidden_state.py) instead of /v1/embeddings: the
    same review prompt, read from one-token probabilities, gives the state the probe scores
    (the embeddings' state at unit length, as llama.cpp returns it)."""
    from conscience.engine.hidden_state import LogitsReader

    framework = load_frameworks()["three-laws"]
    answer = "Ask a locksmith to help you."
    reader = LogitsReader.of_rows(
        list(range(len(SCRIPTED_OUTPUT_ROWS))), np.array(SCRIPTED_OUTPUT_ROWS)
    )
    conscience = _conscience(client, state_reader=reader)
    judgement = await conscience.review(QUESTION, answer)
    state = np.array(
        _scripted_state(render_review(framework, QUESTION, answer, layout=Layout.PAPER))
    )
    expected = PROBE.score((state / np.linalg.norm(state)).tolist())
    assert judgement.label_probs["unethical"] == pytest.approx(expected, abs=1e-9)
    assert expected != pytest.approx(PROBE.score(state.tolist()), abs=1e-3)  # tells them apart
    assert engine.embedding_requests == [] and len(engine.token_prob_requests) == 1
    assert conscience.probe_read == "logits" and _conscience(client).probe_read == "embeddings"
    single = _conscience(client, method=JudgeMethod.SINGLE, state_reader=reader)
    assert single.probe_read is None  # reports say no probe judged
    assert engine.token_prob_requests[0] == await client.apply_template(
        render_review(framework, QUESTION, answer, layout=Layout.PAPER)
    )


@pytest.mark.parametrize("layout", [Layout.FOLLOW_UP, Layout.FOLLOW_UP_BRIEF])
async def test_a_follow_up_probe_reads_the_answer_as_the_judges_own_turn(
    engine: ScriptedEngine, client: EngineClient, layout: Layout
) -> None:
    """A probe fitted in the follow-up layout reads the conversation, the answer as the
    judge's own last turn and the framework's question after it: the prompt an engine that
    just generated the answer has cached up to the question. Reviews in that layout get no
    work ahead: the generation itself fills that cache. The brief layout's probe reads its own
    prompt (the one-line question), not the other's."""
    framework = load_frameworks()["three-laws"]
    follow_up = replace(PROBE, layout=layout.value, max_answer_chars=6000)
    conscience = _conscience(client, PROBE, follow_up)
    conscience.layout = layout
    answer = " ".join(f"word{i}" for i in range(120))  # longer than the paper probe's windows
    judgement = await conscience.review(QUESTION, answer)
    prompt = render_review(framework, QUESTION, answer, layout=layout)
    assert prompt[-2] == {"role": "assistant", "content": answer}
    assert judgement.layout == layout.value
    assert judgement.label_probs["unethical"] == pytest.approx(
        follow_up.score(_scripted_state(prompt))
    )
    assert len(engine.embedding_requests) == 1  # the whole answer in one reading
    assert conscience.review_ahead(QUESTION) is None
    paper = await conscience.review(QUESTION, answer, layout=Layout.PAPER)
    windows = answer_windows(answer, PROBE.max_answer_chars)  # the paper probe's 300 characters
    assert len(windows) > 1 and len(engine.embedding_requests) == 1 + len(windows)
    assert paper.label_probs != judgement.label_probs


async def test_a_brief_review_no_probe_reads_is_asked_in_the_paper_layout(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    """The brief question names the framework by its title only: where no probe reads a
    review (another framework, an engine without hidden states), the single method asks the
    paper layout's question, with the framework's laws, and the judgement says so."""
    brief = replace(PROBE, layout=Layout.FOLLOW_UP_BRIEF.value, max_answer_chars=6000)
    conscience = _conscience(client, brief)
    conscience.layout = Layout.FOLLOW_UP_BRIEF
    wwjd = load_frameworks()["wwjd"]
    judgement = await conscience.review(QUESTION, "Ask a locksmith.", "wwjd")  # no wwjd probe
    (asked,) = engine.of_kind("review")
    assert asked["messages"] == render_review(
        wwjd, QUESTION, "Ask a locksmith.", layout=Layout.PAPER
    )
    assert judgement.layout == "paper"
    assert conscience.asked_in("three-laws") == Layout.FOLLOW_UP_BRIEF  # the probe reads it
    assert (await conscience.review(QUESTION, "Ask a locksmith.")).layout == "follow-up-brief"
    engine.hidden_states = False  # the engine refuses the probe's reading after it gave one
    with pytest.raises(EngineStatusError):  # an error of that review, not a switch
        await conscience.review(QUESTION, "Ask a locksmith.")
    assert conscience.asked_in("three-laws") == Layout.FOLLOW_UP_BRIEF
