"""Two training processes under torchrun (gloo, CPU) learn the adapter of one process with
twice the gradient accumulation, and only rank 0 writes and marks pairs consumed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
store_module = pytest.importorskip("conscience.store")
pytest.importorskip("conscience.pairs")

from safetensors.torch import load_file  # noqa: E402

from conscience.trainer import job  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402
from conscience.trainer.distributed import Ranks  # noqa: E402
from tests.trainer.test_job import _judgement  # noqa: E402

SETTINGS = {"lr": 1e-2, "batch_size": 1, "epochs": 2, "dtype": "float32", "device": "cpu"}


async def _store(path, pair_texts):
    store = store_module.open_store(str(path))
    await store.open()
    await store.add_many(
        [_judgement(i, q, bad, rewrite=good) for i, (q, good, bad) in enumerate(pair_texts)]
    )
    return store


async def _train_both_ways(tiny_model_dir, tmp_path, pair_texts, *flags: str, **settings):
    """The same stored pairs trained by two processes under torchrun with ``flags`` (one
    micro-batch each a step) and by one process with twice the accumulation: (the two
    processes' printed summary, their report, the one process's report, their log)."""
    one_store = await _store(tmp_path / "one.sqlite3", pair_texts)
    await one_store.close()
    for path in tmp_path.glob("one.sqlite3*"):
        shutil.copy(path, tmp_path / path.name.replace("one", "two"))
    settings = SETTINGS | settings
    limit = settings.pop("limit", None)

    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "conscience.cli", "train", "--store", str(tmp_path / "two.sqlite3"),
        "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "two"), "--run-id", "two",
        "--grad-accum", "1", "--quiet", *flags,
        *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items()),
        *([f"--limit={limit}"] if limit else []),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSCIENCE_")}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env | {"OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (summary,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    store = store_module.open_store(str(tmp_path / "one.sqlite3"))
    await store.open()
    try:
        config = TrainConfig(
            model=str(tiny_model_dir), out_dir=str(tmp_path / "one"), grad_accum=2,
            progress=False, **settings,
        )  # fmt: skip
        one = await job.train_from_store(store, config, "one", limit=limit)
    finally:
        await store.close()
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    return summary, two, one, done.stderr


def _same_adapter(tmp_path) -> None:
    got = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    want = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        assert not torch.equal(want[name], torch.zeros_like(want[name])) or "lora_A" in name
        relative = float((got[name] - want[name]).norm() / want[name].norm())
        assert relative <= 1e-4, f"{name}: {relative:.2e}"


@pytest.mark.slow
async def test_two_processes_train_what_one_does_with_twice_the_accumulation(
    tiny_model_dir, tmp_path, pair_texts
):
    summary, two, one, _ = await _train_both_ways(tiny_model_dir, tmp_path, pair_texts)
    assert two["processes"] == 2 and summary["status"] == "trained"
    assert (two["steps"], two["pairs_used"], two["consumed"]) == (one["steps"], 6, 6) == (6, 6, 6)
    assert summary["consumed"] == 6
    _same_adapter(tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    assert [s["pairs"] for s in steps] == [2] * 6  # each step: one pair on each rank
    assert steps[-1]["loss"] == pytest.approx(one["final"]["loss"], rel=1e-4)

    # Every pair consumed, by the one run, once.
    store = store_module.open_store(str(tmp_path / "two.sqlite3"))
    await store.open()
    try:
        assert (await store.read_pairs()).judgements == []
        consumed = {(await store.get(i)).consumed_by for i in two["used_ids"]}
        assert consumed == {"two"}
    finally:
        await store.close()


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory, tokenizer_factory):
    """The tiny random Llama with its LM head tied to the embeddings."""
    from conscience.testing.models import build_random_llama

    path = tmp_path_factory.mktemp("tiny-tied")
    tokenizer = tokenizer_factory()
    tokenizer.save_pretrained(path)
    build_random_llama("tiny-tied", tokenizer).save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_model_dir", "tied_model_dir"])
async def test_two_processes_sharing_the_base_train_what_one_does(
    model, request, tmp_path, pair_texts
):
    # Five pairs, one epoch: steps of 2, 2 and 1 micro-batches; in the last, rank 1 has no pair
    # and runs a pass that moves nothing so that rank 0's passes can gather its weights.
    summary, two, one, log = await _train_both_ways(
        request.getfixturevalue(model), tmp_path, pair_texts, "--shard-base", epochs=1, limit=5
    )
    assert two["processes"] == 2 and summary["status"] == "trained"
    assert (two["steps"], two["pairs_used"], two["consumed"]) == (one["steps"], 5, 5) == (3, 5, 5)
    _same_adapter(tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    assert [s["pairs"] for s in steps] == [2, 2, 1]
    assert steps[-1]["loss"] == pytest.approx(one["final"]["loss"], rel=1e-4)
    assert two["after"]["pairs"] == one["after"]["pairs"] == 5
    assert two["after"]["reward_margin"] == pytest.approx(one["after"]["reward_margin"], rel=1e-3)
    # Rank 0 held about half of the base: the blocks, embeddings and norm halved, the head
    # whole (tied: a whole copy of the matrix the embeddings shard).
    held, whole = two["base_bytes"]["rank0"], two["base_bytes"]["whole"]
    assert whole / 2 <= held < whole * 0.7, two["base_bytes"]
    # The ranks loaded the whole base one after the other: rank 1 only once rank 0 kept its part.
    events = [line.split("conscience.trainer")[-1] for line in log.splitlines() if "rank " in line]
    loading = [i for i, e in enumerate(events) if "loading the base" in e]
    holding = [i for i, e in enumerate(events) if "holds" in e]
    assert len(loading) == len(holding) == 2 and loading[0] < holding[0] < loading[1], events


def test_ranks_take_their_turn_one_after_another(monkeypatch):
    import threading
    import time

    world = 3
    gate = threading.Barrier(world, timeout=10)
    monkeypatch.setattr(Ranks, "barrier", lambda self: gate.wait())
    order = []

    def rank(r):
        with Ranks(r, world).in_turn():
            order.append(("in", r))
            time.sleep(0.05)  # a rank let in too early would enter while this one is inside
            order.append(("out", r))

    threads = [threading.Thread(target=rank, args=(r,)) for r in reversed(range(world))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == [(event, r) for r in range(world) for event in ("in", "out")]


def test_idle_passes_even_out_a_short_step():
    three = [[0], [1], [2]]
    assert [Ranks(r, 2).idle_passes(three) for r in (0, 1)] == [0, 1]
    assert [Ranks(r, 3).idle_passes(three) for r in (0, 1, 2)] == [0, 0, 0]
    assert [Ranks(r, 4).idle_passes(three) for r in range(4)] == [0, 0, 0, 1]
    assert Ranks().idle_passes(three) == 0


async def test_sharding_on_one_process_is_refused(tiny_model_dir, tmp_path, rows):
    from conscience.errors import ConfigError
    from conscience.trainer.loop import train

    config = TrainConfig(model=str(tiny_model_dir), out_dir=str(tmp_path), shard_base=True)
    with pytest.raises(ConfigError, match="torchrun"):
        train(config, rows)


async def test_a_rank_other_than_0_marks_nothing_and_writes_nothing(
    tiny_model_dir, tmp_path, pair_texts, monkeypatch
):
    store = await _store(tmp_path / "s.sqlite3", pair_texts)
    rows_seen = []

    def fake_broadcast(self, value):
        return rank0_value  # what rank 0 would have sent

    def trained(config, rows, *, on_step):
        rows_seen.append(rows)
        return {"status": "trained", "used_ids": [r["id"] for r in rows], "steps": 1}

    async def no_marking(ids, run_id):
        raise AssertionError("rank 1 marked pairs consumed")

    try:
        rank0_value = await job._fetch(store, 1024, None)
        monkeypatch.setattr(job, "join", lambda: Ranks(rank=1, world=2))
        monkeypatch.setattr(Ranks, "broadcast", fake_broadcast)
        monkeypatch.setattr(job, "train", trained)
        monkeypatch.setattr(store, "mark_consumed", no_marking)
        monkeypatch.setattr(store, "read_pairs", no_marking)  # rank 1 does not read either
        out = tmp_path / "rank1"
        report = await job.train_from_store(
            store, TrainConfig(model=str(tiny_model_dir), out_dir=str(out)), "night"
        )
    finally:
        await store.close()
    assert report["status"] == "trained" and len(rows_seen[0]) == 6
    assert not out.exists() or list(out.iterdir()) == []  # no snapshot, no report
