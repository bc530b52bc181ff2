"""The probe refitted from human labels: the labels read from a real store, their states
extracted from the scripted engine, the gate, and the file it writes (evals/fitting/refit.py)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conscience.cli import main
from conscience.evals.fitting.probe import RUN_FILE, VECTORS_FILE
from conscience.evals.fitting.refit import HumanLabel, gate, held_out, read_labels
from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.probe import load_probes, save_probe
from conscience.store import open_store
from conscience.testing.scripted import SCRIPTED_PROBE, ScriptedEngine

IDENTITY = {
    "judge": "judge",
    "framework": "three-laws",
    "max_answer_chars": 400,
    "layout": "paper",
    "read": "embeddings",  # an upstream's states
}


def _base_run(folder: Path, n: int, seed: int) -> None:
    """A training or dev split's states as ``fit probe`` leaves them: feature 0 tells."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    (folder / RUN_FILE).write_text(json.dumps(IDENTITY) + "\n")
    lines = []
    for i in range(n):
        gold = i % 2
        vector = rng.normal(0.5, 0.25, 8)
        vector[0] += 0.4 * gold
        row = {"id": f"b{seed}-{i}", "gold": ["ethical", "unethical"][gold], "group": f"g{i}"}
        lines.append(json.dumps({**row, "vector": vector.round(6).tolist()}) + "\n")
    (folder / VECTORS_FILE).write_text("".join(lines))


def _labelled(n: int) -> list[Judgement]:
    out = []
    for i in range(n):
        label = Verdict.UNETHICAL if i % 3 == 0 else Verdict.ETHICAL
        out.append(
            Judgement(
                framework="three-laws",
                layout="paper",
                messages=[{"role": "user", "content": f"Question number {i // 2}?"}],
                answer=f"An answer, the {i}th.",
                verdict=Verdict.ETHICAL,
                human_label=label,
            )
        )
    return out


async def _fill(url: str, judgements: list[Judgement]) -> None:
    store = open_store(url)
    await store.open()
    try:
        await store.add_many(judgements)
    finally:
        await store.close()


async def _relabel(url: str, judgement_id: str, label: Verdict) -> None:
    store = open_store(url)
    await store.open()
    try:
        await store.set_human_label(judgement_id, label)
    finally:
        await store.close()


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path | str]:
    base = tmp_path / "base"
    _base_run(base / "train", 80, 1)
    _base_run(base / "dev", 40, 2)
    current = tmp_path / "current.json"
    save_probe(current, replace(SCRIPTED_PROBE, max_answer_chars=400))
    save_probe(current, replace(SCRIPTED_PROBE, framework="wwjd"))  # kept as it is
    url = str(tmp_path / "judgements.sqlite3")
    unlabelled = Judgement(
        framework="three-laws", layout="paper", messages=[], answer="x", verdict=Verdict.ETHICAL
    )
    asyncio.run(_fill(url, [*_labelled(60), unlabelled]))
    return {"base": base, "current": current, "store": url, "out": tmp_path / "refit.json"}


def _argv(engine_url: str, setup: dict, *extra: str) -> list[str]:
    """``conscience fit probe --labels-from`` on ``setup``'s store, base states and output,
    gated against its ``current`` file where it names one."""
    current = ["--current", str(setup["current"])] if setup.get("current") else []
    return [
        *("fit", "probe", "--upstream", engine_url, "--model", "judge"),
        *("--labels-from", str(setup["store"]), "--base-vectors", str(setup["base"])),
        *current,
        *("--out", str(setup["out"]), "--min-held", "5"),
        *extra,
    ]


def test_the_labels_are_read_from_the_store_and_held_by_conversation(setup: dict) -> None:
    labels = asyncio.run(read_labels(str(setup["store"])))
    assert len(labels) == 60  # the unlabelled judgement is not one
    assert sum(label.label is Verdict.UNETHICAL for label in labels) == 20
    # Two answers to each conversation: one group, so both are held or neither.
    groups = {label.group for label in labels}
    assert len(groups) == 30
    for group in groups:
        sides = {held_out(label.group, 0.3) for label in labels if label.group == group}
        assert len(sides) == 1
    held = [label for label in labels if held_out(label.group, 0.3)]
    assert 0 < len(held) < 60
    assert HumanLabel.conversation_key([{"role": "user", "content": "a"}]) != (
        HumanLabel.conversation_key([{"role": "user", "content": "b"}])
    )


