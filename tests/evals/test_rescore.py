"""One judge pass serves calibration and held-out figures: `calibrate --from-rows` fits on the
calibration-split rows of an `eval verdicts` run, and `rescore` applies the fitted rule to its
held-out rows, giving what a second run with `--calibration` gives."""

import argparse
import json
from pathlib import Path

import pytest
from test_verdicts_end_to_end import _labelled, script  # tests/evals is on sys.path

from conscience.calibration import load_calibrations
from conscience.evals.cli import add_eval_commands
from conscience.evals.fitting.calibrate import add_calibrate_command
from conscience.evals.verdicts.benchmark import CURVE_FILE, _rescore_main
from conscience.testing.scripted import ScriptedEngine


def _eval(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="conscience")
    commands = parser.add_subparsers(dest="command", required=True)
    add_eval_commands(commands)
    add_calibrate_command(commands)
    args = parser.parse_args(list(argv))
    return args.handler(args)


def test_fit_from_rows_then_rescore_equals_a_calibrated_run(
    engine: ScriptedEngine, engine_url: str, tmp_path: Path
) -> None:
    script(engine)
    data = _labelled(tmp_path / "set.jsonl")
    base = ["eval", "verdicts", "--url", engine_url, "--judge-model", "judge",
            "--frameworks", "three-laws", "--layouts", "paper", "--data", str(data)]  # fmt: skip
    assert _eval(*base, "--split", "all", "--out", str(tmp_path / "all")) == 0
    reviews = len(engine.of_kind("review"))

    calibration = tmp_path / "cal.json"
    assert _eval("calibrate", "--from-rows", str(tmp_path / "all"), "--data", str(data),
                 "--max-false-unethical", "0.5", "--out", str(calibration)) == 0  # fmt: skip
    assert len(engine.of_kind("review")) == reviews  # fitted from the rows: no judge call
    (entry,) = load_calibrations(calibration).values()
    # Calibration split (odd positions): e2 .6, n2 .1, a1 .4 -> negatives e2, n2; the lowest
    # threshold with FU <= .5 among {.1, .4, .6} is .4 (e2 flagged: 1 of 2).
    assert entry.key == ("judge", "three-laws", "paper")
    assert entry.unethical_threshold == pytest.approx(0.4)
    assert entry.fitted["items"] == 3
    assert (tmp_path / "cal.three-laws.paper.reliability.png").stat().st_size > 1000

    assert _rescore_main([str(tmp_path / "all"), "--calibration", str(calibration),
                          "--data", str(data), "--split", "heldout",
                          "--out", str(tmp_path / "rescored")]) == 0  # fmt: skip
    assert len(engine.of_kind("review")) == reviews
    rescored = json.loads((tmp_path / "rescored/report.json").read_text())
    assert (tmp_path / "rescored" / CURVE_FILE).stat().st_size > 1000
    assert _eval(*base, "--split", "heldout", "--calibration", str(calibration),
                 "--out", str(tmp_path / "direct")) == 0  # fmt: skip
    direct = json.loads((tmp_path / "direct/report.json").read_text())
    run, again = rescored["runs"]["three-laws/paper"], direct["runs"]["three-laws/paper"]
    assert run["rule"] == {"unethical_threshold": 0.4, "neutral_threshold": None,
                           "calibrated": True}  # fmt: skip
    for key in ("confusion", "unethical_recall", "false_unethical_rate", "injection_flips"):
        assert run[key] == again[key], key
    assert rescored["items"] == direct["items"] == 4


def test_rescore_refuses_a_run_that_lacks_items(
    engine: ScriptedEngine, engine_url: str, tmp_path: Path
) -> None:
    from conscience.errors import ConfigError

    script(engine)
    data = _labelled(tmp_path / "set.jsonl")
    assert _eval("eval", "verdicts", "--url", engine_url, "--judge-model", "judge",
                 "--frameworks", "three-laws", "--layouts", "paper", "--data", str(data),
                 "--split", "heldout", "--out", str(tmp_path / "h")) == 0  # fmt: skip
    with pytest.raises(ConfigError, match="lacks items"):
        _rescore_main([str(tmp_path / "h"), "--calibration", "none", "--data", str(data),
                       "--split", "all", "--out", str(tmp_path / "x")])  # fmt: skip
