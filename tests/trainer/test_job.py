"""train_from_store on the real SQLite store: pairs are consumed only once the adapter exists."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("torch")
store_module = pytest.importorskip("conscience.store")
pytest.importorskip("conscience.pairs")

from conscience.judgement import Judgement  # noqa: E402
from conscience.labels import Verdict  # noqa: E402
from conscience.trainer import job, loop  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _judgement(i, question, answer, verdict=Verdict.UNETHICAL, rewrite=None, **extra):
    return Judgement(
        created_at=T0 + timedelta(minutes=i),
        framework="three-laws",
        layout="paper",
        messages=[{"role": "user", "content": question}],
        answer=answer,
        verdict=verdict,
        rewrite=rewrite,
        **extra,
    )


@pytest.fixture
async def store(tmp_path):
    store = store_module.open_store(str(tmp_path / "judgements.sqlite3"))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def filled(store, pair_texts):
    """Six pairs, plus judgements that are not pairs and pairs the trainer cannot use."""
    pairs = [_judgement(i, q, bad, rewrite=good) for i, (q, good, bad) in enumerate(pair_texts)]
    others = [
        _judgement(10, "tell me a joke", "why", Verdict.ETHICAL),
        _judgement(11, "tell me a joke", "one two", Verdict.NEUTRAL),  # neutral: not a pair
        _judgement(12, "how do i pick a lock", "sure", Verdict.UNETHICAL),  # no rewrite
        # The model said unethical, a human said ethical: the human wins, not a pair.
        _judgement(13, "tell me a joke", "no", rewrite="why", human_label=Verdict.ETHICAL),
    ]
    unusable = [
        _judgement(20, "how do i pick a lock", "ask the owner", rewrite="ask the owner"),
        Judgement(
            created_at=T0 + timedelta(minutes=21),
            framework="three-laws",
            layout="paper",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            answer="sure",
            verdict=Verdict.UNETHICAL,
            rewrite="no",
        ),
    ]
    await store.add_many(pairs + others + unusable)
    return {"pairs": pairs, "others": others, "unusable": unusable}


def _config(model_dir, out_dir, **overrides):
    settings = {
        "model": str(model_dir),
        "out_dir": str(out_dir),
        "lr": 1e-2,
        "batch_size": 3,
        "epochs": 2,
        "progress": False,
    }
    return TrainConfig(**(settings | overrides))


async def test_pairs_are_consumed_only_after_the_adapter_is_written(
    tiny_model_dir, tmp_path, store, filled, monkeypatch
):
    out = tmp_path / "adapter"
    seen_at_marking = []
    mark = store.mark_consumed

    async def mark_and_check(ids, run_id):
        seen_at_marking.append((out / "adapter_model.safetensors").exists())
        return await mark(ids, run_id)

    monkeypatch.setattr(store, "mark_consumed", mark_and_check)
    report = await job.train_from_store(store, _config(tiny_model_dir, out), "run-1")

    assert seen_at_marking == [True]
    assert report["status"] == "trained"
    assert report["run_id"] == "run-1"
    assert report["pairs_used"] == 6
    assert report["consumed"] == 6
    assert report["pairs_total"] == 8  # the store's 8 pairs; non-pairs never reach the trainer
    assert report["skipped"] == {"identical": 1, "non_string_content": 1}
    for j in filled["pairs"]:
        assert (await store.get(j.id)).consumed_by == "run-1"
    for j in filled["others"] + filled["unusable"]:
        assert (await store.get(j.id)).consumed_by is None
    # What is left for the next run: only the pairs this trainer could not use.
    left = {j.id for j in (await store.read_pairs()).judgements}
    assert left == {j.id for j in filled["unusable"]}


async def test_no_pairs_means_no_training(tiny_model_dir, tmp_path, store, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained on nothing")

    monkeypatch.setattr(job, "train", no_training)
    await store.add(_judgement(1, "tell me a joke", "why", Verdict.ETHICAL))
    report = await job.train_from_store(store, _config(tiny_model_dir, tmp_path / "a"), "run-2")
    assert report["status"] == "nothing_to_learn"
    assert report["consumed"] == 0
    assert not (tmp_path / "a").exists()


async def test_a_failed_run_consumes_nothing(tiny_model_dir, tmp_path, store, filled, monkeypatch):
    def crash_at_step_2(config, rows, *, on_step):
        def crash(step, record):
            on_step(step, record)
            if step == 2:
                raise RuntimeError("killed")

        return loop.train(config, rows, on_step=crash)

    monkeypatch.setattr(job, "train", crash_at_step_2)
    with pytest.raises(RuntimeError, match="killed"):
        await job.train_from_store(store, _config(tiny_model_dir, tmp_path / "a"), "run-3")
    assert len((await store.read_pairs()).judgements) == 8
    assert not (tmp_path / "a" / "adapter_model.safetensors").exists()


async def test_a_cancelled_job_stops_training_and_consumes_nothing(
    tiny_model_dir, tmp_path, store, filled, monkeypatch
):
    stepped = threading.Event()
    steps = []

    def slow_train(config, rows, *, on_step):
        def slow(step, record):
            steps.append(step)
            stepped.set()
            time.sleep(0.1)  # long enough for the cancellation to land mid-run
            on_step(step, record)

        return loop.train(config, rows, on_step=slow)

    monkeypatch.setattr(job, "train", slow_train)
    config = _config(tiny_model_dir, tmp_path / "a", epochs=50, checkpoint_every=1)
    task = asyncio.create_task(job.train_from_store(store, config, "run-4"))
    await asyncio.to_thread(stepped.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(steps) < 10  # it stopped, it did not run on for the 100 planned steps
    assert len((await store.read_pairs()).judgements) == 8
    assert not (tmp_path / "a" / "adapter_model.safetensors").exists()
    assert (tmp_path / "a" / "checkpoint").exists()  # a later resume=True run continues here


async def test_a_resumed_job_trains_on_the_pairs_it_started_with(
    tiny_model_dir, tmp_path, store, filled, monkeypatch
):
    out = tmp_path / "a"
    settings = {"batch_size": 2, "epochs": 2, "checkpoint_every": 2}

    def crash_at_step_3(config, rows, *, on_step):
        def crash(step, record):
            if step == 3:
                raise RuntimeError("killed")

        return loop.train(config, rows, on_step=crash)

    monkeypatch.setattr(job, "train", crash_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        await job.train_from_store(store, _config(tiny_model_dir, out, **settings), "run-5")
    assert (out / "pairs.jsonl").exists()  # the pairs the run started on, beside its checkpoint

    # A new pair is logged before the resume: it must not shift the interrupted run's data.
    late = _judgement(30, "how do i pick a lock", "sure", rewrite="ask the owner")
    await store.add(late)
    monkeypatch.setattr(job, "train", loop.train)
    config = _config(tiny_model_dir, out, resume=True, **settings)
    report = await job.train_from_store(store, config, "run-5")
    assert report["resumed_from"] == 2
    assert report["consumed"] == 6
    assert {j.id for j in (await store.read_pairs()).judgements} == {
        late.id,
        *(j.id for j in filled["unusable"]),
    }
    assert not (out / "pairs.jsonl").exists()  # marked: the conversations are not kept here
