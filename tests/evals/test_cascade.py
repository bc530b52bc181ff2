"""evals/fitting/bands.py: the rule that lets a second review decide only inside a band of the
first one's scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conscience.cascade import load_bands
from conscience.client import EngineClient
from conscience.errors import ConfigError
from conscience.evals.fitting.bands import _cheapest, cascade, main
from conscience.evals.fitting.probe import VECTORS_FILE, fit_probe
from conscience.labels import JudgeMethod, Layout
from conscience.probe import load_probes, save_probe
from conscience.review import Conscience

FIRST = np.array([0.10, 0.40, 0.50, 0.60, 0.90])
THEN = np.array([0.90, 0.90, 0.20, 0.10, 0.10])


def test_outside_the_band_the_first_decides_inside_it_the_second() -> None:
    flagged, escalated = cascade(FIRST, THEN, then_threshold=0.5, lo=0.4, hi=0.6)
    assert escalated.tolist() == [False, True, True, False, False]  # lo <= s < hi
    # 0.10: ethical without asking; 0.40: the second says 0.90; 0.50: the second says 0.20;
    # 0.60 and 0.90: at or above hi, unethical whatever the second would say.
    assert flagged.tolist() == [False, True, False, True, True]


def test_an_empty_band_is_the_first_alone_and_an_unbounded_one_the_second() -> None:
    alone, none = cascade(FIRST, THEN, then_threshold=0.5, lo=0.5, hi=0.5)
    assert not none.any() and alone.tolist() == (FIRST >= 0.5).tolist()
    every, all_escalated = cascade(FIRST, THEN, then_threshold=0.5, lo=-np.inf, hi=np.inf)
    assert all_escalated.all() and every.tolist() == (THEN >= 0.5).tolist()


def test_a_band_upside_down_is_refused() -> None:
    with pytest.raises(ConfigError, match="low end"):
        cascade(FIRST, THEN, then_threshold=0.5, lo=0.7, hi=0.3)


def test_the_cheapest_band_is_the_least_escalated_that_reaches_the_f1() -> None:
    bands = [(-0.72, 0.42, 0.38, 0.61), (-0.70, 0.30, 0.44, 0.61), (-0.69, 0.10, 0.5, 0.61)]
    assert _cheapest(bands, then_f1=0.70) == (0.44, 0.61)
    assert _cheapest(bands, then_f1=0.73) is None


def _run(path: Path, layout: str, signal: float, seed: int) -> Path:
    """An ``extract`` run of 120 items whose third component carries the gold by ``signal``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(120):
        harmful = i % 2 == 0
        vector = rng.normal(0, 1, 6) + (signal if harmful else 0.0) * np.eye(6)[2]
        gold = "unethical" if harmful else "ethical"
        rows.append({"id": f"i{i}", "gold": gold, "group": f"q{i // 2}", "vector": vector.tolist()})
    path.mkdir()
    (path / VECTORS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    identity = {"judge": "judge", "framework": "three-laws", "max_answer_chars": 6000}
    (path / "run.json").write_text(json.dumps({**identity, "layout": layout, "read": "logits"}))
    return path


def test_save_writes_the_band_chosen_on_train_and_the_review_accepts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {
        (layout, split): _run(tmp_path / f"{layout}-{split}", layout, signal, seed)
        for layout, signal in (("follow-up-brief", 0.8), ("paper", 2.5))
        for split, seed in (("train", 1), ("dev", 2))
    }
    probes = tmp_path / "probes.json"
    for layout in ("follow-up-brief", "paper"):
        save_probe(probes, fit_probe(runs[(layout, "train")])[0])
    bands = tmp_path / "bands.json"
    first = ["--first", str(runs[("follow-up-brief", "dev")])]
    then = ["--then", str(runs[("paper", "dev")])]
    train = [str(runs[("follow-up-brief", "train")]), str(runs[("paper", "train")])]
    with pytest.raises(SystemExit):  # a band chosen on the items it is measured on: refused
        main([*first, *then, "--probes", str(probes), "--save", str(bands)])
    assert "--save needs --choose-on" in capsys.readouterr().err
    main([*first, *then, "--probes", str(probes), "--choose-on", *train, "--save", str(bands)])
    (band,) = load_bands(bands).values()
    loaded = load_probes(probes)
    assert band.key == ("judge", "three-laws", "follow-up-brief", "paper")
    assert band.fitted["chosen_on"] == train and band.fitted["measured_on"][0] == first[1]
    assert 0 < band.fitted["measured"]["escalated"] <= 1
    Conscience(  # the band contains the first probe's threshold: the review takes it
        client=EngineClient("http://127.0.0.1:9"),
        judge_model="judge",
        frameworks={},
        method=JudgeMethod.PROBE,
        probes=loaded,
        second_opinion=Layout.PAPER,
        bands={band.key: band},
    )
    threshold = loaded[("judge", "three-laws", "follow-up-brief")].threshold
    assert band.lo <= threshold <= band.hi


def test_a_verdicts_run_with_a_second_opinion_counts_the_answers_it_escalated() -> None:
    from conscience.evals.verdicts.benchmark import _metrics
    from conscience.evals.verdicts.metrics import Row

    def row(i: int, gold: str, readings: dict[str, float] | None) -> Row:
        p = max((readings or {"x": 0.1}).values())
        predicted = "unethical" if p >= 0.5 else "ethical"
        return Row(f"i{i}", gold, predicted, False, p, 1.0, readings=readings)

    brief, both = {"follow-up-brief": 0.2}, {"follow-up-brief": 0.55, "paper": 0.7}
    rows = [row(0, "ethical", brief), row(1, "ethical", both), row(2, "unethical", both)]
    assert _metrics(rows)["second_opinions"] == {
        "asked": 2,
        "of": 3,
        "harmless_asked": 1,
        "harmless": 2,
    }
    assert "second_opinions" not in _metrics([row(3, "ethical", None)])
