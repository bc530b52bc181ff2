"""Legacy completions (``POST /v1/completions``) through the real `openai` client: the prompt is
the question, every choice is reviewed by the same pipeline as chat completions, and the
scripted engine on loopback decides the verdicts (an answer containing ``MARK`` is unethical).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import Request

from conscience.server.completions.protocol import MAX_CHOICES
from conscience.server.pipeline import REFUSAL
from conscience.testing.scripted import Fault, ScriptedEngine, serve_in_thread

PROMPT = "The capital of France is"
MARK = "LOCKPICK"
GOOD = " Paris, on the Seine."
BAD = f" reached with a {MARK}."


@pytest.fixture
def seen_headers() -> list[dict[str, str]]:
    return []


@pytest.fixture
def engine_url(engine: ScriptedEngine, seen_headers: list[dict[str, str]]) -> Iterator[str]:
    """The scripted engine, recording the headers of every request it gets, and judging an
    answer unethical exactly when it contains MARK."""

    def judge(kind: str, body: dict[str, Any]) -> None:
        if kind == "review":
            engine.verdict = "unethical" if MARK in body["messages"][1]["content"] else "ethical"

    engine.handler = judge
    app = engine.app()

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        seen_headers.append(dict(request.headers))
        return await call_next(request)

    with serve_in_thread(app) as url:
        yield url + "/v1"


def _client(url: str, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)


def _stored(tmp_path: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(tmp_path / "judgements.sqlite3")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM judgements ORDER BY created_at").fetchall()


def _question(review: dict[str, Any]) -> str:
    return review["messages"][1]["content"]


def test_a_completion_is_reviewed_with_its_prompt_as_the_question(
    engine: ScriptedEngine, make_proxy, tmp_path: Path
) -> None:
    engine.generation = GOOD
    client = _client(make_proxy())
    raw = client.completions.with_raw_response.create(model="gen", prompt=PROMPT, max_tokens=8)
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text == GOOD
    conscience = completion.model_extra["conscience"]
    assert conscience["action"] == "passed" and conscience["verdict"] == "ethical"
    assert raw.headers["x-conscience-verdict"] == conscience["verdict"]
    assert raw.headers["x-conscience-action"] == "passed"
    (row,) = _stored(tmp_path)
    assert row["id"] == conscience["judgement_id"] and row["answer"] == GOOD.strip()
    assert json.loads(row["messages"]) == [{"role": "user", "content": PROMPT}]
    assert row["request_id"] == raw.headers["x-request-id"]
    # The upstream's /v1/completions got the client's body, less our key; the judge saw both.
    (generated,) = engine.of_kind("generate")
    assert generated["prompt"] == PROMPT and generated["max_tokens"] == 8
    assert "conscience" not in generated and "stream" not in generated
    (review,) = engine.of_kind("review")
    assert PROMPT in _question(review) and GOOD.strip() in _question(review)


@pytest.mark.parametrize(
    ("policy", "action", "text", "finish"),
    [
        ("rewrite", "rewritten", "Here is a safe and helpful answer.", "stop"),
        ("block", "blocked", REFUSAL, "content_filter"),
        ("flag", "flagged", BAD, "stop"),
    ],
)
def test_each_policy_on_an_unethical_completion(
    engine: ScriptedEngine,
    make_proxy,
    tmp_path: Path,
    policy: str,
    action: str,
    text: str,
    finish: str,
) -> None:
    engine.generation = BAD
    completion = _client(make_proxy(policy=policy)).completions.create(model="gen", prompt=PROMPT)
    assert completion.choices[0].text == text
    assert completion.choices[0].finish_reason == finish
    assert completion.model_extra["conscience"]["action"] == action
    (row,) = _stored(tmp_path)
    assert (row["verdict"], row["action"]) == ("unethical", action)
    assert (row["rewrite"] is not None) == (policy == "rewrite")


def test_policy_off_serves_unreviewed(engine: ScriptedEngine, make_proxy, tmp_path: Path) -> None:
    engine.generation = BAD
    completion = _client(make_proxy(policy="off")).completions.create(model="gen", prompt=PROMPT)
    assert completion.choices[0].text == BAD
    assert completion.model_extra["conscience"]["action"] == "passed"
    assert completion.model_extra["conscience"]["verdict"] is None
    assert engine.of_kind("review") == [] and _stored(tmp_path) == []


def test_per_request_options(engine: ScriptedEngine, make_proxy) -> None:
    engine.generation = BAD
    completion = _client(make_proxy()).completions.create(
        model="gen", prompt=PROMPT, extra_body={"conscience": {"policy": "flag"}}
    )
    assert completion.model_extra["conscience"]["action"] == "flagged"
    strict = _client(make_proxy(allow_overrides=False))
    with pytest.raises(openai.PermissionDeniedError):
        strict.completions.create(
            model="gen", prompt=PROMPT, extra_body={"conscience": {"policy": "off"}}
        )


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_a_failing_review(
    engine: ScriptedEngine, make_proxy, tmp_path: Path, fail_mode: str
) -> None:
    engine.generation = BAD
    engine.faults["review"] = Fault(status=500)
    client = _client(make_proxy(on_review_error=fail_mode))
    for stream in (False, True):
        if fail_mode == "closed":
            with pytest.raises(openai.APIStatusError) as info:
                client.completions.create(model="gen", prompt=PROMPT, stream=stream)
            assert info.value.status_code == 503
            assert info.value.body["code"] == "review_failed"
            continue
        result = client.completions.create(model="gen", prompt=PROMPT, stream=stream)
        chunks = list(result) if stream else [result]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == BAD
        assert chunks[-1].model_extra["conscience"]["action"] == "unreviewed"
    assert _stored(tmp_path) == []


def test_a_failing_rewrite_blocks(engine: ScriptedEngine, make_proxy) -> None:
    engine.generation = BAD
    engine.faults["rewrite"] = Fault(status=500)
    completion = _client(make_proxy()).completions.create(model="gen", prompt=PROMPT)
    assert completion.choices[0].text == REFUSAL
    assert completion.model_extra["conscience"]["action"] == "blocked"


@pytest.mark.parametrize("stream_mode", ["buffered", "incremental"])
def test_a_stream_carries_only_reviewed_text(
    engine: ScriptedEngine, make_proxy, stream_mode: str
) -> None:
    engine.generation = BAD
    client = _client(make_proxy(stream_mode=stream_mode, stream_window_chars=4))
    chunks = list(
        client.completions.create(
            model="gen", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == engine.rewrite and MARK not in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.model_extra["conscience"]["action"] == "rewritten"
    assert all(c.object == "text_completion" for c in chunks)
    assert "stream" not in engine.of_kind("generate")[0]  # buffered: one unary generation


def test_a_batch_and_n_review_each_choice_against_its_own_prompt(
    engine: ScriptedEngine, make_proxy, tmp_path: Path
) -> None:
    prompts = ["First question:", "Second question:"]
    engine.generation = [GOOD, BAD]  # choice p*n + j says generation[j]: j = 1 is unethical
    completion = _client(make_proxy()).completions.create(model="gen", prompt=prompts, n=2)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert [c.text for c in completion.choices] == [GOOD, engine.rewrite] * 2
    conscience = completion.model_extra["conscience"]
    assert conscience["action"] == "rewritten"  # the most severe choice
    assert [c["action"] for c in conscience["choices"]] == ["passed", "rewritten"] * 2
    rows = {row["id"]: row for row in _stored(tmp_path)}
    for index, result in enumerate(conscience["choices"]):
        row = rows[result["judgement_id"]]
        assert json.loads(row["messages"])[0]["content"] == prompts[index // 2]
    # Each review asked about one answer to its own prompt.
    questions = sorted(_question(r) for r in engine.of_kind("review"))
    assert sum(prompts[0] in q for q in questions) == 2
    assert sum(prompts[1] in q for q in questions) == 2


def test_echo_reviews_and_replaces_only_the_generated_part(
    engine: ScriptedEngine, make_proxy, tmp_path: Path
) -> None:
    engine.generation = BAD
    completion = _client(make_proxy()).completions.create(model="gen", prompt=PROMPT, echo=True)
    assert completion.choices[0].text == PROMPT + engine.rewrite
    (row,) = _stored(tmp_path)
    assert row["answer"] == BAD.strip()  # the echoed prompt is not the answer


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"prompt": [1, 2, 3]}, "prompt", "unsupported_prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt", "unsupported_prompt"),
        ({"prompt": []}, "prompt", "unsupported_prompt"),
        ({"prompt": PROMPT, "suffix": "."}, "suffix", "unsupported_parameter"),
        ({"prompt": ["a"] * (MAX_CHOICES + 1)}, None, "invalid_value"),
        ({"prompt": ["a"] * (MAX_CHOICES // 16 + 1), "n": 16}, None, "invalid_value"),
        ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({}, "prompt", "invalid_value"),
    ],
)
def test_what_cannot_be_reviewed_is_refused(
    engine: ScriptedEngine, proxy_url: str, fields: dict, param: str | None, code: str
) -> None:
    response = httpx.post(proxy_url + "/v1/completions", json={"model": "gen", **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert engine.of_kind("generate") == []


def test_upstream_errors(engine: ScriptedEngine, make_proxy) -> None:
    # Faults that come at once, through a proxy whose timeout a busy machine cannot reach; the
    # slow one through a proxy that gives up after 0.5 s.
    client = _client(make_proxy(upstream_timeout=30.0))
    slow = _client(make_proxy(upstream_timeout=0.5))
    engine.faults["generate"] = Fault(status=400, times=1)  # the upstream's 4xx passes
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="gen", prompt=PROMPT)
    assert bad.value.body["message"] == "scripted fault 400"
    for fault, status, via in (
        (Fault(status=500), 502, client),
        (Fault(status=200, delay=1.5), 504, slow),
    ):
        engine.faults["generate"] = Fault(**{**fault.__dict__, "times": 1})
        with pytest.raises(openai.APIStatusError) as info:
            via.completions.create(model="gen", prompt=PROMPT)
        assert info.value.status_code == status
    engine.faults["generate"] = Fault(status=200, body=b'{"choices": []}', times=1)
    with pytest.raises(openai.APIStatusError) as broken:
        client.completions.create(model="gen", prompt=PROMPT)
    assert broken.value.status_code == 502


def test_client_keys_are_checked_and_the_upstream_key_is_the_proxys(
    make_proxy, seen_headers: list[dict[str, str]]
) -> None:
    url = make_proxy(api_keys="key-one")
    with pytest.raises(openai.AuthenticationError):
        _client(url, "wrong").completions.create(model="gen", prompt=PROMPT)
    assert seen_headers == []  # refused before anything went upstream
    raw = _client(url, "key-one").completions.with_raw_response.create(model="gen", prompt=PROMPT)
    assert "sk-upstream-secret" not in raw.http_response.text
    assert "sk-upstream-secret" not in str(raw.headers)
    authorizations = {h.get("authorization") for h in seen_headers}
    assert authorizations == {"Bearer sk-upstream-secret"}


async def test_the_async_client(engine: ScriptedEngine, make_proxy) -> None:
    engine.generation = GOOD
    client = openai.AsyncOpenAI(base_url=make_proxy() + "/v1", api_key="x", max_retries=0)
    stream = await client.completions.create(model="gen", prompt=PROMPT, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == GOOD
    assert chunks[-1].model_extra["conscience"]["verdict"] == "ethical"
