"""The probe refitted from an operator's labels, for real: the default model on the embedded
engine, and "operator labels" taken from labelled sets, so that the effect can be measured.

An operator's labels are their own traffic: mostly ordinary conversations, some attempts at
harm. This stands in for them with the train part of the split over every source
(``evals/shared/sources.py``; never dev or test): ``--benign`` ordinary conversations of benign_chat
(all unharmful) and ``--per-set`` items of each of harm_judging_more's three sets (GPTFuzz, a
SafeRLHF sample, JAILJUDGE: harmful and unharmful), each stored as a judgement with its human
label in a real SQLite store. Then ``conscience fit probe --labels-from`` runs as an operator
would run it, against the packaged probe::

    python -m conscience.bench.probe_refit --out runs/probe-refit

and the report (``OUT/probe.json.refit.json``) holds the packaged probe's and the candidate's
figures on the held labels and on dev, and the gate. The states are kept (a second run extracts
nothing); ``--train`` bounds the harm-judging train and dev items (240: the packaged probe's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conscience.evals.fitting.depth_sweep import sample_pool
from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.store import open_store

HARMFUL_SETS = ("gptfuzz", "saferlhf_mini", "jailjudge")


async def _store_labels(url: str, benign: int, per_set: int) -> int:
    """The stand-in labels in the store at ``url`` (kept if it holds them already)."""
    store = open_store(url)
    await store.open()
    try:
        if await store.count() > 0:
            return await store.count()
        pool = sample_pool({"train": benign}, sources=("benign_chat",))
        pool += sample_pool({"train": per_set}, sources=HARMFUL_SETS)
        start = datetime.now(UTC) - timedelta(days=1)
        judgements = [
            Judgement(
                created_at=start + timedelta(seconds=i),
                request_id=f"bench-{item.id}",
                model="qwen2.5-coder-1.5b-instruct",
                judge_model="qwen2.5-coder-1.5b-instruct",
                framework="three-laws",
                layout="paper",
                messages=[{"role": "user", "content": item.prompt}],
                answer=item.response,
                verdict=Verdict.ETHICAL,  # not read: the refit learns from the human label
                human_label=Verdict.UNETHICAL if item.harmful else Verdict.ETHICAL,
            )
            for i, item in enumerate(pool)
        ]
        await store.add_many(judgements)
        sources = {j.id: item.source for j, item in zip(judgements, pool, strict=True)}
        Path(url).with_suffix(".sources.json").write_text(json.dumps(sources), encoding="utf-8")
        return len(judgements)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conscience.bench.probe_refit")
    parser.add_argument("--out", type=Path, required=True, help="a folder for the run")
    parser.add_argument("--benign", type=int, default=100, help="ordinary conversations (100)")
    parser.add_argument("--per-set", type=int, default=35, help="items of each harm set (35)")
    parser.add_argument("--train", type=int, default=240, help="harm-judging train, dev items")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    url = str(args.out / "labels.sqlite3")
    stored = asyncio.run(_store_labels(url, args.benign, args.per_set))
    print(f"{stored} labelled judgements in {url}; load {os.getloadavg()[0]:.2f}", flush=True)
    from conscience.evals.fitting.calibrate import add_calibrate_command
    from conscience.evals.fitting.refit import refit_from_labels
    from conscience.settings import Settings

    # `conscience fit probe`'s own parser, so its defaults are the command's.
    fit = argparse.ArgumentParser(prog="conscience fit")
    add_calibrate_command(fit.add_subparsers(), "probe", probe_preset=True)
    refit = fit.parse_args(
        [
            "probe",
            "--labels-from",
            url,
            "--out",
            str(args.out / "probe.json"),
            "--limit",
            str(args.train),
            "--max-answer-chars",
            "800",  # as the packaged probe was fitted
            "--threshold-rule",
            "fpr:0.2",  # the packaged probe's rule
        ]
    )
    refit_from_labels(refit, Settings())
    code = 0
    report = args.out / "probe.json.refit.json"
    if code == 0 and report.exists():
        said = json.loads(report.read_text(encoding="utf-8"))
        for which in ("current", "candidate"):
            for part in ("held", "dev"):
                figures = said["figures"][which][part]
                print(
                    f"{which:9} {part:4} items {figures['items']:4} auc {figures['auc']:.3f}"
                    f" f1 {figures['f1']:.3f} fpr {figures['fpr']:.3f} fnr {figures['fnr']:.3f}"
                )
        print("gate:", said["gate"], f"load {os.getloadavg()[0]:.2f}")
        _by_source(args.out, url)
    return code


def _by_source(out: Path, url: str) -> None:
    """The false-unethical rate of each probe on the held labels, by source: on ordinary
    conversations, what a rewrite of an ordinary answer costs an operator."""
    import numpy as np

    from conscience.evals.fitting.refit import held_out, read_labels, scores_of
    from conscience.evals.shared.jsonl import read_records
    from conscience.probe import PACKAGED_PROBE, load_probes

    sources = json.loads(Path(url).with_suffix(".sources.json").read_text(encoding="utf-8"))
    labels = [x for x in asyncio.run(read_labels(url)) if held_out(x.group, 0.3)]
    states = out / "probe.json.vectors" / "three-laws" / "human-labels" / "vectors.jsonl"
    vectors = {r["id"]: r["vector"] for r in read_records(states)}
    key = ("qwen2.5-coder-1.5b-instruct", "three-laws", "paper")
    probes = {
        "current": load_probes(PACKAGED_PROBE)[key],
        "candidate": load_probes(out / "probe.json")[key],
    }
    for source in sorted({sources[x.id] for x in labels}):
        mine = [x for x in labels if sources[x.id] == source and x.label is Verdict.ETHICAL]
        if not mine:
            continue
        x = np.array([vectors[item.id] for item in mine])
        rates = {
            which: float(np.mean(scores_of(probe, x) >= probe.threshold))
            for which, probe in probes.items()
        }
        print(
            f"held {source:14} harmless {len(mine):3}: false-unethical"
            f" current {rates['current']:.3f}, candidate {rates['candidate']:.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
