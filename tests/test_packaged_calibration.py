"""The calibration shipped for the default model: loaded when nothing is configured, said at
start-up, and overridden by a configured file or an explicit threshold."""

import json
import logging
from pathlib import Path

import pytest

from conscience.calibration import PACKAGED_FILE, load_calibrations, select_calibrations
from conscience.client import EngineClient
from conscience.framework import load_frameworks
from conscience.probe import PACKAGED_PROBE, load_probes
from conscience.review import conscience_from_settings
from conscience.server.app import create_app
from conscience.settings import DEFAULT_MODEL, Settings
from conscience.testing.scripted import ScriptedEngine, serve_in_thread

KEY = (DEFAULT_MODEL, "three-laws", "paper")


def test_the_packaged_file_covers_the_default_model_and_framework() -> None:
    shipped = load_calibrations(PACKAGED_FILE)
    assert KEY in shipped
    entry = shipped[KEY]
    assert entry.unethical_threshold is not None and 0 < entry.unethical_threshold < 1
    assert entry.fitted["split"] == "calibration"


def test_the_packaged_probes_cover_every_built_in_framework_of_the_default_model() -> None:
    """Every layout: the paper's (the default) reads 1,500-character windows; the follow-up
    layouts' (the framework's question, or the brief one) read an answer whole, as the engine
    that generated it has it cached."""
    probes = load_probes(PACKAGED_PROBE)
    built_in = set(load_frameworks())
    layouts = {"paper": 1500, "follow-up": 6000, "follow-up-brief": 6000}
    assert set(probes) == {(DEFAULT_MODEL, name, layout) for name in built_in for layout in layouts}
    for probe in probes.values():  # each fitted on harm_judging's train, measured on its dev
        assert "train" in probe.fitted["train"] and "dev" in probe.fitted
        assert 0 < probe.threshold < 1 and probe.max_answer_chars == layouts[probe.layout]
        assert probe.fitted["read"] == "logits"


def test_nothing_configured_selects_the_packaged_file() -> None:
    calibrations, source = select_calibrations(None)
    assert KEY in calibrations and source.startswith("packaged calibration")


def test_a_configured_file_or_a_threshold_wins(tmp_path: Path) -> None:
    empty = tmp_path / "none.json"
    empty.write_text("[]\n")
    assert select_calibrations(empty) == ({}, f"calibration file {empty}")
    calibrations, source = select_calibrations(None, unethical_threshold=0.3)
    assert calibrations == {} and "THRESHOLD" in source


async def test_the_default_judge_decides_by_the_packaged_rule(
    engine: ScriptedEngine, engine_url: str
) -> None:
    threshold = load_calibrations(PACKAGED_FILE)[KEY].unethical_threshold
    assert threshold is not None
    engine.judge_model = DEFAULT_MODEL
    # Just over the shipped threshold, yet not the most probable label: argmax says ethical.
    p = min(threshold + 0.01, 0.49)
    engine.verdict = "ethical"
    engine.verdict_probs = {"ethical": 1 - p - 0.01, "neutral": 0.01, "unethical": p}
    if p < threshold:
        pytest.skip("the shipped threshold is above 0.49: argmax already decides")
    settings = Settings(upstream_url=engine_url, judge_model=DEFAULT_MODEL, judge_method="single")
    async with EngineClient(engine_url, timeout=2.0) as client:
        judged = await conscience_from_settings(settings, client).review(
            [{"role": "user", "content": "q"}], "an answer"
        )
    assert judged.verdict == "unethical"


def _own_framework(folder: Path) -> Path:
    """A user's framework (a copy of wwjd under another name): no probe was fitted for it."""
    text = (Path(PACKAGED_FILE).parents[1] / "frameworks" / "wwjd.toml").read_text()
    (folder / "my-own.toml").write_text(text.replace('name = "wwjd"', 'name = "my-own"'))
    return folder


def test_start_up_log_names_the_rule_in_use(
    engine_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def start(**overrides: object) -> str:
        fields = {
            "upstream_url": engine_url,
            "model": "gen",
            "judge_model": DEFAULT_MODEL,
            "store_url": str(tmp_path / "judgements.sqlite3"),
            **overrides,
        }
        caplog.clear()
        with (
            caplog.at_level(logging.INFO, logger="conscience.server"),
            serve_in_thread(create_app(Settings(**fields))),
        ):
            pass
        return caplog.text

    assert f"calibrated verdicts for {KEY!r} (packaged calibration" in start()
    text = start()
    assert f"probe verdicts for {KEY!r} (packaged probe" in text
    assert "reads the judge's state from /v1/embeddings" in text  # an upstream's route
    # The packaged probe was fitted on states read through the embedded engine's logits.
    assert "fitted on states read through logits and reads them through embeddings" in text
    assert "the follow-up layout" not in text
    text = start(layout="follow-up")  # the packaged follow-up probe, and what it costs
    assert f"probe verdicts for {(DEFAULT_MODEL, 'three-laws', 'follow-up')!r}" in text
    assert "the follow-up layout: a review reads the answer as the judge's own last turn" in text
    text = start(layout="follow-up-brief")
    assert f"probe verdicts for {(DEFAULT_MODEL, 'three-laws', 'follow-up-brief')!r}" in text
    # Reviews no probe reads are asked in the paper layout: its calibration is the one said.
    assert f"calibrated verdicts for {KEY!r}" in text and "no calibration for" not in text
    assert "the follow-up layout: a review reads the answer as the judge's own last turn" in text
    assert "a second opinion" not in text
    text = start(layout="follow-up-brief", second_opinion="paper")
    assert "a second opinion in the paper layout where the first probe's P(unethical) is in" in text
    no_band = tmp_path / "bands.json"
    no_band.write_text("[]")
    text = start(layout="follow-up-brief", second_opinion="paper", band_file=no_band)
    doubt = "no band of doubt for three-laws/follow-up-brief then paper"
    assert f"{doubt} (band file {no_band})" in text
    assert "probe verdicts" not in start(judge_method="single")
    text = start(layout="follow-up-brief", judge_method="single")
    assert f"none reads three-laws for {DEFAULT_MODEL}: its reviews are asked in the paper" in text
    assert f"calibrated verdicts for {KEY!r}" in text  # the paper layout's calibration applies
    text = start(framework="my-own", frameworks_dir=str(_own_framework(tmp_path)))
    assert "probe verdicts" not in text and f"not {(DEFAULT_MODEL, 'my-own', 'paper')!r}" in text
    own = tmp_path / "own.json"
    own.write_text(json.dumps([]))
    text = start(calibration_file=own)
    assert f"no calibration for {KEY!r} (calibration file {own})" in text
