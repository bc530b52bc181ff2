"""`eval verdicts` on a binary-labelled set (the guard field's format and figures), resumed
after a kill, and telling its progress in log lines when there is no terminal."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from test_verdicts_end_to_end import _cli, _review_reply

from conscience.errors import ConfigError, EngineStatusError
from conscience.evals.shared.labelled import load_labelled
from conscience.testing.scripted import Fault, ScriptedEngine

# id: (label, P(ethical, neutral, unethical)) in the paper layout
BINARY = {
    "h1": ("harmful", (0.1, 0.1, 0.8)),  # TP
    "h2": ("harmful", (0.7, 0.1, 0.2)),  # FN
    "h3": ("harmful", (0.2, 0.1, 0.7)),  # TP
    "u1": ("unharmful", (0.8, 0.1, 0.1)),  # TN
    "u2": ("unharmful", (0.1, 0.7, 0.2)),  # TN (neutral passes)
    "u3": ("unharmful", (0.3, 0.1, 0.6)),  # FP
}


def _binary(path: Path) -> Path:
    rows = [
        {"id": f"toy-{i}", "prompt": f"prompt {i}", "response": f"response ITEM-{i}", "label": lab}
        for i, (lab, _) in BINARY.items()
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _script(engine: ScriptedEngine) -> None:
    def handler(kind: str, body: dict) -> dict | None:
        if kind != "review":
            return None
        text = "\n".join(str(m.get("content")) for m in body["messages"])
        return _review_reply(BINARY[re.search(r"ITEM-(\w+)", text).group(1)][1])

    engine.handler = handler


def _run(engine_url: str, data: Path, out: Path, *extra: str) -> int:
    return _cli(
        "eval", "verdicts", "--url", engine_url, "--judge-model", "judge",
        "--frameworks", "three-laws", "--layouts", "paper", "--data", str(data),
        "--out", str(out), *extra,
    )  # fmt: skip


def test_a_binary_set_loads_as_harmful_unethical_and_unharmful_ethical(tmp_path):
    items = load_labelled(_binary(tmp_path / "toy.jsonl"))
    assert [(i.id, i.label.value, i.split) for i in items[:4]] == [
        ("toy-h1", "unethical", "all"),
        ("toy-h2", "unethical", "all"),
        ("toy-h3", "unethical", "all"),
        ("toy-u1", "ethical", "all"),
    ]
    assert items[0].question == "prompt h1" and items[0].category == "toy"
    with pytest.raises(ConfigError, match="binary set without parts"):
        load_labelled(tmp_path / "toy.jsonl", "dev")


def test_the_report_has_the_guard_figures(engine, engine_url, tmp_path, capsys):
    _script(engine)
    assert _run(engine_url, _binary(tmp_path / "toy.jsonl"), tmp_path / "out") == 0
    guard = json.loads((tmp_path / "out/report.json").read_text())["runs"]["three-laws/paper"]
    guard = guard["guard"]
    assert guard["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert guard["false_positive_rate"] == pytest.approx(1 / 3)
    assert guard["false_negative_rate"] == pytest.approx(1 / 3)
    assert guard["agreement"] == pytest.approx(4 / 6)
    # harmful .8 .2 .7 vs unharmful .1 .2 .6: 7 pairs right, one tie (.2/.2) of 9
    assert guard["auc"] == pytest.approx(7.5 / 9)
    header = capsys.readouterr().out.splitlines()[0]
    assert all(column in header.split() for column in ("F1", "FPR", "FNR", "agree"))


def test_a_killed_run_resumes_where_it_stopped(engine, engine_url, tmp_path, caplog):
    data, out = _binary(tmp_path / "toy.jsonl"), tmp_path / "out"
    _script(engine)
    script, served = engine.handler, []

    def breaking(kind: str, body: dict) -> dict | None:
        served.append(kind)
        if served.count("review") == 4:  # the engine fails from the fifth review on
            engine.faults["review"] = Fault(status=500)
        return script(kind, body)

    engine.handler = breaking
    with pytest.raises(EngineStatusError):
        _run(engine_url, data, out)
    kept = (out / "verdicts.jsonl").read_text().splitlines()
    assert len(kept) == 4 and not (out / "report.json").exists()

    engine.faults.clear()
    engine.handler = script
    before = len(engine.of_kind("review"))
    caplog.set_level(logging.INFO, logger="conscience.progress")
    assert _run(engine_url, data, out) == 0
    assert len(engine.of_kind("review")) - before == 2  # only the items not done
    report = json.loads((out / "report.json").read_text())
    run = report["runs"]["three-laws/paper"]
    assert run["items"] == 6 and run["resumed_rows"] == 4
    assert run["guard"]["agreement"] == pytest.approx(4 / 6)  # the same as one whole run
    ids = [json.loads(line)["id"] for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert ids == [f"toy-{i}" for i in BINARY]  # rewritten in item order, each once
    lines = [r.getMessage() for r in caplog.records if r.name == "conscience.progress"]
    assert lines[0] == "verdicts: 4/6 (67%)" and lines[-1].startswith("verdicts: 6/6 (100%)")


def test_a_directory_holding_another_run_is_refused(engine, engine_url, tmp_path):
    _script(engine)
    data, out = _binary(tmp_path / "toy.jsonl"), tmp_path / "out"
    assert _run(engine_url, data, out) == 0
    with pytest.raises(ConfigError, match=r"other settings \(settings\)"):
        _run(engine_url, data, out, "--unethical-threshold", "0.3")
    (out / "run.json").unlink()
    with pytest.raises(ConfigError, match="rows of an unknown run"):
        _run(engine_url, data, out)


def test_a_smaller_limit_reports_fewer_items_and_keeps_the_other_rows(engine, engine_url, tmp_path):
    _script(engine)
    data, out = _binary(tmp_path / "toy.jsonl"), tmp_path / "out"
    assert _run(engine_url, data, out) == 0
    assert _run(engine_url, data, out, "--limit", "2") == 0
    assert json.loads((out / "report.json").read_text())["items"] == 2
    assert len((out / "verdicts.jsonl").read_text().splitlines()) == 6  # nothing thrown away
    before = len(engine.of_kind("review"))
    assert _run(engine_url, data, out) == 0
    assert len(engine.of_kind("review")) == before  # all six were still there


def test_rows_of_a_run_from_before_the_decomposed_verdict_was_retired_still_read(
    engine, engine_url, tmp_path
):
    """Rows carrying the retired ``parts`` resume and read as rows; nothing is reviewed again."""
    from conscience.evals.verdicts.benchmark import read_rows

    data, out = _binary(tmp_path / "toy.jsonl"), tmp_path / "out"
    assert _run(engine_url, data, out) == 0
    rows_file = out / "verdicts.jsonl"
    old = [
        {**json.loads(line), "parts": {"harm": 0.5}} for line in rows_file.read_text().splitlines()
    ]
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in old))
    before = len(engine.of_kind("review"))
    assert _run(engine_url, data, out) == 0
    assert len(engine.of_kind("review")) == before
    _, rows = read_rows(out)
    assert sum(len(r) for r in rows.values()) == 6
