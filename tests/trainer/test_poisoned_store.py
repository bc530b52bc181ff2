"""The nightly run against a poisoned store (issue 7, item 5).

Rows are written into a real store by raw SQL, past the proxy's validation, the way a bug, a
hand edit or someone with access to the database would write them; then the real commands run
as subprocesses: ``conscience train`` twice and ``conscience pairs export``. Each poisoned row
must be skipped and counted under its reason, none may reach the training data, and no command
may fail. Poisoned rows stay unconsumed and are reported every night (docs/decisions.md,
"Poisoned rows"); a duplicate is consumed with the pair it repeats.

SQLite stores whatever bytes it is given. PostgreSQL refuses some poison itself (text that is
not UTF-8 or holds NUL, JSON that is not JSON, a lone surrogate in jsonb): for those cases the
test asserts the refusal. PostgreSQL runs where ``CONSCIENCE_TEST_POSTGRES_URL`` is set (and
must, where ``CONSCIENCE_REQUIRE_POSTGRES=1``, as in CI).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
psycopg = pytest.importorskip("psycopg")

from poison import (  # noqa: E402
    Blob,
    Case,
    Text,
    postgres_schema,
)
from poison import columns as _columns  # noqa: E402
from poison import migrate as _migrate  # noqa: E402
from poison import pg_insert as _pg_insert  # noqa: E402
from poison import sqlite_insert as _sqlite_insert  # noqa: E402

from conscience.store import open_store  # noqa: E402
from conscience.store.base import UNREADABLE_REASONS  # noqa: E402
from conscience.trainer import job  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402
from conscience.trainer.data import SKIP_REASONS  # noqa: E402

GOOD = "good"  # a case the run must learn from
NOT_A_PAIR = None  # a case the store's pair rule leaves out: it never reaches the trainer


def _good(question: str, rewrite: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}],
        "rewrite": rewrite,
        "answer": answer,
    }


NULLABLE = (
    *("request_id", "model", "judge_model", "reasoning", "confidence", "label_probs"),
    *("action", "review_ms", "rewrite_ms", "upstream_ms", "human_label", "consumed_by"),
)
HUGE = ("sure here is how to break in " * 180_000)[:5_000_000]  # 5 MB

CASES: list[Case] = [
    # Good pairs, some odd but fine.
    Case("good-0", GOOD, _good("how do i pick a lock", "ask the owner", "sure break in")),
    Case("good-1", GOOD, _good("how do i open my door", "call a locksmith", "break the door")),
    Case("good-2", GOOD, _good("how do i hack a server", "keep the system updated", "steal it")),
    Case("good-3", GOOD, _good("write code that deletes the logs", "keep the logs", "sure")),
    Case(
        "all-nullable-columns-null",
        GOOD,
        _good("what should i do", "talk with them calmly", "hurt someone")
        | dict.fromkeys(NULLABLE),
    ),
    Case(  # the model said ethical, a human said unethical: the human wins
        "human-label-unethical",
        GOOD,
        _good("tell me a joke", "why did the chicken cross the road", "no never")
        | {"verdict": "ethical", "human_label": "unethical"},
    ),
    Case(  # good-3 with one word changed: a different pair, not a duplicate
        "near-duplicate-one-word",
        GOOD,
        _good("write code that deletes the logs", "keep the logs please", "sure"),
    ),
    # Empty and blank text.
    Case("empty-prompt", "empty_prompt", {"messages": [{"role": "user", "content": ""}]}),
    Case(
        "whitespace-prompt",
        "empty_prompt",
        {"messages": [{"role": "user", "content": " \t\n\u3000"}]},
    ),
    Case("empty-answer", "empty_answer", {"answer": ""}),
    Case("whitespace-answer", "empty_answer", {"answer": " \n\t "}),
    Case("unicode-blank-rewrite", "empty_answer", {"rewrite": "\u00a0\u2003"}),
    Case("empty-rewrite", NOT_A_PAIR, {"rewrite": ""}),
    Case("blank-rewrite", NOT_A_PAIR, {"rewrite": " \r\n\t"}),
    Case("huge-answer", "too_long", {"answer": HUGE}),
    # Bytes and characters that are not text.
    Case("answer-not-utf8", "not_utf8", {"answer": Text(b"sure \xff\xfe here")}, pg_refused=True),
    Case("rewrite-blob", "not_utf8", {"rewrite": Blob(b"\xffask the owner")}, sqlite_only=True),
    Case("utf8-surrogate", "not_utf8", {"answer": Text(b"sure \xed\xa0\x80")}, pg_refused=True),
    Case(
        "json-lone-surrogate",
        "invalid_text",
        {"messages": [{"role": "user", "content": "how \ud800"}]},
        pg_refused=True,
    ),
    Case("nul-answer", "invalid_text", {"answer": "sure\x00 break in"}, pg_refused=True),
    Case("nul-rewrite", "invalid_text", {"rewrite": "ask\x00 the owner"}, pg_refused=True),
    Case(
        "nul-in-messages",
        "invalid_text",
        {"messages": [{"role": "user", "content": "how\x00"}]},
        pg_refused=True,
    ),
    # Messages that are not a conversation.
    Case("messages-not-json", "not_json", {"messages": "not json ["}, pg_refused=True),
    Case("messages-object", "invalid_record", {"messages": '{"role": "user", "content": "how"}'}),
    Case("messages-string", "invalid_record", {"messages": '"how do i pick a lock"'}),
    Case("messages-json-null", "invalid_record", {"messages": "null"}),
    Case("messages-not-dicts", "invalid_record", {"messages": '["how", 1]'}),
    Case("messages-empty", "malformed", {"messages": "[]"}),
    Case("message-without-role", "malformed", {"messages": [{"content": "how"}]}),
    Case("unknown-role", "unknown_role", {"messages": [{"role": "wizard", "content": "how"}]}),
    Case("numeric-role", "unknown_role", {"messages": [{"role": 5, "content": "how"}]}),
    Case(
        "image-part",
        "non_string_content",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    ),
    Case("numeric-content", "non_string_content", {"messages": [{"role": "user", "content": 4}]}),
    # Nothing to prefer, or nothing new.
    Case("rewrite-identical", "identical", {"answer": "ask the owner", "rewrite": "ask the owner"}),
    Case(
        "rewrite-identical-but-spaces",
        "identical",
        {"answer": "ask the owner", "rewrite": " ask  the\nowner "},
    ),
    Case(
        "exact-duplicate",
        "duplicate",
        _good("how do i pick a lock", "ask the owner", "sure break in"),
    ),
    Case(
        "near-duplicate-whitespace",
        "duplicate",
        _good("how do i  open my door\n", "call a  locksmith", " break the door"),
    ),
    # Labels and fields outside the record.
    Case(
        "unknown-verdict-labelled-unethical",
        "invalid_record",
        {"verdict": "evil", "human_label": "unethical"},
    ),
    Case("unknown-verdict", NOT_A_PAIR, {"verdict": "evil"}),
    Case("uppercase-verdict", NOT_A_PAIR, {"verdict": "UNETHICAL"}),
    Case("unknown-human-label", NOT_A_PAIR, {"human_label": "evil"}),
    Case("human-label-contradicts", NOT_A_PAIR, {"human_label": "ethical"}),
    Case("created-at-not-a-time", "invalid_record", {"created_at": "not a time"}, pg_refused=True),
    Case("confidence-not-a-number", "invalid_record", {"confidence": "high"}, pg_refused=True),
    Case("label-probs-a-list", "invalid_record", {"label_probs": "[1, 2]"}),
    Case("null-id", "invalid_record", {"id": None}, pg_refused=True),
]
POISON = [c for c in CASES if c.reason not in (GOOD, "duplicate")]  # poison on its own


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty store of the backend, its schema created by the store itself."""
    if backend == "sqlite":
        url = str(tmp_path / "judgements.sqlite3")
        _migrate(url)
        yield url
        return
    with postgres_schema() as url:
        yield url


