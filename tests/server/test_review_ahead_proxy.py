"""The proxy reviews while the answer is generated (``review_ahead``): through the real app on
loopback, in front of the scripted engine streaming a long answer word by word, the probe's
complete windows are read before the generation ends, and the verdict is the one the proxy
gives with the setting off."""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from conscience.probe import save_probe
from conscience.review import answer_windows
from conscience.testing.scripted import SCRIPTED_PROBE, ScriptedEngine

ProxyFactory = Callable[..., Any]

# Passes everything: the answer is served as generated, never rewritten.
PROBE = replace(SCRIPTED_PROBE, threshold=1.0)
ANSWER = " ".join(f"word{i}" for i in range(120))  # 4 windows of 300, the last one short


@pytest.fixture
def probe_file(tmp_path: Path) -> Path:
    path = tmp_path / "probe.json"
    save_probe(path, PROBE)
    return path


def _ask(url: str, **extra: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    return client.chat.completions.create(
        model="gen", messages=[{"role": "user", "content": "Tell me words."}], **extra
    )


def test_windows_are_read_during_the_generation_and_the_verdict_is_unchanged(
    engine: ScriptedEngine, make_proxy: ProxyFactory, probe_file: Path
) -> None:
    engine.generation = ANSWER
    engine.stream_delay = 0.01  # 120 words: the generation lasts more than a second
    ahead = _ask(make_proxy(probe_file=probe_file, upstream_timeout=10, review_ahead=True))
    assert len(engine.streams_ended) == 1
    ended = engine.streams_ended[0]
    before = [t for t, _ in engine.embedding_requests if t < ended]
    assert len(before) == 3  # every complete window, while the answer was being written
    assert len(engine.embedding_requests) == len(answer_windows(ANSWER, 300)) == 4

    engine.embedding_requests.clear()
    plain = _ask(make_proxy(probe_file=probe_file, upstream_timeout=10, review_ahead=False))
    assert len(engine.embedding_requests) == 4  # all of them after the generation
    assert ahead.choices[0].message.content == plain.choices[0].message.content == ANSWER
    assert ahead.conscience["verdict"] == plain.conscience["verdict"]  # type: ignore[attr-defined]
    assert ahead.conscience["confidence"] == plain.conscience["confidence"]  # type: ignore[attr-defined]


def test_incremental_streaming_reads_each_window_once(
    engine: ScriptedEngine, make_proxy: ProxyFactory, probe_file: Path
) -> None:
    engine.generation = ANSWER
    settings = {"probe_file": probe_file, "stream_mode": "incremental", "upstream_timeout": 10}

    def stream(url: str) -> dict:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="gen", messages=[{"role": "user", "content": "Words."}], stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == ANSWER
        return chunks[-1].conscience  # type: ignore[attr-defined]

    plain = stream(make_proxy(**settings, review_ahead=False))
    read_plain = len(engine.embedding_requests)
    engine.embedding_requests.clear()
    ahead = stream(make_proxy(**settings, review_ahead=True))
    # Without the work ahead, every review of the growing answer reads all its windows again.
    assert len(engine.embedding_requests) < read_plain
    assert (ahead["verdict"], ahead["confidence"]) == (plain["verdict"], plain["confidence"])
