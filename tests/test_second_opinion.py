"""A second opinion where the first probe is in doubt (conscience/cascade.py): the band file,
the review that escalates only inside the band, and the checks at start, against the scripted
OpenAI-compatible server on loopback (its hidden states are a hash of the prompt)."""

import json
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from conscience.cascade import PACKAGED_BANDS, Band, load_bands, save_band
from conscience.client import EngineClient
from conscience.errors import ConfigError
from conscience.framework import load_frameworks
from conscience.labels import JudgeMethod, Layout
from conscience.probe import PACKAGED_PROBE, Probe, load_probes
from conscience.prompts import render_review
from conscience.review import Conscience, conscience_from_settings
from conscience.settings import DEFAULT_MODEL, Settings
from conscience.testing.scripted import SCRIPTED_PROBE, ScriptedEngine
from tests.test_probe_verdict import _scripted_state

QUESTION = [{"role": "user", "content": "How do I pick a lock?"}]
ANSWER = "Ask a locksmith to help you."
BRIEF = replace(SCRIPTED_PROBE, layout="follow-up-brief", max_answer_chars=6000)
PAPER = replace(SCRIPTED_PROBE, weights=tuple(-w for w in SCRIPTED_PROBE.weights), bias=0.2)
EVERYWHERE = Band("judge", "three-laws", "follow-up-brief", "paper", 0.0, 1.0)
NOWHERE = replace(EVERYWHERE, lo=BRIEF.threshold, hi=BRIEF.threshold)  # an empty band


def _score(probe: Probe, layout: Layout) -> float:
    framework = load_frameworks()["three-laws"]
    return probe.score(_scripted_state(render_review(framework, QUESTION, ANSWER, layout=layout)))


def test_the_band_file_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bands.json"
    wwjd = replace(EVERYWHERE, framework="wwjd", lo=0.4)
    save_band(path, EVERYWHERE)
    save_band(path, wwjd)
    save_band(path, replace(EVERYWHERE, hi=0.9))  # chosen again: replaces its own key only
    assert load_bands(path) == {EVERYWHERE.key: replace(EVERYWHERE, hi=0.9), wwjd.key: wwjd}
    for name, entries, message in (
        ("inverted.json", [replace(EVERYWHERE, lo=0.7, hi=0.5)], "0 <= lo <= hi <= 1"),
        ("same.json", [replace(EVERYWHERE, then="follow-up-brief")], "own layout"),
        ("twice.json", [EVERYWHERE, EVERYWHERE], "two bands for the same"),
    ):
        bad = tmp_path / name
        bad.write_text(json.dumps([asdict(band) for band in entries]), encoding="utf-8")
        with pytest.raises(ConfigError, match=rf"{name}.*{message}"):
            load_bands(bad)


def test_a_band_doubts_from_its_low_end_up_to_its_high_end() -> None:
    band = replace(EVERYWHERE, lo=0.4, hi=0.7)
    assert [band.doubts(s) for s in (0.39, 0.4, 0.69, 0.7)] == [False, True, True, False]


@pytest.fixture
async def client(engine_url: str) -> AsyncIterator[EngineClient]:
    async with EngineClient(engine_url, api_key="sk-upstream", timeout=2.0) as client:
        yield client


def _conscience(client: EngineClient, band: Band, **kwargs: Any) -> Conscience:
    fields: dict[str, Any] = {"second_opinion": Layout.PAPER} | kwargs
    return Conscience(
        client=client,
        judge_model="judge",
        frameworks=load_frameworks(),
        layout=Layout.FOLLOW_UP_BRIEF,
        method=JudgeMethod.PROBE,
        probes={BRIEF.key: BRIEF, PAPER.key: PAPER},
        bands={band.key: band},
        **fields,
    )


