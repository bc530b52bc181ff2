"""The probe refitted from the operator's labels: ``conscience fit probe --labels-from URL``.

The judgements a human labelled are the best data a deployment has: its own traffic, judged by
the people who own it. This fits the probe on the project's training states *plus* those, and
lets it judge only if it is not worse than the probe judging now::

    labels      every judgement of the store with a human label (its conversation, the answer
                the model wrote, the label); grouped by conversation, never by row
    held        the conversations whose seeded hash falls under --held-share: measured only
    fitted on   the training split's states (--data, as ``fit probe``) + the labels not held
    gate        on the held labels and on the dev split, each: AUC and F1 at least the current
                probe's less --tolerance, and the false-unethical rate at most the current's
                plus it; a held part without both labels, or under --min-held items, decides
                nothing (not passed)

The states are extracted on the judge the settings name, the way it reads them when serving
(``evals/fitting/probe.py``: resumable, beside ``--out``; a label changed since is read again
from its vector, so no state is extracted twice). The candidate is the current probe file with
this framework and layout's probe replaced, written to ``--out`` with its record (``fitted``:
the training run, the labels by id, the held figures and the gate) and ``OUT.refit.json``.
``--publish URL`` fetches the probe the proxy serves to gate against, and posts the candidate
with its gate to ``POST /admin/probe`` (the proxy switches only where it passed). With
``--min-new-labels N``, fewer labels than N that the current probe was not fitted on is "nothing
to refit", said before the model loads: the nightly job's trigger."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from conscience.errors import ConfigError, ConscienceError
from conscience.evals.fitting.probe import (
    VECTORS_FILE,
    extract,
    extract_splits,
    extraction_of,
    fit_arrays,
    load_vectors,
    measure_scores,
    probe_of,
    vectors_dir,
)
from conscience.evals.shared.jsonl import read_records
from conscience.labels import Verdict
from conscience.probe import PACKAGED_PROBE, Probe, load_probes, parse_probes
from conscience.store import open_store
from conscience.store.search import Search
from conscience.store.url import redact

__all__ = [
    "HumanLabel",
    "gate",
    "held_out",
    "new_labels",
    "read_labels",
    "refit_from_labels",
    "scores_of",
]

log = logging.getLogger("conscience.evals.fitting.refit")

_HELD_SEED = "conscience-human-labels"
_PAGE = 500
Probes = dict[tuple[str, str, str], Probe]


@dataclass(frozen=True)
class HumanLabel:
    """A judgement a human labelled, as the probe reads it."""

    id: str  # the judgement's id
    messages: list[dict[str, Any]]
    answer: str  # the answer the model wrote (what the judge read), not what was served
    label: Verdict
    group: str  # its conversation: answers to one conversation stay on one side

    @staticmethod
    def conversation_key(messages: list[dict[str, Any]]) -> str:
        text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        return "conversation:" + hashlib.sha256(text.encode()).hexdigest()[:32]


async def read_labels(store_url: str) -> list[HumanLabel]:
    """Every judgement of the store with a human label, oldest first; a row the store cannot
    read is said and left out."""
    store = open_store(store_url)
    await store.open()
    labels: list[HumanLabel] = []
    try:
        offset = 0
        while True:
            page = await store.search(Search(labelled=True), limit=_PAGE, offset=offset)
            for row in page.unreadable:
                log.warning("a labelled judgement could not be read: %s", row)
            for judgement in page.judgements:
                if judgement.human_label is None:
                    continue
                labels.append(
                    HumanLabel(
                        judgement.id,
                        judgement.messages,
                        judgement.answer,
                        judgement.human_label,
                        HumanLabel.conversation_key(judgement.messages),
                    )
                )
            if len(page.judgements) + len(page.unreadable) < _PAGE:
                break
            offset += _PAGE
    finally:
        await store.close()
    labels.reverse()  # the store reads newest first
    return labels


def held_out(group: str, share: float) -> bool:
    """Whether a conversation is held (measured, never fitted): its seeded hash under
    ``share``, so the same conversation stays held as labels are added."""
    digest = hashlib.sha256(f"{_HELD_SEED}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def new_labels(labels: list[HumanLabel], probe: Probe) -> list[HumanLabel]:
    """The labels ``probe`` was not fitted on: new ones, and ones changed since."""
    known = (probe.fitted.get("labels") or {}).get("ids") or {}
    return [label for label in labels if known.get(label.id) != label.label.value]


def scores_of(probe: Probe, x: np.ndarray) -> np.ndarray:
    """P(unethical) of each row of ``x`` under ``probe`` (``Probe.score``, vectorised)."""
    if x.shape[1] != len(probe.weights):
        raise ConfigError(
            f"the probe reads {len(probe.weights)} dimensions, the states have {x.shape[1]}"
        )
    z = (x - np.array(probe.mean)) / np.array(probe.sd) @ np.array(probe.weights) + probe.bias
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def gate(
    current: dict[str, dict[str, Any]],
    candidate: dict[str, dict[str, Any]],
    *,
    tolerance: float,
    min_held: int,
) -> dict[str, Any]:
    """The candidate passes when, on every set, its AUC and F1 are at least the current
    probe's less ``tolerance`` and its false-unethical rate at most the current's plus it.
    ``current`` and ``candidate`` map a set's name (``held``, ``dev``) to ``measure_scores``'
    figures; a held set of under ``min_held`` items, or without both labels, decides nothing."""
    held = candidate["held"]
    if held["items"] < min_held or held["auc"] is None or math.isnan(held["auc"]):
        reason = (
            f"the held labels ({held['items']}) are under {min_held} or lack one of the labels:"
            " label more, or lower --min-held"
        )
        return {"passed": False, "reason": reason, "tolerance": tolerance}
    worse = []
    for name in candidate:
        now, then = current[name], candidate[name]
        for metric, sign in (("auc", 1), ("f1", 1), ("fpr", -1)):
            a, b = now.get(metric), then.get(metric)
            if a is None or b is None:
                continue
            if sign * (b - a) < -tolerance:
                worse.append(f"{name} {metric} {b:.3f} against {a:.3f}")
    return {
        "passed": not worse,
        "reason": "; ".join(worse) if worse else f"not worse on {', '.join(candidate)}",
        "tolerance": tolerance,
    }


def _admin_headers() -> dict[str, str]:
    key = os.environ.get("CONSCIENCE_ADMIN_KEY")
    if not key:
        raise ConfigError("--publish needs CONSCIENCE_ADMIN_KEY (the proxy's admin key)")
    return {"Authorization": f"Bearer {key}"}


def _served_probes(proxy: str) -> Probes:
    import httpx

    try:
        answer = httpx.get(f"{proxy}/admin/probe/file", headers=_admin_headers(), timeout=60)
    except httpx.HTTPError as exc:
        raise ConscienceError(
            f"the proxy at {proxy} could not be asked for its probe: {exc}"
        ) from None
    if answer.status_code != 200:
        raise ConscienceError(f"the proxy's probe: {answer.status_code} {answer.text[:300]}")
    return parse_probes(answer.json(), f"the probe served by {proxy}")


def _publish(proxy: str, probes: Probes, verdict: dict[str, Any]) -> dict[str, Any]:
    import httpx

    body = {"probes": [asdict(p) for p in probes.values()], "gate": verdict}
    try:
        answer = httpx.post(
            f"{proxy}/admin/probe", json=body, headers=_admin_headers(), timeout=120
        )
    except httpx.HTTPError as exc:
        raise ConscienceError(f"the probe could not be published to {proxy}: {exc}") from None
    if answer.status_code == 409:  # refused by its gate, and recorded as such
        return {"published": False, "said": answer.json().get("error", {}).get("message")}
    if answer.status_code != 200:
        raise ConscienceError(f"publishing the probe: {answer.status_code} {answer.text[:300]}")
    return {"published": True, "source": answer.json().get("source")}


def _current(args: argparse.Namespace, settings: Any) -> tuple[Probes, str]:
    if args.publish:
        return _served_probes(args.publish.rstrip("/")), f"served by {args.publish}"
    path = Path(args.current) if args.current else settings.probe_file or PACKAGED_PROBE
    return load_probes(path), str(path)


def _label_vectors(run: Path, labels: list[HumanLabel], dims: int) -> np.ndarray:
    """The labels' states, one row each (``dims`` columns, also when there are none)."""
    by_id = {record["id"]: record["vector"] for record in read_records(run / VECTORS_FILE)}
    rows = [by_id[label.id] for label in labels]
    return np.array(rows, dtype=float).reshape(len(rows), dims)


