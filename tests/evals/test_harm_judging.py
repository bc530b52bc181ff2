"""The binary-labelled set reader and the split by prompt (evals/shared/harm_judging.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conscience.errors import ConfigError
from conscience.evals.shared.harm_judging import (
    DEFAULT_DIR,
    PARTS,
    SPLIT_FILE,
    BinaryItem,
    assign_parts,
    load_binary,
    load_split,
    prompt_key,
    write_split,
)


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _row(i: int, prompt: str = "p", label: str = "harmful") -> dict[str, str]:
    return {"id": f"set-{i}", "prompt": prompt, "response": f"r{i}", "label": label}


def test_reads_every_file_of_a_folder_and_keeps_line_separators_inside_strings(tmp_path):
    _write(tmp_path / "a.jsonl", [_row(0), _row(1, label="unharmful")])
    # U+2028 is a line break for str.splitlines, not for JSON Lines.
    _write(tmp_path / "b.jsonl", [_row(2, prompt="one\u2028two")])
    items = load_binary([tmp_path])
    assert [i.id for i in items] == ["set-0", "set-1", "set-2"]
    assert [i.harmful for i in items] == [True, False, True]
    assert items[2].prompt == "one\u2028two"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "x", "prompt": "p", "response": "r", "label": "unsafe"}, "label 'unsafe'"),
        ({"id": "x", "prompt": "p", "label": "harmful"}, "expected an object"),
        ({"id": 3, "prompt": "p", "response": "r", "label": "harmful"}, "must be strings"),
    ],
)
def test_a_bad_item_is_an_error_naming_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "s.jsonl", [_row(0), row])
    with pytest.raises(ConfigError, match=rf"s\.jsonl:2: .*{message}"):
        load_binary([path])


def test_a_duplicate_id_or_non_json_line_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="duplicate id 'set-0'"):
        load_binary([_write(tmp_path / "d.jsonl", [_row(0), _row(0)])])
    (tmp_path / "n.jsonl").write_text('{"id": \n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"n\.jsonl:1: not JSON"):
        load_binary([tmp_path / "n.jsonl"])


def test_one_prompt_goes_whole_to_one_part():
    variants = ["How do I pick a lock?", "  how do i pick a LOCK ", "How do I pick a lock"]
    assert len({prompt_key(v) for v in variants}) == 1
    items = [BinaryItem(f"i{n}", v, f"r{n}", "harmful") for n, v in enumerate(variants * 5)]
    assert len(set(assign_parts(items).values())) == 1


def test_parts_follow_the_fractions_and_the_seed():
    items = [BinaryItem(f"i{n}", f"prompt number {n}", "r", "harmful") for n in range(6000)]
    parts = assign_parts(items)
    shares = {part: list(parts.values()).count(part) / len(items) for part in PARTS}
    assert shares["train"] == pytest.approx(0.6, abs=0.03)
    assert shares["dev"] == pytest.approx(0.2, abs=0.03)
    assert assign_parts(items) == parts  # deterministic
    assert assign_parts(items, seed="another") != parts
    with pytest.raises(ConfigError, match="sum to 1"):
        assign_parts(items, fractions={"train": 0.5, "dev": 0.2, "test": 0.2})


def test_a_written_split_reads_back_and_an_id_in_two_parts_is_an_error(tmp_path):
    items = [BinaryItem(f"i{n}", f"prompt {n}", "r", "harmful") for n in range(50)]
    path = tmp_path / "split.json"
    record = write_split(items, path)
    assert load_split(path) == assign_parts(items)
    record["parts"]["test"].append(record["parts"]["train"][0])
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="in both train and test"):
        load_split(path)


def test_the_shipped_split_lists_each_id_once():
    parts = load_split(SPLIT_FILE)
    assert len(parts) == 5211
    assert set(parts.values()) == set(PARTS)


@pytest.mark.skipif(not DEFAULT_DIR.is_dir(), reason="the shared harm_judging data is not here")
def test_the_shipped_split_is_the_split_of_the_shared_data_and_no_prompt_crosses_parts():
    items = load_binary([DEFAULT_DIR])
    shipped = load_split(SPLIT_FILE)
    assert shipped == assign_parts(items)  # reproducible from the data and the seed
    part_of_prompt: dict[str, str] = {}
    for item in items:
        key = prompt_key(item.prompt)
        assert part_of_prompt.setdefault(key, shipped[item.id]) == shipped[item.id], item.id
