"""The console's search (``conscience/store/search.py``) on both backends: every filter, the
text search (case-insensitive, wildcards literal), newest first, and its count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conscience.judgement import Judgement
from conscience.labels import Action, Verdict
from conscience.store.search import Search

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROWS = [
    Judgement(
        created_at=NOW,
        framework="f",
        layout="paper",
        model="m1",
        messages=[{"role": "user", "content": "Grow TOMATOES 100%"}],
        answer="Water them.",
        verdict=Verdict.ETHICAL,
        action=Action.PASSED,
        client_key_id="key_aaaaaaaaaaaa",
    ),
    Judgement(
        created_at=NOW + timedelta(seconds=1),
        framework="g",
        layout="paper",
        model="m2",
        messages=[{"role": "user", "content": "Pick a lock"}],
        answer="No.",
        rewrite="Call a locksmith_",
        verdict=Verdict.UNETHICAL,
        action=Action.REWRITTEN,
        review_only=True,
    ),
]


async def test_search(store) -> None:
    await store.add_many(ROWS)
    found = {}
    for name, search in {
        "all": Search(),
        "tomato": Search(text="tomatoes"),
        "percent": Search(text="100%"),
        "wild": Search(text="1%0"),
        "underscore": Search(text="h_"),
        "backslash": Search(text="\\"),
        "rewrite": Search(text="LOCKSMITH"),
        "m2": Search(model="m2", action=Action.REWRITTEN, framework="g"),
        "verdict": Search(verdict=Verdict.ETHICAL),
        "key": Search(client_key_id="key_aaaaaaaaaaaa"),
        "review": Search(review_only=True),
        "completion": Search(review_only=False),
        "since": Search(since=NOW + timedelta(seconds=1)),
        "until": Search(until=NOW + timedelta(seconds=1)),
        "none": Search(verdict=Verdict.NEUTRAL),
        "labelled": Search(labelled=True),
        "unlabelled": Search(labelled=False),
    }.items():
        page = await store.search(search, limit=10)
        assert await store.search_count(search) == len(page.judgements), name
        found[name] = [j.answer for j in page.judgements]
    assert found["all"] == ["No.", "Water them."]  # newest first
    assert found["tomato"] == ["Water them."] and found["percent"] == ["Water them."]
    assert found["wild"] == [] and found["underscore"] == ["No."] and found["backslash"] == []
    assert found["rewrite"] == ["No."] and found["m2"] == ["No."]
    assert found["verdict"] == ["Water them."] and found["key"] == ["Water them."]
    assert found["review"] == ["No."] and found["completion"] == ["Water them."]
    assert found["since"] == ["No."] and found["until"] == ["Water them."]
    assert found["none"] == [] and found["labelled"] == []
    assert found["unlabelled"] == ["No.", "Water them."]
    await store.set_human_label(ROWS[0].id, Verdict.UNETHICAL)
    assert await store.search_count(Search(labelled=True)) == 1
    second = await store.search(Search(), limit=1, offset=1)
    assert [j.answer for j in second.judgements] == ["Water them."]


async def test_the_admin_filter_on_the_client_key(store) -> None:
    await store.add_many(ROWS)
    assert await store.count(client_key_id="key_aaaaaaaaaaaa") == 1
    (row,) = (await store.read_page(client_key_id="key_aaaaaaaaaaaa")).judgements
    assert row.client_key_id == "key_aaaaaaaaaaaa" and row.review_only is False
    (other,) = (await store.read_page(framework="g")).judgements
    assert other.review_only is True and other.client_key_id is None
