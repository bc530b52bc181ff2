"""The split over every labelled source (evals/shared/sources.py): the rule on made-up sets, and the
shipped file against the original split and, where the shared data is here, against it."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from conscience.engine.weights import sha256_file
from conscience.errors import ConfigError
from conscience.evals.shared.harm_judging import (
    DEFAULT_DIR,
    PARTS,
    SPLIT_FILE,
    BinaryItem,
    assign_parts,
    load_split,
    prompt_key,
)
from conscience.evals.shared.sources import (
    ALL_SPLIT_FILE,
    EVALUATION_ONLY,
    assign_all,
    load_sources,
    write_all_split,
)

ROOT = DEFAULT_DIR.parent  # the shared data: harm_judging/, harm_judging_more/, benign_chat/


def _item(i: str, prompt: str, label: str = "harmful") -> BinaryItem:
    return BinaryItem(i, prompt, f"answer {i}", label)


def _prompt_in(part: str, avoid: str | None = None) -> str:
    """A prompt that the seeded hash puts in ``part``."""
    for n in range(1000):
        prompt = f"question number {n}"
        if assign_parts([_item("x", prompt)])["x"] == part and prompt != avoid:
            return prompt
    raise AssertionError(part)


def test_a_new_item_joins_the_part_its_prompt_has_in_the_existing_split() -> None:
    hashed_train = _prompt_in("train")
    # The base split put this prompt in dev (made another way, or by another seed): the new
    # item follows the base, not the hash, and the base's own item keeps its part.
    sets = {
        "old/a.jsonl": [_item("a-0", hashed_train)],
        "new/b.jsonl": [_item("b-0", f"  {hashed_train.upper()}?"), _item("b-1", "other")],
    }
    parts = assign_all(sets, {"a-0": "dev"})
    assert parts["a-0"] == parts["b-0"] == "dev"
    assert parts["b-1"] == assign_parts([_item("b-1", "other")])["b-1"]  # the hash, elsewhere


def test_an_evaluation_only_set_goes_to_test_with_every_item_of_its_prompts() -> None:
    train = _prompt_in("train")
    sets = {
        "chat/many.jsonl": [_item("m-0", train, "unharmful"), _item("m-1", "another")],
        "chat/eval.jsonl": [_item("e-0", train, "unharmful")],
    }
    parts = assign_all(sets, {}, evaluation_only=frozenset({"chat/eval.jsonl"}))
    assert parts["e-0"] == parts["m-0"] == "test"
    assert parts["m-1"] == assign_parts([_item("m-1", "another")])["m-1"]
    with pytest.raises(ConfigError, match="evaluation-only set but the existing split puts it"):
        assign_all(sets, {"m-0": "train"}, evaluation_only=frozenset({"chat/eval.jsonl"}))


def test_a_prompt_in_two_parts_of_the_existing_split_is_refused() -> None:
    sets = {"old/a.jsonl": [_item("a-0", "same prompt"), _item("a-1", "Same prompt.")]}
    with pytest.raises(ConfigError, match="in \\['dev', 'train'\\]"):
        assign_all(sets, {"a-0": "train", "a-1": "dev"})


def test_an_id_in_two_files_is_refused(tmp_path: Path) -> None:
    for folder, name in (("one", "a.jsonl"), ("two", "b.jsonl")):
        (tmp_path / folder).mkdir()
        row = {"id": "dup-0", "prompt": "p", "response": "r", "label": "harmful"}
        (tmp_path / folder / name).write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'dup-0' is in both one/a\.jsonl and two/b\.jsonl"):
        load_sources(tmp_path, ("one", "two"))
    with pytest.raises(ConfigError, match="no labelled set"):
        load_sources(tmp_path, ("one", "three"))


# -- the shipped file --------------------------------------------------------------------------


def _shipped() -> dict:
    return json.loads(ALL_SPLIT_FILE.read_text(encoding="utf-8"))


def test_every_existing_id_keeps_its_part() -> None:
    everything, base = load_split(ALL_SPLIT_FILE), load_split(SPLIT_FILE)  # no id twice in either
    assert {i: everything.get(i) for i in base} == base
    assert len(everything) > 5 * len(base)  # the new sets are in it


def test_the_file_says_what_it_covers_and_lists_ids_only() -> None:
    record = _shipped()
    covers = record["covers"]
    assert {name.split("/")[0] for name in covers} == {
        "harm_judging",
        "harm_judging_more",
        "benign_chat",
    }
    assert sum(entry["items"] for entry in covers.values()) == sum(
        len(record["parts"][p]) for p in PARTS
    )
    assert {n for n, entry in covers.items() if entry["evaluation_only"]} == EVALUATION_ONLY
    assert record["seed"] == json.loads(SPLIT_FILE.read_text())["seed"]
    ids = [i for p in PARTS for i in record["parts"][p]]
    assert all(isinstance(i, str) and len(i) < 80 and " " not in i for i in ids)
    # the evaluation-only set is never trained on
    held = [p for i, p in load_split(ALL_SPLIT_FILE).items() if i.startswith("self_instruct_user")]
    assert len(held) == 252 and set(held) == {"test"}


needs_data = pytest.mark.skipif(
    not all((ROOT / f).is_dir() for f in ("harm_judging", "harm_judging_more", "benign_chat")),
    reason=f"the shared data is not at {ROOT}",
)


@needs_data
def test_no_prompt_is_in_two_parts_and_the_file_is_the_datas() -> None:
    sets = load_sources(ROOT)
    parts = load_split(ALL_SPLIT_FILE)
    items = [item for group in sets.values() for item in group]
    assert {i.id for i in items} == set(parts)
    seen: dict[str, set[str]] = defaultdict(set)
    for item in items:
        seen[prompt_key(item.prompt)].add(parts[item.id])
    assert all(len(p) == 1 for p in seen.values())
    assert len(seen) > 10_000  # the check ran over the whole data, not a corner of it
    for name, entry in _shipped()["covers"].items():  # the data it was made from
        assert sha256_file(ROOT / name) == entry["sha256"], name


@needs_data
def test_writing_it_again_gives_the_shipped_file(tmp_path: Path) -> None:
    write_all_split(ROOT, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == ALL_SPLIT_FILE.read_text()
