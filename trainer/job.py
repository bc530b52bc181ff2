"""The nightly job: learn from the store's unconsumed pairs, then mark them consumed.

The order is the promise: the adapter is written first, and only then are its pairs marked, so
a run that dies, is cancelled or fails consumes nothing and the next run sees the same pairs.
A run that stops for its time budget (``max_minutes``) marks only the pairs of the steps it
trained; the others stay unconsumed for the next night (or for ``resume``, which finishes the
stopped run's plan from its checkpoint and its ``pairs.jsonl``).

Bad rows never stop the run. A row the store cannot read, a conversation that is not plain
text and a pair that fails the trainer's checks are skipped, counted by reason in the report
(``skipped``, ids in ``skipped_ids``) and left unconsumed, so every night reports them until
someone labels, fixes or purges them. A duplicate (the same pair, whitespace aside) is skipped
and consumed with the pair it repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conscience.trainer.config import TrainConfig
from conscience.trainer.data import check_pair, drop_duplicates, read_jsonl
from conscience.trainer.distributed import join
from conscience.trainer.loop import train
from conscience.trainer.metrics import write_report

if TYPE_CHECKING:
    from conscience.store import JudgementStore

__all__ = ["TrainingStopped", "train_from_store"]


# The pairs a run started on, kept beside its checkpoint until they are marked consumed.
_SNAPSHOT = "pairs.jsonl"

log = logging.getLogger(__name__)


@dataclass
class _Skipped:
    """Store rows left out before training: counts by reason, and their ids."""

    counts: Counter[str] = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)

    def add(self, reason: str, row_id: str | None) -> None:
        self.counts[reason] += 1
        if row_id is not None:
            self.ids.append(row_id)


class TrainingStopped(Exception):
    """The run was asked to stop (its job was cancelled); the last checkpoint stays."""


async def train_from_store(
    store: JudgementStore, config: TrainConfig, run_id: str, *, limit: int | None = None
) -> dict[str, Any]:
    """Train on the store's unconsumed pairs and mark the pairs it learned from as ``run_id``'s.

    With no usable pair it trains nothing and returns ``status: "nothing_to_learn"``. A pair
    skipped here or by the trainer (unreadable, empty, too long, say) stays unconsumed; the
    report counts it under its reason. ``limit`` caps the usable pairs a run takes, so bad rows
    at the head of the queue cannot starve it. Training runs in a worker thread, so the event
    loop (the proxy's, maybe) keeps serving.
    """
    snapshot = config.out_path / _SNAPSHOT
    ranks = join()  # several training processes: rank 0 reads, marks and writes for them all
    fresh = not (config.resume and snapshot.exists())
    if not ranks.main:
        rows, skipped = [], _Skipped()
    elif not fresh:
        # The interrupted run's own pairs, whatever was logged since: the checkpoint's data order
        # indexes exactly these.
        rows, skipped = read_jsonl(snapshot), _Skipped()
    else:
        rows, skipped = await _fetch(store, config.max_length, limit)
    rows, skipped = ranks.broadcast((rows, skipped))
    if fresh:
        if not rows:
            report = {
                "status": "nothing_to_learn",
                "run_id": run_id,
                "pairs_total": skipped.counts.total(),
                "pairs_used": 0,
                "skipped": dict(skipped.counts),
                "skipped_ids": skipped.ids,
                "steps": 0,
                "consumed": 0,
            }
            if skipped.counts and ranks.main:  # bad rows and nothing else: the report says which
                write_report(config.out_path, report)
                _warn(report)
            return report
        if ranks.main:
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
    if not ranks.main:  # rank 0 marks the pairs and writes the report
        return report
    if skipped.counts:
        counts = Counter(report.get("skipped", {})) + skipped.counts
        report["skipped"] = dict(counts)
        report["skipped_ids"] = [*report.get("skipped_ids", []), *skipped.ids]
        report["pairs_total"] += skipped.counts.total()
    report["consumed"] = 0
    if report["status"] == "trained":
        adapter = config.out_path / "adapter_model.safetensors"
        if not adapter.exists():  # never mark pairs learned by an adapter that is not there
            raise RuntimeError(f"training finished but {adapter} is missing")
        used = set(report["used_ids"])
        # A duplicate was learned with the pair it repeats: the next night must not learn it.
        repeats = [d for row in rows if row.get("id") in used for d in row.get("duplicates", [])]
        report["consumed"] = await store.mark_consumed([*report["used_ids"], *repeats], run_id)
    if report.get("stopped") and report["status"] == "trained":
        # Stopped for the budget: the checkpoint's plan indexes these rows, so `--resume` can
        # finish it; the pairs it did not reach stay unconsumed for the next night either way.
        pass
    else:
        # Marked (or nothing to mark): the conversations need not outlive the store's
        # retention here.
        snapshot.unlink(missing_ok=True)
    write_report(config.out_path, report)
    _warn(report)
    return report


def _warn(report: dict[str, Any]) -> None:
    """One line on the log (stderr for the CLI) when pairs were skipped: how many and why."""
    skipped = report.get("skipped") or {}
    if skipped:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
        log.warning(
            "skipped %d of %d pairs (%s); ids in report.json",
            sum(skipped.values()),
            report.get("pairs_total", 0),
            reasons,
        )


async def _fetch(
    store: JudgementStore, max_length: int, limit: int | None
) -> tuple[list[dict[str, Any]], _Skipped]:
    """Up to ``limit`` usable unconsumed pairs as TRL rows, and what was left out and why.

    Every unconsumed pair is read, so that rows that will never be usable do not take the
    places of good ones; the trainer still judges the rest (length, template).
    """
    from conscience.pairs import PairError, to_trl_pair

    found = await store.read_pairs()
    skipped = _Skipped()
    for unreadable in found.unreadable:  # not UTF-8, not JSON, a label outside the enum ...
        skipped.add(unreadable.reason, unreadable.judgement_id)
    rows = []
    for judgement in found.judgements:
        try:
            row = to_trl_pair(judgement)
        except PairError as exc:  # no role, an image part: not for this trainer
            skipped.add(exc.reason, judgement.id)
            continue
        reason = check_pair(row, max_length)
        if reason is None:
            rows.append(row)
        else:
            skipped.add(reason, judgement.id)
    rows, repeats = drop_duplicates(rows)
    for row in repeats:
        skipped.add("duplicate", row["id"])
    return rows[:limit], skipped


def _write_snapshot(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)