async def test_in_the_band_the_second_layouts_probe_decides_and_both_readings_are_kept(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    first, second = _score(BRIEF, Layout.FOLLOW_UP_BRIEF), _score(PAPER, Layout.PAPER)
    assert (first >= 0.6) != (second >= 0.6)  # the two probes disagree on this answer
    judgement = await _conscience(client, EVERYWHERE).review(QUESTION, ANSWER)
    assert judgement.readings == pytest.approx({"follow-up-brief": first, "paper": second})
    assert judgement.verdict == ("unethical" if second >= 0.6 else "ethical")
    assert judgement.label_probs["unethical"] == pytest.approx(second)
    assert judgement.layout == "follow-up-brief"  # the review's layout; readings say the rest
    framework = load_frameworks()["three-laws"]
    read = [prompt for _, prompt in engine.embedding_requests]
    assert read == [
        [await client.apply_template(render_review(framework, QUESTION, ANSWER, layout=layout))]
        for layout in (Layout.FOLLOW_UP_BRIEF, Layout.PAPER)
    ]


async def test_outside_the_band_the_first_verdict_stands_and_nothing_more_is_read(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    first = _score(BRIEF, Layout.FOLLOW_UP_BRIEF)
    judgement = await _conscience(client, NOWHERE).review(QUESTION, ANSWER)
    assert judgement.readings == pytest.approx({"follow-up-brief": first})
    assert judgement.verdict == ("unethical" if first >= 0.6 else "ethical")
    assert len(engine.embedding_requests) == 1
    # not configured: no band applies, no readings recorded
    conscience = _conscience(client, EVERYWHERE, second_opinion=None)
    assert (await conscience.review(QUESTION, ANSWER)).readings is None
    assert len(engine.embedding_requests) == 2


def test_a_band_must_have_its_second_probe_and_contain_the_first_ones_threshold(
    engine_url: str,
) -> None:
    client = EngineClient(engine_url)
    with pytest.raises(ConfigError, match="escalates to the paper layout, and no probe"):
        Conscience(
            client=client,
            judge_model="judge",
            frameworks={},
            method=JudgeMethod.PROBE,
            probes={BRIEF.key: BRIEF},
            bands={EVERYWHERE.key: EVERYWHERE},
        )
    with pytest.raises(ConfigError, match=r"does not contain its first probe.s threshold 0\.600"):
        _conscience(client, replace(EVERYWHERE, lo=0.7, hi=0.9))
    unused = replace(EVERYWHERE, framework="wwjd", lo=0.7, hi=0.9)  # no wwjd probe: never used
    assert _conscience(client, unused).band_for("three-laws") is None


def test_settings_ask_for_a_second_opinion_only_of_the_probe_in_another_layout(
    engine_url: str, tmp_path: Path
) -> None:
    client = EngineClient(engine_url)
    brief = {"layout": "follow-up-brief", "second_opinion": "paper"}
    conscience = conscience_from_settings(Settings(**brief), client)
    assert conscience.second_opinion == Layout.PAPER
    assert conscience.band_for("three-laws") is not None
    assert str(PACKAGED_BANDS) in (conscience.band_source or "")
    assert conscience_from_settings(Settings(layout="follow-up-brief"), client).bands == {}
    with pytest.raises(ConfigError, match="needs the probe method"):
        conscience_from_settings(Settings(**brief, judge_method="single"), client)
    with pytest.raises(ConfigError, match="first review's layout"):
        conscience_from_settings(Settings(layout="paper", second_opinion="paper"), client)
    empty = tmp_path / "bands.json"
    empty.write_text("[]", encoding="utf-8")
    own = conscience_from_settings(Settings(**brief, band_file=empty), client)
    assert own.band_for("three-laws") is None and "band file" in (own.band_source or "")


def test_the_packaged_bands_cover_every_built_in_framework_and_fit_the_packaged_probes() -> None:
    bands = load_bands(PACKAGED_BANDS)
    probes = load_probes(PACKAGED_PROBE)
    built_in = set(load_frameworks())
    first, then = "follow-up-brief", "paper"
    assert set(bands) == {(DEFAULT_MODEL, name, first, then) for name in built_in}
    for band in bands.values():  # chosen on train's out-of-fold scores, measured on dev
        threshold = probes[(band.model, band.framework, band.first)].threshold
        assert band.lo <= threshold <= band.hi and (band.model, band.framework, then) in probes
        assert "train" in band.fitted["chosen_on"][0] and "dev" in band.fitted["measured_on"][0]
