"""``max_minutes``: a run stops at a step boundary, keeps what it learned, and the pairs it did
not reach wait for the next night (or for ``resume``, which finishes the plan).

The clock is fake: every optimizer step "takes" 100 s, whatever the machine does.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
store_module = pytest.importorskip("conscience.store")
pytest.importorskip("conscience.pairs")

from safetensors.torch import load_file  # noqa: E402

from conscience.trainer import budget as budget_module  # noqa: E402
from conscience.trainer import job, loop  # noqa: E402
from conscience.trainer.budget import Budget  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402
from conscience.trainer.schedule import plan_steps  # noqa: E402
from tests.trainer.test_job import _judgement  # noqa: E402

STEP = 100.0  # fake seconds per optimizer step


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, *_: object) -> None:  # an on_step callback
        self.now += STEP


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(budget_module, "monotonic", fake)
    return fake


def _config(model_dir, out, **overrides):
    settings = {"model": str(model_dir), "out_dir": str(out), "lr": 1e-2, "batch_size": 1}
    return TrainConfig(**(settings | {"progress": False} | overrides))


def test_a_step_starts_only_if_the_longest_step_so_far_still_fits(clock):
    budget = Budget(250.0)
    assert budget.allows_step()  # t=0: no step measured yet
    clock.step()
    assert budget.allows_step()  # t=100, longest 100: ends by 200 <= 250
    clock.step()
    assert not budget.allows_step()  # t=200: would end at 300
    assert Budget(None).allows_step()


def test_the_work_after_a_step_counts_against_the_budget(clock):
    budget = Budget(250.0)
    assert budget.allows_step(then=250.0)  # t=0, no step measured: 0 + 0 + 250 <= 250
    clock.step()
    assert budget.allows_step(then=50.0)  # t=100: step to 200, then 50: 250 <= 250
    assert not budget.allows_step(then=51.0)  # (the same boundary again) 251 > 250


def test_a_budgeted_run_leaves_time_for_measuring_the_finished_adapter(
    tiny_model_dir, tmp_path, rows, clock, monkeypatch
):
    """Every answer forward "takes" 10 s a pair and every step 100 s more, so a step of one
    pair is 120 s (its reference, its policy forward, the rest), and measuring the finished
    adapter after k steps is 10·k s. With 500 s the run takes 3 steps (360 s, then 30 s of
    measuring): a 4th would end at 480 s and its measurement at 520 s."""
    answer_logps = loop.answer_logps

    def timed(model, batch):
        clock.now += 10.0 * batch.n_pairs
        return answer_logps(model, batch)

    monkeypatch.setattr(loop, "answer_logps", timed)
    out = tmp_path / "measured"
    report = loop.train(
        _config(tiny_model_dir, out, max_minutes=500 / 60), rows, on_step=clock.step
    )
    assert (report["stopped"], report["steps"], report["after"]["pairs"]) == ("max_minutes", 3, 3)
    assert report["budget_seconds_used"] == pytest.approx(390.0)


def test_the_budget_stops_at_a_step_boundary_and_resume_finishes_the_plan(
    tiny_model_dir, tmp_path, rows, clock
):
    out = tmp_path / "budgeted"
    report = loop.train(
        _config(tiny_model_dir, out, max_minutes=250 / 60), rows, on_step=clock.step
    )

    plan = plan_steps(len(rows), _config(tiny_model_dir, out))
    reached = {f"pair-{i}" for micro in plan[:2] for batch in micro for i in batch}
    assert report["status"] == "trained"
    assert (report["stopped"], report["steps"], report["steps_planned"]) == ("max_minutes", 2, 6)
    assert set(report["used_ids"]) == reached and report["pairs_used"] == 2
    assert (out / "adapter_model.safetensors").exists()  # what the two steps learned
    assert (out / "checkpoint").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    # No budget now: the resumed run ends where an uninterrupted one ends.
    resumed = loop.train(_config(tiny_model_dir, out, resume=True), rows)
    assert (resumed["resumed_from"], resumed["steps"]) == (2, 6) and "stopped" not in resumed
    assert len(resumed["used_ids"]) == 6
    assert not (out / "checkpoint").exists()
    whole = tmp_path / "whole"
    loop.train(_config(tiny_model_dir, whole), rows)
    got = load_file(str(out / "adapter_model.safetensors"))
    want = load_file(str(whole / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_no_time_for_one_step_saves_nothing(tiny_model_dir, tmp_path, rows, monkeypatch):
    times = iter([0.0])  # the budget starts at 0; then the model's loading took an hour
    monkeypatch.setattr(budget_module, "monotonic", lambda: next(times, 3600.0))
    out = tmp_path / "late"
    report = loop.train(_config(tiny_model_dir, out, max_minutes=1.0), rows)
    assert (report["status"], report["steps"], report["used_ids"]) == ("out_of_time", 0, [])
    assert not (out / "adapter_model.safetensors").exists()


@pytest.fixture
async def store(tmp_path, pair_texts):
    store = store_module.open_store(str(tmp_path / "judgements.sqlite3"))
    await store.open()
    await store.add_many(
        [_judgement(i, q, bad, rewrite=good) for i, (q, good, bad) in enumerate(pair_texts)]
    )
    yield store
    await store.close()


def _with_clock(clock):
    """``job.train`` with the fake clock's step on top of the job's own on_step."""

    def train(config, rows, *, on_step):
        def both(step, record):
            clock.step()
            on_step(step, record)

        return loop.train(config, rows, on_step=both)

    return train


async def _unconsumed(store):
    return {j.id for j in (await store.read_pairs()).judgements}


async def test_a_budgeted_night_consumes_only_the_pairs_it_trained_on(
    tiny_model_dir, tmp_path, store, clock, monkeypatch
):
    monkeypatch.setattr(job, "train", _with_clock(clock))
    every = await _unconsumed(store)
    report = await job.train_from_store(
        store, _config(tiny_model_dir, tmp_path / "n1", max_minutes=350 / 60), "night-1"
    )
    assert (report["stopped"], report["steps"], report["consumed"]) == ("max_minutes", 3, 3)
    left = await _unconsumed(store)
    assert every - left == set(report["used_ids"]) and len(left) == 3
    assert (tmp_path / "n1" / "pairs.jsonl").exists()  # for a --resume of this run

    # The next night is a fresh run: it learns the three that were left, and only them.
    report = await job.train_from_store(store, _config(tiny_model_dir, tmp_path / "n2"), "night-2")
    assert set(report["used_ids"]) == left and report["consumed"] == 3
    assert await _unconsumed(store) == set()


async def test_a_resumed_budgeted_night_consumes_the_rest_once(
    tiny_model_dir, tmp_path, store, clock, monkeypatch
):
    monkeypatch.setattr(job, "train", _with_clock(clock))
    out = tmp_path / "n1"
    first = await job.train_from_store(
        store, _config(tiny_model_dir, out, max_minutes=250 / 60), "night-1"
    )
    assert first["consumed"] == 2
    resumed = await job.train_from_store(
        store, _config(tiny_model_dir, out, resume=True), "night-1"
    )
    assert resumed["resumed_from"] == 2 and "stopped" not in resumed
    assert resumed["consumed"] == 4  # the four it had not reached; the first two stay marked
    assert await _unconsumed(store) == set()
    assert not (out / "pairs.jsonl").exists() and not (out / "checkpoint").exists()