def _measured(probe: Probe, x: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
    """``measure_scores`` of ``probe`` at its threshold; no figures for no items."""
    if len(gold) == 0:
        return {"items": 0, "auc": None, "f1": None, "fpr": None, "fnr": None}
    return measure_scores(scores_of(probe, x), gold, probe.threshold)


def refit_from_labels(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """The command of the module docstring; what it did, as the report it writes."""
    labels = asyncio.run(read_labels(args.labels_from))
    current_file, current_source = _current(args, settings)
    key = (settings.judge, settings.framework, settings.layout.value)
    current = current_file.get(key)
    if current is None:
        raise ConfigError(
            f"no probe for {'/'.join(key)} in {current_source} to refit and gate against:"
            " fit one first (conscience fit probe)"
        )
    fresh = new_labels(labels, current)
    report: dict[str, Any] = {
        "labels": len(labels),
        "new_labels": len(fresh),
        "store": redact(args.labels_from),
        "current": current_source,
    }
    if len(fresh) < args.min_new_labels:
        report["refit"] = f"nothing to refit: {len(fresh)} new labels, {args.min_new_labels} needed"
        log.info("probe refit: %s", report["refit"])
        return report
    held = [label for label in labels if held_out(label.group, args.held_share)]
    fitted_on = [label for label in labels if not held_out(label.group, args.held_share)]
    log.info(
        "probe refit: %d human labels (%d new), %d held out in %d conversations",
        len(labels),
        len(fresh),
        len(held),
        len({label.group for label in held}),
    )

    runs = _base_runs(args, settings)
    base = extraction_of(runs["train"])
    labels_run = vectors_dir(Path(args.out), settings) / "human-labels"
    asyncio.run(
        extract(
            settings,
            labels,
            labels_run,
            framework=settings.framework,
            max_answer_chars=int(base["max_answer_chars"]),  # read as the training split was
            layout=settings.layout,
        )
    )
    if extraction_of(labels_run) != base:
        raise ConfigError(
            f"the labels' states were read with {extraction_of(labels_run)},"
            f" the training split's with {base}: one judge, framework, layout and reading"
        )
    _, groups, x_base, gold_base = load_vectors(runs["train"])
    dims = x_base.shape[1]
    x_fit = np.vstack([x_base, _label_vectors(labels_run, fitted_on, dims)])
    gold_fit = np.concatenate([gold_base, _gold(fitted_on)])
    head = fit_arrays(
        x_fit, gold_fit, [*groups, *(label.group for label in fitted_on)], args.threshold_rule
    )
    _, _, x_dev, gold_dev = load_vectors(runs["dev"])
    x_held, gold_held = _label_vectors(labels_run, held, dims), _gold(held)
    candidate = probe_of(head, base, read_chars=current.max_answer_chars, fitted={})
    figures = {
        which: {
            "held": _measured(probe, x_held, gold_held),
            "dev": _measured(probe, x_dev, gold_dev),
        }
        for which, probe in (("current", current), ("candidate", candidate))
    }
    verdict = gate(
        figures["current"], figures["candidate"], tolerance=args.tolerance, min_held=args.min_held
    )
    candidate = replace(
        candidate,
        fitted={
            "train": str(runs["train"]),
            "train_items": len(gold_fit),
            "train_answer_chars": int(base["max_answer_chars"]),
            "read": base["read"],
            "l2": head.l2,
            "threshold_rule": f"{args.threshold_rule} on train's out-of-fold scores",
            "train_out_of_fold": measure_scores(head.out_of_fold, gold_fit, head.threshold),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "dev": {"run": str(runs["dev"]), **figures["candidate"]["dev"]},
            "labels": {
                "store": redact(args.labels_from),
                "count": len(labels),
                "fitted": len(fitted_on),
                "held": len(held),
                "held_share": args.held_share,
                "ids": {label.id: label.label.value for label in labels},
            },
            "held": figures["candidate"]["held"],
            "replaces": {"source": current_source, "figures": figures["current"]},
            "gate": verdict,
        },
    )
    out_file = {**current_file, key: candidate}
    out = Path(args.out)
    from conscience.calibration import write_entries

    write_entries(out, out_file.values())
    report.update(
        {
            "file": str(out),
            "key": "/".join(key),
            "fitted_items": len(gold_fit),
            "held": len(held),
            "figures": figures,
            "gate": verdict,
        }
    )
    if args.publish:
        report["publish"] = _publish(args.publish.rstrip("/"), out_file, verdict)
    out.with_name(out.name + ".refit.json").write_text(
        json.dumps(report, indent=2) + "\n", encoding="utf-8"
    )
    log.info("probe refit: gate %s (%s)", "passed" if verdict["passed"] else "refused", verdict)
    return report


def _gold(labels: list[HumanLabel]) -> np.ndarray:
    """Unethical is 1; ethical and neutral (which the proxy passes) are 0."""
    return np.array([1.0 if label.label is Verdict.UNETHICAL else 0.0 for label in labels])


def _base_runs(args: argparse.Namespace, settings: Any) -> dict[str, Path]:
    """The training and dev split's states: ``--base-vectors`` (a ``fit probe`` run's folder,
    with ``train/`` and ``dev/``, read as is: no data needed), else extracted from ``--data``."""
    if args.base_vectors:
        folder = Path(args.base_vectors)
        runs = {"train": folder / args.train_split, "dev": folder / args.dev_split}
        for run in runs.values():  # said before the model loads
            if not (run / VECTORS_FILE).is_file():
                raise ConfigError(
                    f"--base-vectors {folder} has no states in {run.name}/: give the folder"
                    " `conscience fit probe` keeps beside its output (OUT.vectors/FRAMEWORK)"
                )
        return runs
    runs = extract_splits(args, settings)
    return {"train": runs[args.train_split], "dev": runs[args.dev_split]}
