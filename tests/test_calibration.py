import json
import math
import os
import subprocess
import sys

import pytest

from conscience.calibration import (
    Calibration,
    Sample,
    fit_temperature,
    fit_unethical_threshold,
    load_calibrations,
    reliability_bins,
    save_calibration,
    scale,
)
from conscience.client import EngineClient
from conscience.errors import ConfigError
from conscience.framework import load_frameworks
from conscience.review import Conscience


def _s(p_unethical: float, gold: str) -> Sample:
    rest = (1 - p_unethical) / 2
    return Sample({"ethical": rest, "neutral": rest, "unethical": p_unethical}, gold)


def test_scale_by_hand() -> None:
    probs = {"ethical": 0.8, "neutral": 0.0, "unethical": 0.2}
    assert scale(probs, 1.0) == pytest.approx(probs, abs=1e-9)
    # T = 2: sqrt(0.8) = 0.8944, sqrt(0.2) = 0.4472; normalised 0.6667 / 0.3333.
    assert scale(probs, 2.0) == pytest.approx(
        {"ethical": 2 / 3, "neutral": 0.0, "unethical": 1 / 3}, abs=1e-5
    )


def test_threshold_is_the_lowest_within_the_false_unethical_target() -> None:
    samples = [
        _s(0.9, "unethical"),
        _s(0.5, "unethical"),
        _s(0.3, "unethical"),
        _s(0.4, "ethical"),
        _s(0.2, "neutral"),
        _s(0.1, "ethical"),
        _s(0.05, "ethical"),
    ]
    # Threshold 0.3 would call 0.4 unethical: 1 of 4 negatives = 0.25 > 0.1. 0.5 calls none.
    assert fit_unethical_threshold(samples, 0.1) == 0.5
    # Allowing a quarter: 0.3 (recall 3/3 with one negative wrongly flagged).
    assert fit_unethical_threshold(samples, 0.25) == 0.3
    assert fit_unethical_threshold([_s(0.2, "ethical")], 0.1) is None


def test_temperature_fixes_overconfidence() -> None:
    # The judge says 0.95 for its top label but is right only 60% of the time: T must be > 1.
    over = [Sample({"ethical": 0.95, "neutral": 0.025, "unethical": 0.025}, "ethical")] * 6
    over += [Sample({"ethical": 0.95, "neutral": 0.025, "unethical": 0.025}, "unethical")] * 4
    assert fit_temperature(over) > 1.5
    # Right every time with 0.6: underconfident, T < 1.
    under = [Sample({"ethical": 0.6, "neutral": 0.2, "unethical": 0.2}, "ethical")] * 10
    assert fit_temperature(under) < 1.0


def test_reliability_bins() -> None:
    bins = reliability_bins([0.1, 0.15, 0.9, 1.0], [False, True, True, True], bins=5)
    assert bins == [
        {"low": 0.0, "high": 0.2, "count": 2, "confidence": pytest.approx(0.125), "accuracy": 0.5},
        {"low": 0.8, "high": 1.0, "count": 2, "confidence": pytest.approx(0.95), "accuracy": 1.0},
    ]


def test_file_round_trip_and_errors(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    save_calibration(path, Calibration("m", "three-laws", "paper", 0.3, None, 1.5))
    save_calibration(path, Calibration("m", "wwjd", "paper", 0.4, None, 1.0))
    save_calibration(path, Calibration("m", "three-laws", "paper", 0.2, None, 2.0))
    loaded = load_calibrations(path)
    assert set(loaded) == {("m", "three-laws", "paper"), ("m", "wwjd", "paper")}
    assert loaded[("m", "three-laws", "paper")].unethical_threshold == 0.2
    path.write_text('{"not": "a list"}')
    with pytest.raises(ConfigError, match="JSON list"):
        load_calibrations(path)
    path.write_text('[{"model": "m", "framework": "f", "layout": "paper", "temperature": 0}]')
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        load_calibrations(path)


async def test_conscience_uses_the_calibration(engine, engine_url) -> None:
    engine.verdict = "ethical"
    engine.verdict_probs = {"ethical": 0.6, "neutral": 0.1, "unethical": 0.3}
    calibration = Calibration(
        "judge", "three-laws", "paper", unethical_threshold=0.25, temperature=2.0
    )
    async with EngineClient(engine_url) as client:
        plain = Conscience(client=client, judge_model="judge", frameworks=load_frameworks())
        calibrated = Conscience(
            client=client,
            judge_model="judge",
            frameworks=load_frameworks(),
            calibrations={calibration.key: calibration},
        )
        before = await plain.review([{"role": "user", "content": "Q"}], "A")
        after = await calibrated.review([{"role": "user", "content": "Q"}], "A")
        other = await calibrated.review([{"role": "user", "content": "Q"}], "A", "wwjd")
    assert before.verdict == "ethical" and before.confidence == pytest.approx(0.6)
    assert after.verdict == "unethical"
    root = {k: math.sqrt(v) for k, v in {"ethical": 0.6, "neutral": 0.1, "unethical": 0.3}.items()}
    assert after.confidence == pytest.approx(root["unethical"] / sum(root.values()))
    assert other.verdict == "ethical"  # no calibration for wwjd: the argmax rule


def test_calibrate_command(engine, engine_url, tmp_path) -> None:
    engine.verdict_probs = {"ethical": 0.5, "neutral": 0.2, "unethical": 0.3}
    out = tmp_path / "calibration.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "conscience.cli",
            "calibrate",
            "--upstream",
            engine_url,
            "--judge-model",
            "judge",
            "--framework",
            "four-laws",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(out.read_text())
    assert (entry["model"], entry["framework"], entry["layout"]) == ("judge", "four-laws", "paper")
    assert entry["fitted"]["split"] == "calibration" and entry["fitted"]["items"] >= 30
    # Every calibration item was reviewed; those the screen decided are not fitted on.
    from conscience.evals.shared.labelled import load_labelled
    from conscience.screen import screen

    items = load_labelled("project", "calibration")
    screened = sum(screen(item.answer).flagged for item in items)
    assert screened > 0 and len(engine.of_kind("review")) == len(items)
    assert entry["fitted"]["items"] == len(items) - screened
    assert (tmp_path / "calibration.four-laws.paper.reliability.png").stat().st_size > 1000
