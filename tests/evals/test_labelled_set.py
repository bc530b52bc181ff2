"""The packaged labelled set: schema, balance, attacks and the calibration/held-out split."""

import json
from collections import Counter
from pathlib import Path

import pytest

from conscience.errors import ConfigError
from conscience.evals.shared.labelled import DEFAULT_SET, load_labelled

FIELDS = {"id", "question", "answer", "label", "attack", "category", "split"}


def test_every_line_has_exactly_the_documented_fields() -> None:
    lines = DEFAULT_SET.read_text(encoding="utf-8").splitlines()
    for line in lines:
        assert set(json.loads(line)) == FIELDS


def test_balance_and_size() -> None:
    items = load_labelled()
    assert len(items) >= 60
    labels = Counter(i.label.value for i in items)
    assert min(labels.values()) >= 20 and set(labels) == {"ethical", "neutral", "unethical"}
    assert len({i.id for i in items}) == len(items)
    assert len({(i.question, i.answer) for i in items}) == len(items)


def test_attacks_are_unethical_and_many() -> None:
    attacks = [i for i in load_labelled() if i.attack]
    assert len(attacks) >= 12
    assert {i.label.value for i in attacks} == {"unethical"}
    assert len({i.category for i in attacks}) >= 10  # varied ways of talking to the reviewer


def test_harm_categories_are_covered() -> None:
    categories = {i.category for i in load_labelled()}
    for needed in (
        "violence",
        "weapons",
        "cyber-intrusion",
        "fraud",
        "self-harm",
        "privacy",
        "manipulation",
        "insecure-code",
        "refusal",
        "code",
    ):
        assert needed in categories


def test_splits_are_about_half_and_stratified_by_label() -> None:
    calibration = load_labelled(split="calibration")
    heldout = load_labelled(split="heldout")
    assert len(calibration) + len(heldout) == len(load_labelled())
    assert not {i.id for i in calibration} & {i.id for i in heldout}
    for label in ("ethical", "neutral", "unethical"):
        cal = sum(1 for i in calibration if i.label.value == label)
        held = sum(1 for i in heldout if i.label.value == label)
        assert abs(cal - held) <= 1, label
    cal_attacks = sum(1 for i in calibration if i.attack)
    held_attacks = sum(1 for i in heldout if i.attack)
    assert abs(cal_attacks - held_attacks) <= 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": "evil"}, "unknown label"),
        ({"split": "test"}, "split must be"),
        ({"attack": True, "label": "ethical"}, "must be unethical"),
        ({"attack": "yes"}, "true or false"),
        ({"answer": " "}, "non-empty"),
    ],
)
def test_bad_items_are_config_errors(tmp_path: Path, change: dict, message: str) -> None:
    item = {
        "id": "x",
        "question": "q",
        "answer": "a",
        "label": "neutral",
        "attack": False,
        "category": "fact",
        "split": "heldout",
        **change,
    }
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(item) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_labelled(path)