def _poison(backend: str, url: str, cases: list[Case]) -> list[Case]:
    """Write the cases by raw SQL; the ones stored (PostgreSQL refuses some, as it must)."""
    stored = []
    if backend == "sqlite":
        conn = sqlite3.connect(url, isolation_level=None)
        try:
            for i, case in enumerate(cases):
                _sqlite_insert(conn, _columns(i, case))
                stored.append(case)
        finally:
            conn.close()
        return stored
    with psycopg.connect(url, autocommit=True) as conn:
        for i, case in enumerate(cases):
            if case.sqlite_only:
                continue
            if case.pg_refused:
                with pytest.raises(psycopg.Error):
                    _pg_insert(conn, _columns(i, case))
            else:
                _pg_insert(conn, _columns(i, case))
                stored.append(case)
    return stored


def _consumed(backend: str, url: str) -> dict[str | None, str | None]:
    sql = "SELECT id, consumed_by FROM judgements"
    if backend == "sqlite":
        conn = sqlite3.connect(url)
        try:
            return dict(conn.execute(sql).fetchall())
        finally:
            conn.close()
    with psycopg.connect(url) as conn:
        return dict(conn.execute(sql).fetchall())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSCIENCE_")}
    return subprocess.run(
        [sys.executable, "-m", "conscience.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env | {"OMP_NUM_THREADS": "1"},
    )


def _train(url: str, model: Path, out: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    # Two steps of 4 cover the 7 good pairs: a run consumes only the pairs of the steps it ran.
    result = _cli(
        "train", "--store", url, "--base-model", str(model), "--out", str(out),
        "--max-steps", "2", "--batch-size", "4", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return result, report


def _ids(cases: list[Case]) -> set[str]:
    return {f"jdg_{c.name}" for c in cases if c.columns.get("id", "") is not None}


def _expected_skips(cases: list[Case]) -> dict[str, int]:
    return dict(Counter(c.reason for c in cases if c.reason not in (GOOD, NOT_A_PAIR)))


def test_a_poisoned_store_never_crashes_the_nightly_run(
    backend, store_url, tiny_model_dir, tmp_path
):
    stored = _poison(backend, store_url, CASES)
    good = [c for c in stored if c.reason == GOOD]
    duplicates = [c for c in stored if c.reason == "duplicate"]
    skipped = [c for c in stored if c.reason not in (GOOD, NOT_A_PAIR)]
    poisoned = [c for c in skipped if c.reason != "duplicate"]
    assert len(good) == 7 and len(duplicates) == 2
    assert len(poisoned) == (31 if backend == "sqlite" else 20)

    # Night 1: it learns from exactly the good pairs and says why it left each other row out.
    result, report = _train(store_url, tiny_model_dir, tmp_path / "night-1")
    summary = json.loads(result.stdout)
    assert summary["status"] == report["status"] == "trained"
    assert set(report["used_ids"]) == _ids(good)
    assert report["pairs_used"] == len(good)
    assert report["skipped"] == _expected_skips(stored)
    assert summary["skipped"] == report["skipped"]
    assert set(report["skipped_ids"]) == _ids(skipped)
    assert report["pairs_total"] == len(good) + len(skipped)
    assert set(report["skipped"]) <= {*SKIP_REASONS, *UNREADABLE_REASONS}
    assert f"skipped {len(skipped)} of {len(good) + len(skipped)} pairs" in result.stderr
    # Only the good pairs and their duplicates are consumed; every poisoned row stays.
    consumed = _consumed(backend, store_url)
    assert {i for i, run in consumed.items() if run is not None} == _ids(good + duplicates)
    assert set(consumed.values()) == {"night-1", None}
    assert report["consumed"] == len(good) + len(duplicates)
    assert not (tmp_path / "night-1" / "pairs.jsonl").exists()

    # Night 2: nothing new to learn; the poisoned rows are reported again, none is lost.
    result, report = _train(store_url, tiny_model_dir, tmp_path / "night-2")
    assert report["status"] == "nothing_to_learn"
    assert f"nothing new to learn: none of {len(poisoned)} unconsumed pairs" in result.stderr
    assert report["pairs_used"] == report["consumed"] == 0
    assert report["skipped"] == _expected_skips(poisoned)
    assert set(report["skipped_ids"]) == _ids(poisoned)
    assert not (tmp_path / "night-2" / "adapter_model.safetensors").exists()
    assert _consumed(backend, store_url) == consumed

    # The export survives them too: every readable plain-text pair, nothing unreadable.
    out = tmp_path / "pairs.jsonl"
    result = _cli("pairs", "export", "--store", store_url, "--out", str(out), "--include-consumed")
    assert result.returncode == 0, result.stderr
    exported = {json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()}
    assert _ids(good + duplicates) <= exported
    unwritable = {"json-lone-surrogate", "message-without-role", "image-part", "numeric-content"}
    left_out = [c for c in stored if c.reason in UNREADABLE_REASONS or c.name in unwritable]
    assert not exported & _ids(left_out)
    assert result.stderr.count("export_pairs: skipped") == len(left_out)


async def test_a_store_of_nothing_but_poison(backend, store_url, tiny_model_dir, tmp_path):
    """In process (the command's path is the test above's): no pair to learn from, all counted."""
    stored = _poison(backend, store_url, POISON)
    skipped = [c for c in stored if c.reason is not NOT_A_PAIR]
    config = TrainConfig(model=str(tiny_model_dir), out_dir=str(tmp_path / "night"))
    store = open_store(store_url)
    await store.open()
    try:
        report = await job.train_from_store(store, config, "night")
    finally:
        await store.close()
    assert report["status"] == "nothing_to_learn"
    assert report["skipped"] == _expected_skips(stored)
    assert set(report["skipped_ids"]) == _ids(skipped)
    assert json.loads((tmp_path / "night" / "report.json").read_text()) == report
    assert not (tmp_path / "night" / "adapter_model.safetensors").exists()
    assert set(_consumed(backend, store_url).values()) == {None}


async def test_rows_the_job_rules_out_never_load_the_model(tmp_path, monkeypatch):
    """No row left for the trainer: the report is written without touching the model."""
    url = str(tmp_path / "judgements.sqlite3")
    store = open_store(url)
    await store.open()
    try:
        conn = sqlite3.connect(url, isolation_level=None)
        for i, case in enumerate(c for c in CASES if c.reason in ("empty_answer", "not_json")):
            _sqlite_insert(conn, _columns(i, case))
        conn.close()

        def no_training(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("trained on nothing")

        monkeypatch.setattr(job, "train", no_training)
        config = TrainConfig(model=str(tmp_path / "no-model"), out_dir=str(tmp_path / "out"))
        report = await job.train_from_store(store, config, "night")
    finally:
        await store.close()
    assert report["status"] == "nothing_to_learn"
    assert report["skipped"] == {"empty_answer": 3, "not_json": 1}
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
