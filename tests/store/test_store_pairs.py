"""Preference pairs: which judgements are pairs, consuming them, exporting them for TRL."""

from __future__ import annotations

import json

import pytest

from conscience import pairs as pairs_module
from conscience.labels import Verdict
from conscience.pairs import export_pairs, to_trl_pair
from conscience.store import is_pair
from conscience.store.base import RowsRead


async def test_pairs_follow_the_effective_verdict_and_the_rewrite(store, make, make_pair):
    plain = make_pair()
    overruled = make_pair()  # a human says ethical: no longer a pair
    no_rewrite = make(verdict=Verdict.ETHICAL)  # a human says unethical, but nothing to prefer
    neutral_rewritten = make(verdict=Verdict.NEUTRAL, rewrite="better")  # human: unethical
    blank = make_pair(rewrite=" \n\t\r ")
    empty = make_pair(rewrite="")
    missing = make_pair(rewrite=None)
    human_says_neutral = make_pair()
    all_of_them = [
        plain,
        overruled,
        no_rewrite,
        neutral_rewritten,
        blank,
        empty,
        missing,
        human_says_neutral,
    ]
    await store.add_many(all_of_them)
    assert await store.read_pairs() == RowsRead([plain, overruled, human_says_neutral], [])

    await store.set_human_label(overruled.id, Verdict.ETHICAL)
    await store.set_human_label(no_rewrite.id, Verdict.UNETHICAL)
    await store.set_human_label(neutral_rewritten.id, Verdict.UNETHICAL)
    await store.set_human_label(human_says_neutral.id, Verdict.NEUTRAL)

    got = (await store.read_pairs()).judgements
    assert [j.id for j in got] == [plain.id, neutral_rewritten.id]
    # The SQL rule and the Python rule agree on every record.
    stored = (await store.read_page()).judgements
    assert {j.id for j in stored if is_pair(j)} == {j.id for j in got}

    await store.set_human_label(overruled.id, None)  # the model's verdict stands again
    assert [j.id for j in (await store.read_pairs()).judgements] == [
        plain.id,
        overruled.id,
        neutral_rewritten.id,
    ]


async def test_unconsumed_pairs_are_oldest_first_and_limited(store, make_pair):
    made = [make_pair() for _ in range(5)]
    await store.add_many(made[::-1])
    assert await store.read_pairs() == RowsRead(made, [])
    assert await store.read_pairs(limit=2) == RowsRead(made[:2], [])
    assert await store.read_pairs(limit=0) == RowsRead([], [])


async def test_mark_consumed_is_idempotent_and_first_run_wins(store, make, make_pair):
    p1, p2, p3 = make_pair(), make_pair(), make_pair()
    other = make()
    await store.add_many([p1, p2, p3, other])

    assert await store.mark_consumed([p1.id, p2.id, p1.id, "jdg_missing"], "run-1") == 2
    assert await store.mark_consumed([p1.id, p2.id], "run-1") == 0
    assert await store.mark_consumed([p2.id, p3.id], "run-2") == 1
    assert await store.mark_consumed([], "run-3") == 0

    assert (await store.get(p1.id)).consumed_by == "run-1"
    assert (await store.get(p2.id)).consumed_by == "run-1"
    assert (await store.get(p3.id)).consumed_by == "run-2"
    assert await store.read_pairs() == RowsRead([], [])
    consumed = await store.read_pairs(include_consumed=True)
    assert [j.id for j in consumed.judgements] == [p1.id, p2.id, p3.id]


async def test_mark_consumed_handles_more_ids_than_one_statement_binds(store, make_pair):
    made = [make_pair() for _ in range(1200)]
    await store.add_many(made)
    ids = [j.id for j in made]
    assert await store.mark_consumed(ids, "run-big") == 1200
    assert await store.read_pairs(limit=1) == RowsRead([], [])


def test_to_trl_pair_is_conversational(make_pair, make):
    j = make_pair(
        messages=[
            {"role": "system", "content": "sys", "name": "x"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
        answer="bad",
        rewrite="good",
        framework="wwjd",
    )
    assert to_trl_pair(j) == {
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "a\nb"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
        "id": j.id,
        "framework": "wwjd",
    }
    with pytest.raises(ValueError, match="not a preference pair"):
        to_trl_pair(make(verdict=Verdict.ETHICAL, rewrite="good"))
    with pytest.raises(ValueError, match="blank"):
        to_trl_pair(make_pair(rewrite="  "))
    with pytest.raises(ValueError, match="not a preference pair"):
        to_trl_pair(make_pair(human_label=Verdict.ETHICAL))
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(ValueError, match="image_url"):
        to_trl_pair(make_pair(messages=image))


async def test_export_pairs_writes_jsonl_that_reads_back(store, make, make_pair, tmp_path):
    first = make_pair(
        messages=[{"role": "user", "content": "Příliš žluťoučký?\nline 2"}],
        rewrite="Ano — 🐴",
        answer='He said "no"',
    )
    consumed = make_pair(consumed_by="run-0")
    image = make_pair(messages=[{"role": "user", "content": [{"type": "image_url"}]}])
    last = make_pair()
    await store.add_many([make(), first, consumed, image, last, make(verdict=Verdict.UNETHICAL)])
    out = tmp_path / "exports" / "pairs.jsonl"

    assert await export_pairs(store, out) == 2  # the image conversation is skipped
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [first.id, last.id]
    assert rows[0] == to_trl_pair(first)
    assert rows[0]["prompt"][0]["content"] == "Příliš žluťoučký?\nline 2"
    assert "Příliš" in lines[0]  # real UTF-8, not \u escapes

    assert await export_pairs(store, out, include_consumed=True) == 3
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [first.id, consumed.id, last.id]
    assert sorted(p.name for p in out.parent.iterdir()) == ["pairs.jsonl"]


async def test_a_failed_export_leaves_the_old_file_and_no_debris(
    store, make_pair, tmp_path, monkeypatch
):
    await store.add(make_pair())
    out = tmp_path / "pairs.jsonl"
    out.write_text("previous export\n", encoding="utf-8")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(pairs_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        await export_pairs(store, out)
    assert out.read_text(encoding="utf-8") == "previous export\n"
    assert [p.name for p in tmp_path.iterdir() if p.name != "not-yet"] == ["pairs.jsonl"]