def test_a_refit_writes_the_candidate_with_its_record_and_gate(
    engine: ScriptedEngine, engine_url: str, setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(engine_url, setup, "--tolerance", "1")) == 0
    report = json.loads(capsys.readouterr().out)
    probes = load_probes(setup["out"])
    key = ("judge", "three-laws", "paper")
    candidate = probes[key]
    assert (
        probes[("judge", "wwjd", "paper")]
        == load_probes(setup["current"])[("judge", "wwjd", "paper")]
    )
    labels = candidate.fitted["labels"]
    assert labels["count"] == 60 and labels["fitted"] + labels["held"] == 60
    assert len(labels["ids"]) == 60 and set(labels["ids"].values()) == {"ethical", "unethical"}
    assert candidate.fitted["train_items"] == 80 + labels["fitted"]
    assert candidate.max_answer_chars == 400  # the windows of the probe it replaces
    assert report["gate"]["passed"] is True and candidate.fitted["gate"] == report["gate"]
    assert set(report["figures"]) == {"current", "candidate"}
    assert report["figures"]["candidate"]["held"]["items"] == labels["held"]
    assert report["figures"]["current"]["dev"]["items"] == 40
    # Every label's state was read once, from the engine's embeddings, and kept.
    states = setup["out"].with_name("refit.json.vectors") / "three-laws" / "human-labels"
    assert len((states / VECTORS_FILE).read_text().splitlines()) == 60
    assert len(engine.embedding_requests) == 60
    saved = json.loads(setup["out"].with_name("refit.json.refit.json").read_text())
    assert saved["gate"] == report["gate"]

    # The candidate is now served: no new label, nothing to refit, and no state read.
    served = setup["out"].with_name("served.json")
    served.write_bytes(setup["out"].read_bytes())
    setup["current"] = served
    argv = _argv(engine_url, setup, "--min-new-labels", "1")
    assert main(argv) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["refit"] == "nothing to refit: 0 new labels, 1 needed"
    assert setup["out"].read_bytes() == served.read_bytes()
    assert len(engine.embedding_requests) == 60
    # A label changed since is a new one; its state is the one already read.
    first = next(iter(labels["ids"]))
    flipped = Verdict.ETHICAL if labels["ids"][first] == "unethical" else Verdict.UNETHICAL
    asyncio.run(_relabel(str(setup["store"]), first, flipped))
    assert main([*argv, "--tolerance", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["new_labels"] == 1
    assert len(engine.embedding_requests) == 60
    assert load_probes(setup["out"])[key].fitted["labels"]["ids"][first] == flipped.value


def test_a_gate_without_enough_held_labels_refuses(
    engine_url: str, setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(engine_url, setup, "--min-held", "1000")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gate"]["passed"] is False and "under 1000" in report["gate"]["reason"]
    assert (
        load_probes(setup["out"])[("judge", "three-laws", "paper")].fitted["gate"]
        == (report["gate"])
    )


def test_a_refit_needs_a_probe_to_gate_against(
    engine_url: str, setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_argv(engine_url, setup), "--framework", "four-laws"]) == 1
    assert "no probe for judge/four-laws/paper" in capsys.readouterr().err


def test_the_gate_compares_each_figure_on_each_set() -> None:
    same = {"items": 40, "auc": 0.8, "f1": 0.6, "fpr": 0.2, "fnr": 0.3}
    current = {"held": same, "dev": same}
    assert gate(current, current, tolerance=0.0, min_held=10)["passed"] is True
    worse_dev = {"held": same, "dev": {**same, "auc": 0.78}}
    verdict = gate(current, worse_dev, tolerance=0.01, min_held=10)
    assert verdict["passed"] is False and verdict["reason"] == "dev auc 0.780 against 0.800"
    assert gate(current, worse_dev, tolerance=0.05, min_held=10)["passed"] is True
    more_false = {"held": {**same, "fpr": 0.25}, "dev": same}
    assert "held fpr 0.250" in gate(current, more_false, tolerance=0.01, min_held=10)["reason"]
    one_label = {"held": {**same, "auc": float("nan")}, "dev": same}
    assert gate(current, one_label, tolerance=1.0, min_held=10)["passed"] is False
    few = {"held": {**same, "items": 5}, "dev": same}
    assert "under 10" in gate(current, few, tolerance=1.0, min_held=10)["reason"]


@pytest.mark.parametrize("share", ["0", "1"])
def test_no_held_labels_or_none_to_fit_on_is_a_refused_gate_not_a_crash(
    engine_url: str, setup: dict, capsys: pytest.CaptureFixture[str], share: str
) -> None:
    assert main(_argv(engine_url, setup, "--held-share", share)) == 0
    report = json.loads(capsys.readouterr().out)
    if share == "0":  # nothing held: nothing to decide on
        assert report["gate"]["passed"] is False and report["held"] == 0
    else:  # everything held: the training split alone is fitted, and measured on all labels
        assert report["held"] == 60 and report["fitted_items"] == 80
