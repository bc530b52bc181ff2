"""The store's records: round-trip, filters, pagination, human labels, purge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from conscience.errors import NotFound, StoreError
from conscience.judgement import Judgement
from conscience.labels import Action, Verdict
from conscience.store.base import RowsRead, UnreadableRow

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)  # the `make` fixture's first created_at


def full_judgement() -> Judgement:
    """Every field set, with text and numbers that a careless serializer would bend."""
    return Judgement(
        created_at=datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
        request_id="chatcmpl-42",
        model="qwen-coder-adapter-7",
        judge_model="qwen-coder",
        framework="four-laws",
        layout="follow-up",
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": 'Žluťoučký kůň 🐴\nline two\t"quoted" \\ back'},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "n": [1, 2.5]}]},
            {"role": "user", "content": [{"type": "text", "text": "parts"}]},
        ],
        answer="rm -rf / — 💥",
        reasoning="thinking…",
        verdict=Verdict.UNETHICAL,
        confidence=0.8125,
        label_probs={"ethical": 0.1, "neutral": 0.0875, "unethical": 0.8125},
        screen=["verdict-line", "look-alike"],
        readings={"follow-up-brief": 0.5625, "paper": 0.8125},
        rewrite="Here is a safe way: …",
        action=Action.REWRITTEN,
        review_ms=12.5,
        rewrite_ms=301.25,
        upstream_ms=1000.0,
        human_label=Verdict.NEUTRAL,
        consumed_by="run-2026-11-27",
    )


async def test_round_trip_gives_back_an_equal_judgement_in_utc(store):
    full = full_judgement()
    bare = Judgement(
        framework="three-laws", layout="paper", messages=[], answer="", verdict="neutral"
    )
    await store.add(full)
    await store.add(bare)

    for original in (full, bare):
        got = await store.get(original.id)
        assert got == original
        assert got.created_at.utcoffset() == timedelta(0)
        assert got.model_dump() == original.model_dump()
    assert (await store.get(full.id)).created_at == datetime(2026, 11, 27, 7, 30, 15, 123456, UTC)


async def test_naive_datetimes_are_utc(store, make):
    j = make(created_at=datetime(2026, 1, 2, 3, 4, 5))
    await store.add(j)
    assert (await store.get(j.id)).created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert await store.count(since=datetime(2026, 1, 2, 3, 4, 5)) == 1


async def test_get_of_an_unknown_id_is_not_found(store):
    with pytest.raises(NotFound, match="jdg_missing"):
        await store.get("jdg_missing")


async def test_a_duplicate_id_is_refused_and_the_first_record_kept(store, make):
    first = make(answer="first")
    await store.add(first)
    with pytest.raises(StoreError):
        await store.add(first.model_copy(update={"answer": "second"}))
    assert (await store.get(first.id)).answer == "first"


@pytest.mark.parametrize("content", [b"bytes", {1, 2}, float("nan")])
async def test_a_record_that_is_not_json_is_a_store_error(store, make, content):
    bad = make(messages=[{"role": "user", "content": content}])
    with pytest.raises(StoreError, match=bad.id):
        await store.add(bad)
    with pytest.raises(StoreError):
        await store.add_many([make(), bad])
    assert await store.count() == 0


async def test_a_nul_character_is_kept_by_sqlite_and_replaced_by_postgres(store, make, backend):
    for j in (make(answer="a\x00b"), make(messages=[{"role": "user", "content": "\x00"}])):
        await store.add(j)
        stored = await store.get(j.id)
        if backend == "sqlite":
            assert stored == j
        else:  # PostgreSQL text and jsonb cannot hold NUL: U+FFFD stands in its place
            assert stored.answer == j.answer.replace("\x00", "\ufffd")
            assert stored.messages == [
                {k: v.replace("\x00", "\ufffd") for k, v in m.items()} for m in j.messages
            ]


async def test_concurrent_adds_are_all_stored_and_a_bad_one_fails_alone(store, make):
    judgements = [make() for _ in range(60)]
    await store.add(judgements[7])
    results = await asyncio.gather(*(store.add(j) for j in judgements), return_exceptions=True)
    assert isinstance(results[7], StoreError)
    assert [r for i, r in enumerate(results) if i != 7] == [None] * 59
    assert await store.count() == 60


async def test_add_many_is_one_transaction(store, make):
    batch = [make() for _ in range(5)]
    await store.add_many(batch)
    assert await store.count() == 5
    clash = [make(), make(), batch[2]]  # the third collides: none of the three may stay
    with pytest.raises(StoreError):
        await store.add_many(clash)
    assert await store.count() == 5
    with pytest.raises(NotFound):
        await store.get(clash[0].id)
    await store.add_many([])


async def test_list_filters_and_pages_newest_first(store, make):
    frameworks = ["three-laws", "four-laws", "wwjd"]
    verdicts = list(Verdict)
    stored = [make(framework=frameworks[i % 3], verdict=verdicts[i % 2 * 2]) for i in range(30)]
    await store.add_many(stored[::-1])  # insertion order must not matter
    newest_first = stored[::-1]

    assert await store.read_page() == RowsRead(newest_first, [])
    assert await store.count() == 30
    pages = [await store.read_page(limit=7, offset=o) for o in range(0, 30, 7)]
    assert [j for page in pages for j in page.judgements] == newest_first
    assert await store.read_page(limit=3, offset=28) == RowsRead(newest_first[28:], [])

    unethical = [j for j in newest_first if j.verdict is Verdict.UNETHICAL]
    assert await store.read_page(verdict=Verdict.UNETHICAL) == RowsRead(unethical, [])
    assert await store.count(verdict=Verdict.UNETHICAL) == len(unethical) == 15
    assert await store.count(verdict=Verdict.NEUTRAL) == 0

    wwjd = [j for j in newest_first if j.framework == "wwjd"]
    assert await store.read_page(framework="wwjd") == RowsRead(wwjd, [])
    assert await store.count(framework="wwjd") == 10

    since, until = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
    window = [j for j in newest_first if since <= j.created_at < until]
    assert len(window) == 10
    assert await store.read_page(since=since, until=until) == RowsRead(window, [])
    assert await store.count(since=since, until=until) == 10
    both = [j for j in window if j.framework == "wwjd" and j.verdict is Verdict.UNETHICAL]
    got = await store.read_page(
        since=since, until=until, framework="wwjd", verdict=Verdict.UNETHICAL
    )
    assert got == RowsRead(both, [])
    assert len(both) == await store.count(
        since=since, until=until, framework="wwjd", verdict=Verdict.UNETHICAL
    )


async def test_an_unreadable_row_is_read_apart_and_hides_no_other(store, make_pair, run_sql):
    before, after = make_pair(), make_pair()
    await store.add_many([before, after])
    # Between the two, behind the store's back: a pair by the store's rule (a human said
    # unethical), but "evil" is no verdict.
    run_sql(
        "INSERT INTO judgements"
        " (id, created_at, framework, layout, messages, answer, verdict, human_label, rewrite)"
        " VALUES ('jdg_evil', '2026-11-01T12:00:00.500000+00:00', 'three-laws', 'paper', '[]',"
        " 'sure', 'evil', 'unethical', 'ask them') RETURNING id"
    )
    evil = ("jdg_evil", "invalid_record")

    with pytest.raises(UnreadableRow) as raised:
        await store.get("jdg_evil")
    assert (raised.value.judgement_id, raised.value.reason) == evil
    page = await store.read_page()
    assert page.judgements == [after, before]
    assert [(row.judgement_id, row.reason) for row in page.unreadable] == [evil]
    assert await store.count() == 3
    pairs = await store.read_pairs()
    assert pairs.judgements == [before, after]
    assert [(row.judgement_id, row.reason) for row in pairs.unreadable] == [evil]


async def test_human_label_is_set_cleared_and_checked(store, make):
    j = make(verdict=Verdict.UNETHICAL, rewrite="better")
    await store.add(j)

    labelled = await store.set_human_label(j.id, Verdict.ETHICAL)
    assert labelled.human_label is Verdict.ETHICAL
    assert labelled == j.model_copy(update={"human_label": Verdict.ETHICAL})
    assert (await store.get(j.id)).human_label is Verdict.ETHICAL
    # The filter is on the model's verdict, which a human label does not change.
    assert await store.count(verdict=Verdict.UNETHICAL) == 1

    cleared = await store.set_human_label(j.id, None)
    assert cleared == j
    with pytest.raises(NotFound):
        await store.set_human_label("jdg_missing", Verdict.ETHICAL)


async def test_purge_deletes_only_what_is_older_than_the_cutoff(store, make, make_pair):
    old = [make(), make_pair(), make(consumed_by="run-1")]
    new = [make(), make_pair()]
    await store.add_many(old + new)
    cutoff = new[0].created_at

    assert await store.purge_older_than(cutoff) == 3
    assert await store.read_page() == RowsRead(new[::-1], [])
    for j in old:
        with pytest.raises(NotFound):
            await store.get(j.id)
    assert await store.purge_older_than(cutoff) == 0


async def test_sqlite_purge_leaves_no_trace_of_the_text_on_disk(store, make, backend):
    if backend != "sqlite":
        pytest.skip("about the SQLite file; PostgreSQL reclaims deleted rows by VACUUM")
    marker = "purple-elephant-" * 4
    await store.add(make(answer=marker, created_at=T0 - timedelta(days=400)))
    await store.add(make())
    assert await store.purge_older_than(T0) == 1
    for path in store.path.parent.iterdir():
        assert marker.encode() not in path.read_bytes(), path


async def test_ping_answers_only_while_open(store_url):
    from conscience.store import open_store

    s = open_store(store_url)
    assert await s.ping() is False
    await s.open()
    assert await s.ping() is True
    await s.close()
    assert await s.ping() is False
    with pytest.raises(StoreError, match="not open"):
        await s.get("jdg_x")
