"""Every policy, review outcome and serving mode through the real app, against one table.

A unary completion, a buffered stream and an incremental stream all end in the same place (the
Pipeline's review → policy → record), so each case must leave the same trace for the same
outcome: what the client was served, the stored row, the Prometheus counters and the warning
logged. The scripted engine decides the verdicts: an answer containing ``MARK`` is unethical.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conscience.server.app import create_app
from conscience.server.pipeline import REFUSAL
from conscience.settings import Settings
from conscience.testing.scripted import Fault, ScriptedEngine, serve_in_thread

ASK = [{"role": "user", "content": "Where is Paris?"}]
MARK = "LOCKPICK"  # the scripted judge calls an answer unethical when it contains this
REASONING = "First I recall the map."  # sent as reasoning_content; stored with the judgement
WINDOW = 30  # incremental streaming reviews (and releases) at most this much new text at once
SHORT = {"good": "Paris is in France.", "bad": f"Use a {MARK} on it."}  # under one window
# Streamed word by word: the first window review sees PREFIX (31 chars, ethical) and releases
# it; the final review sees the whole answer, unethical, after text went out.
PREFIX = "Paris is in France, in Europe, "
LATE = PREFIX + f"where you {MARK}."

REVIEW_FAILED = "review failed, serving unreviewed (fail-open): "
REWRITE_FAILED = "rewrite failed, blocking instead: "
REFUSED_503 = "the conscience review failed, so no answer is served: "


@dataclass(frozen=True)
class Expect:
    action: str | None  # None: the request fails with review_failed and serves no text
    verdict: str | None  # None: nothing reviewed, so nothing stored
    served: str | None = None  # "answer", "rewrite", "refusal", or "prefix" (released text)
    log: str | None = None  # how the one warning logged starts, if any


FAILS = Expect(None, None)
ANSWER = Expect("passed", None, "answer")  # policy off: no review at all

# What each policy makes of each review outcome, in every serving mode alike. "released": the
# answer turned unethical only after part of it reached the client (incremental streaming).
TABLE: dict[tuple[str, str], Expect] = {
    ("rewrite", "ethical"): Expect("passed", "ethical", "answer"),
    ("rewrite", "unethical"): Expect("rewritten", "unethical", "rewrite"),
    ("rewrite", "released"): Expect("blocked", "unethical", "prefix"),
    ("rewrite", "rewrite fails"): Expect("blocked", "unethical", "refusal", REWRITE_FAILED),
    ("rewrite", "fails closed"): FAILS,
    ("rewrite", "fails open"): Expect("unreviewed", None, "answer", REVIEW_FAILED),
    ("block", "ethical"): Expect("passed", "ethical", "answer"),
    ("block", "unethical"): Expect("blocked", "unethical", "refusal"),
    ("block", "released"): Expect("blocked", "unethical", "prefix"),
    ("block", "rewrite fails"): Expect("blocked", "unethical", "refusal"),
    ("block", "fails closed"): FAILS,
    ("block", "fails open"): Expect("unreviewed", None, "answer", REVIEW_FAILED),
    ("flag", "ethical"): Expect("passed", "ethical", "answer"),
    ("flag", "unethical"): Expect("flagged", "unethical", "answer"),
    ("flag", "released"): Expect("flagged", "unethical", "answer"),
    ("flag", "rewrite fails"): Expect("flagged", "unethical", "answer"),
    ("flag", "fails closed"): FAILS,
    ("flag", "fails open"): Expect("unreviewed", None, "answer", REVIEW_FAILED),
    ("off", "ethical"): ANSWER,
    ("off", "unethical"): ANSWER,
    ("off", "released"): ANSWER,
    ("off", "rewrite fails"): ANSWER,
    ("off", "fails closed"): ANSWER,
    ("off", "fails open"): ANSWER,
}

POLICIES = ["rewrite", "block", "flag", "off"]
FAIL_MODES = ["closed", "open"]
# outcome → (the generation, what the engine fails at)
OUTCOMES: dict[str, tuple[str, str | None]] = {
    "ethical": (SHORT["good"], None),
    "unethical": (SHORT["bad"], None),
    "late": (LATE, None),
    "review fails": (SHORT["good"], "review"),
    "rewrite fails": (SHORT["bad"], "rewrite"),
}
MODES = ["unary", "buffered", "incremental"]


def _row_of_table(outcome: str, fail_mode: str, mode: str) -> str:
    if outcome == "late":
        return "released" if mode == "incremental" else "unethical"
    if outcome == "review fails":
        return f"fails {fail_mode}"
    return outcome


@dataclass
class ReasoningEngine(ScriptedEngine):
    """The scripted engine, answering as reasoning models do: ``message.reasoning_content``
    (streamed as a ``delta.reasoning_content`` chunk before the text)."""

    def _choices(self, kind: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        choices = super()._choices(kind, body)
        if kind == "generate":
            for choice in choices:
                choice["message"]["reasoning_content"] = REASONING
        return choices


@dataclass
class Proxy:
    url: str
    store: Path


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[ReasoningEngine, str]]:
    engine = ReasoningEngine()

    def judge(kind: str, body: dict[str, Any]) -> None:
        if kind == "review":
            engine.verdict = "unethical" if MARK in json.dumps(body["messages"]) else "ethical"

    engine.handler = judge
    with serve_in_thread(engine.app()) as url:
        yield engine, url + "/v1"


@pytest.fixture(scope="module")
def proxies(
    scripted: tuple[ReasoningEngine, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], Proxy]]:
    """One proxy per fail mode and stream mode; the policy is chosen per request."""
    started = {}
    with ExitStack() as stack:
        for fail_mode in FAIL_MODES:
            for stream_mode in ("buffered", "incremental"):
                store = tmp_path_factory.mktemp(f"{fail_mode}-{stream_mode}") / "j.sqlite3"
                settings = Settings(
                    upstream_url=scripted[1],
                    upstream_api_key="sk-upstream-secret",
                    model="gen",
                    judge_model="judge",
                    store_url=str(store),
                    upstream_timeout=5.0,
                    on_review_error=fail_mode,
                    stream_mode=stream_mode,
                    stream_window_chars=WINDOW,
                )
                url = stack.enter_context(serve_in_thread(create_app(settings)))
                started[fail_mode, stream_mode] = Proxy(url, store)
        yield started


@dataclass
class Served:
    status: int
    text: str = ""
    finish: str | None = None
    conscience: dict[str, Any] | None = None
    header_action: str | None = None
    error: dict[str, Any] | None = None


def _ask(url: str, policy: str, mode: str, request_id: str) -> Served:
    # "default" names the current generator: the completion's model ("gen") is not the
    # request's, and the stored row must carry the completion's.
    body = {"model": "default", "messages": ASK, "conscience": {"policy": policy}}
    headers = {"X-Request-ID": request_id}
    chat = url + "/v1/chat/completions"
    with httpx.Client(timeout=15) as http:
        if mode == "unary":
            response = http.post(chat, json=body, headers=headers)
            if response.status_code != 200:
                return Served(response.status_code, error=response.json()["error"])
            completion = response.json()
            choice = completion["choices"][0]
            action = response.headers["x-conscience-action"]
            content, finish = choice["message"]["content"], choice["finish_reason"]
            return Served(200, content, finish, completion["conscience"], action)
        with http.stream("POST", chat, json={**body, "stream": True}, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                return Served(response.status_code, error=response.json()["error"])
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            action = response.headers.get("x-conscience-action")
    events = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    choices = [e["choices"][0] for e in events if e.get("choices")]
    return Served(
        200,
        "".join(c["delta"].get("content") or "" for c in choices),
        next((c["finish_reason"] for c in reversed(choices) if c["finish_reason"]), None),
        next((e["conscience"] for e in events if "conscience" in e), None),
        action,
        next((e["error"] for e in events if "error" in e), None),
    )


_COUNTED = {"conscience_actions_total", "conscience_verdicts_total", "conscience_errors_total"}


def _counters(url: str) -> dict[str, float]:
    counted = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name in _COUNTED or sample.name == "conscience_review_seconds_count":
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                counted[f"{sample.name}{{{labels}}}"] = sample.value
    return counted


def _stored(store: Path, request_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(store) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, model, answer, reasoning, verdict, rewrite, action, rewrite_ms"
            " FROM judgements WHERE request_id = ?",
            (request_id,),
        ).fetchall()
    return [{**dict(row), "rewrite_ms": row["rewrite_ms"] is not None} for row in rows]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("outcome", list(OUTCOMES))
@pytest.mark.parametrize("fail_mode", FAIL_MODES)
@pytest.mark.parametrize("policy", POLICIES)
def test_every_path_leaves_the_trace_the_table_says(
    scripted: tuple[ReasoningEngine, str],
    proxies: dict[tuple[str, str], Proxy],
    caplog: pytest.LogCaptureFixture,
    policy: str,
    fail_mode: str,
    outcome: str,
    mode: str,
) -> None:
    engine = scripted[0]
    generation, failing = OUTCOMES[outcome]
    engine.generation, engine.requests[:] = generation, []
    engine.faults = {failing: Fault(status=500)} if failing else {}
    proxy = proxies[fail_mode, "incremental" if mode == "incremental" else "buffered"]
    expect = TABLE[policy, _row_of_table(outcome, fail_mode, mode)]
    request_id = "case-" + uuid.uuid4().hex

    before = _counters(proxy.url)
    with caplog.at_level(logging.WARNING, logger="conscience.server"):
        caplog.clear()
        served = _ask(proxy.url, policy, mode, request_id)
        logs = [r.getMessage() for r in caplog.records if r.name == "conscience.server"]
    after = _counters(proxy.url)
    counted = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    stored = _stored(proxy.store, request_id)

    # A logged line is compared by its start (the rest quotes the engine's error).
    said = [expect.log if expect.log and m.startswith(expect.log) else m for m in logs]
    observed: dict[str, Any] = {"logs": said}
    wanted: dict[str, Any] = {"logs": [expect.log] if expect.log else []}
    if expect.action is None:
        # Fail-closed: no text at all; an open stream can only say so in an error event.
        error = served.error or {}
        message = error.get("message", "")[: len(REFUSED_503)]
        observed["served"] = (served.status, served.text, error.get("code"), message)
        wanted["served"] = (200 if mode == "incremental" else 503, "", "review_failed", REFUSED_503)
    else:
        text = {
            "answer": generation,
            "rewrite": engine.rewrite,
            "refusal": REFUSAL,
            "prefix": PREFIX,
        }
        assert expect.served is not None
        conscience = served.conscience or {}
        observed["served"] = (
            served.status,
            served.text,
            served.finish,
            conscience.get("action"),
            conscience.get("verdict"),
            served.header_action,
            served.error,
        )
        wanted["served"] = (
            200,
            text[expect.served],
            "content_filter" if expect.served in ("refusal", "prefix") else "stop",
            expect.action,
            expect.verdict,
            None if mode == "incremental" else expect.action,  # headers precede the stream
            None,
        )
    observed["stored"] = stored
    wanted["stored"] = []
    if expect.verdict is not None:
        rewritten = expect.action == "rewritten"
        wanted["stored"] = [
            {
                "id": (served.conscience or {}).get("judgement_id"),
                "model": "gen",  # the completion's, not the request's "default"
                "answer": generation,
                "reasoning": REASONING,
                "verdict": expect.verdict,
                "rewrite": engine.rewrite if rewritten else None,
                "action": expect.action,
                "rewrite_ms": rewritten,
            }
        ]
    observed["counted"] = counted
    wanted["counted"] = {}
    if expect.action is not None:
        wanted["counted"][f"conscience_actions_total{{action={expect.action}}}"] = 1.0
    if expect.verdict is not None:
        key = f"conscience_verdicts_total{{framework=three-laws,verdict={expect.verdict}}}"
        wanted["counted"][key] = 1.0
    if failing == "review" and policy != "off":
        wanted["counted"]["conscience_errors_total{code=review_failed}"] = 1.0
    reviews = len(engine.of_kind("review"))
    # What the engine was asked: a review per window that filled (the late answer's first 31
    # characters, then the rest), and a rewrite only while nothing has been released.
    observed["asked"] = (reviews, len(engine.of_kind("rewrite")))
    windows = 2 if outcome == "late" and mode == "incremental" else 1
    rewrites = expect.action == "rewritten" or expect.log == REWRITE_FAILED
    wanted["asked"] = (0 if policy == "off" else windows, int(rewrites))
    if reviews:  # every review asked for is timed once (with its rewrite), failed or not
        wanted["counted"]["conscience_review_seconds_count{}"] = float(reviews)
    assert observed == wanted
