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


@pytest.mark.slow
async def test_two_processes_train_what_one_does_with_twice_the_accumulation(
    tiny_model_dir, tmp_path, pair_texts
):
    # The same stored pairs twice: one store for each way of training.
    one_store = await _store(tmp_path / "one.sqlite3", pair_texts)
    await one_store.close()
    for path in tmp_path.glob("one.sqlite3*"):
        shutil.copy(path, tmp_path / path.name.replace("one", "two"))

    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "conscience.cli", "train", "--store", str(tmp_path / "two.sqlite3"),
        "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "two"), "--run-id", "two",
        "--grad-accum", "1", "--quiet",
        *(f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()),
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
            progress=False, **SETTINGS,
        )  # fmt: skip
        one = await job.train_from_store(store, config, "one")
    finally:
        await store.close()

    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["processes"] == 2 and summary["status"] == "trained"
    assert (two["steps"], two["pairs_used"], two["consumed"]) == (one["steps"], 6, 6) == (6, 6, 6)
    assert summary["consumed"] == 6
    got = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    want = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        assert not torch.equal(want[name], torch.zeros_like(want[name])) or "lora_A" in name
        relative = float((got[name] - want[name]).norm() / want[name].norm())
        assert relative <= 1e-4, f"{name}: {relative:.2e}"
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
