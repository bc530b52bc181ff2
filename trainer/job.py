"""The nightly job: learn from the store's unconsumed pairs, then mark them consumed.

The order is the promise: the adapter is written first, and only then are its pairs marked, so
a run that dies, is cancelled or fails consumes nothing and the next run sees the same pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import TrainConfig
from trainer.data import read_jsonl
from trainer.loop import train

if TYPE_CHECKING:
    from conscience.store import JudgementStore

__all__ = ["TrainingStopped", "train_from_store"]


# The pairs a run started on, kept beside its checkpoint until they are marked consumed.
_SNAPSHOT = "pairs.jsonl"


class TrainingStopped(Exception):
    """The run was asked to stop (its job was cancelled); the last checkpoint stays."""


async def train_from_store(
    store: JudgementStore, config: TrainConfig, run_id: str, *, limit: int | None = None
) -> dict[str, Any]:
    """Train on ``store.unconsumed_pairs()`` and mark the pairs it learned from as ``run_id``'s.

    With no pairs it trains nothing and returns ``status: "nothing_to_learn"``. A pair the
    trainer skipped (too long, say) stays unconsumed: a later run with other settings may use it.
    Training runs in a worker thread, so the event loop (the proxy's, maybe) keeps serving.
    """
    snapshot = config.out_path / _SNAPSHOT
    if config.resume and snapshot.exists():
        # The interrupted run's own pairs, whatever was logged since: the checkpoint's data order
        # indexes exactly these.
        rows, not_text = read_jsonl(snapshot), 0
    else:
        rows, not_text = await _fetch(store, limit)
        if not rows:
            return {
                "status": "nothing_to_learn",
                "run_id": run_id,
                "pairs_total": not_text,
                "pairs_used": 0,
                "skipped": {"non_string_content": not_text} if not_text else {},
                "steps": 0,
                "consumed": 0,
            }
        _write_snapshot(snapshot, rows)

    stop = threading.Event()

    def on_step(step: int, record: dict[str, Any]) -> None:
        if stop.is_set():
            raise TrainingStopped(f"run {run_id} stopped after step {step}")

    work = asyncio.ensure_future(
        asyncio.to_thread(functools.partial(train, config, rows, on_step=on_step))
    )
    try:
        report = await asyncio.shield(work)
    except asyncio.CancelledError:
        # A thread cannot be killed: ask it to stop at its next step and wait for that, so no
        # half-written adapter outlives the cancelled job.
        stop.set()
        with contextlib.suppress(BaseException):
            await work
        raise

    report["run_id"] = run_id
    if not_text:
        skipped = report.setdefault("skipped", {})
        skipped["non_string_content"] = skipped.get("non_string_content", 0) + not_text
        report["pairs_total"] += not_text
    report["consumed"] = 0
    if report["status"] == "trained":
        adapter = config.out_path / "adapter_model.safetensors"
        if not adapter.exists():  # never mark pairs learned by an adapter that is not there
            raise RuntimeError(f"training finished but {adapter} is missing")
        report["consumed"] = await store.mark_consumed(report["used_ids"], run_id)
    # Marked (or nothing to mark): the conversations need not outlive the store's retention here.
    snapshot.unlink(missing_ok=True)
    (config.out_path / "report.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return report


async def _fetch(store: JudgementStore, limit: int | None) -> tuple[list[dict[str, Any]], int]:
    """The store's unconsumed pairs as TRL rows, and how many could not be (non-text parts)."""
    from conscience.pairs import to_trl_pair

    rows, not_text = [], 0
    for judgement in await store.unconsumed_pairs(limit=limit):
        try:
            rows.append(to_trl_pair(judgement))
        except ValueError:  # a conversation with non-text parts (an image): not for this trainer
            not_text += 1
    return rows, not_text


def _write_snapshot(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)
