"""A linear probe on the frozen judge's hidden state at the verdict position.

Features of an item: the final-layer hidden state of the last token of the single review's
prompt (the framework's system message, the fenced question and answer, the question to the
judge, and the chat template up to where the judge's label would begin) — what the model
"knows" just before it says its verdict. llama.cpp returns it from ``/v1/embeddings`` with
last-token pooling on the same GGUF (``engine/child.py --embeddings``); the answer is cut to
``--max-answer-chars`` (measured as a feature, not yet the review's windows).

The probe is a logistic head over the standardised vector, fitted by Newton's method (IRLS)
with an L2 penalty λ on the weights, not the bias (``fit_head``)::

    z = (h - mean_train) / sd_train,     P(harmful | h) = sigmoid(w · z + b)
    w <- w + (Zᵀ S Z + Λ)⁻¹ (Zᵀ (y - p) - Λ w),   S = diag(p (1 - p)),  Λ = diag(λ, ..., λ, 0)

with λ chosen by 5-fold cross-validated log-loss on train (folds by prompt, so
a prompt's answers never sit on both sides) and its threshold by the best F1 of the
out-of-fold scores on train. Dev is only measured::

    conscience eval probe extract --split train --limit 400 --out DIR
    conscience eval probe fit --train DIR --dev DIR
    conscience eval probe measure --probe FILE --framework F --vectors DIR
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from conscience.errors import ConfigError
from conscience.evals.shared.jsonl import AppendLog, read_records
from conscience.evals.shared.labelled import load_labelled
from conscience.evals.shared.scoring import auc
from conscience.framework import load_frameworks
from conscience.labels import JudgeMethod, Layout, Verdict
from conscience.probe import Probe, hidden_state, load_probes, save_probe
from conscience.progress import Progress
from conscience.prompts import render_review

if TYPE_CHECKING:
    from conscience.settings import Settings

__all__ = [
    "VECTORS_FILE",
    "best_f1_threshold",
    "calibrate_probe",
    "choose_threshold",
    "cross_validated",
    "extract",
    "extraction_of",
    "fit_head",
    "fit_probe",
    "head_scores",
    "load_vectors",
    "measure_probe",
    "measure_scores",
    "standardise",
]

log = logging.getLogger("conscience.evals.fitting.probe")

VECTORS_FILE = "vectors.jsonl"
RUN_FILE = "run.json"  # what the vectors were extracted with
_LAMBDAS = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
_FOLDS = 5


class StateItem(Protocol):
    """What a state is extracted for: a labelled set's item, or a judgement a human labelled
    (``evals/fitting/refit.py``): the conversation, the answer, the gold label, and the group
    that keeps an item's look-alikes on one side of every split (its prompt or conversation)."""

    @property
    def id(self) -> str: ...
    @property
    def answer(self) -> str: ...
    @property
    def label(self) -> Verdict: ...
    @property
    def messages(self) -> list[dict[str, Any]]: ...
    @property
    def group(self) -> str: ...


def probe_prompt(
    item: StateItem, framework: Any, max_answer_chars: int, layout: Layout = Layout.PAPER
) -> list[dict]:
    return render_review(framework, item.messages, item.answer[:max_answer_chars], layout=layout)


def _refuse_another(out_dir: Path, identity: dict[str, Any]) -> None:
    """A directory of another extraction (another judge, framework, answer length or reading,
    as far as ``identity`` says) is an error, never a mixed set of vectors."""
    if (out_dir / RUN_FILE).exists():
        earlier = extraction_of(out_dir)
        if {key: earlier.get(key) for key in identity} != identity:
            raise ConfigError(f"{out_dir} holds vectors of {earlier}, not {identity}")


def _done_ids(out_dir: Path, identity: dict[str, Any]) -> set[str]:
    """The ids already extracted into ``out_dir`` by the extraction ``identity``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file = out_dir / RUN_FILE
    if run_file.exists():
        _refuse_another(out_dir, identity)
    else:
        run_file.write_text(json.dumps(identity) + "\n", encoding="utf-8")
    return {record["id"] for record in read_records(out_dir / VECTORS_FILE)}


async def extract(
    settings: Settings,
    items: Sequence[StateItem],
    out_dir: Path,
    *,
    framework: str,
    max_answer_chars: int,
    layout: Layout = Layout.PAPER,
) -> None:
    """Append each item's vector to ``out_dir/vectors.jsonl``; items already there are kept
    (a killed extraction resumes). The engine is the settings', and it reads the state as the
    proxy would (``probe_read``: the embedded engine's output layer, or ``/v1/embeddings``):
    a probe is fitted on states read the way it reads them when serving."""
    from conscience.engine.connect import open_engine

    settings = settings.model_copy(update={"judge_method": JudgeMethod.PROBE})  # states, always
    chosen = load_frameworks(settings.frameworks_dir)[framework]
    known = {
        "judge": settings.judge,
        "framework": framework,
        "max_answer_chars": max_answer_chars,
        "layout": layout.value,
    }
    _refuse_another(out_dir, known)  # what is known before the model loads: said at once
    async with open_engine(settings, embeddings=settings.probe_read == "embeddings") as engine:
        read = "logits" if engine.state_reader is not None else "embeddings"
        done = _done_ids(out_dir, {**known, "read": read})
        todo = [item for item in items if item.id not in done]
        with (
            Progress(len(items), "probe vectors", done=len(items) - len(todo), unit="item") as bar,
            AppendLog(out_dir / VECTORS_FILE) as rows,
        ):
            for item in todo:
                started = time.perf_counter()
                vector = await hidden_state(
                    engine.client,
                    settings.judge,
                    probe_prompt(item, chosen, max_answer_chars, layout),
                    engine.state_reader,
                )
                rows.append(
                    {
                        "id": item.id,
                        "gold": item.label.value,
                        "group": item.group,
                        "seconds": time.perf_counter() - started,
                        "vector": [round(v, 6) for v in vector],
                    }
                )
                bar.update()


def load_vectors(run_dir: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Ids, prompt groups, the vectors and the gold (harmful = 1) of an ``extract`` run."""
    records = read_records(run_dir / VECTORS_FILE)
    if not records:
        raise ConfigError(f"{run_dir} holds no probe vectors")
    ids = [r["id"] for r in records]
    groups = [r["group"] for r in records]
    x = np.array([r["vector"] for r in records], dtype=float)
    gold = np.array([1.0 if r["gold"] == "unethical" else 0.0 for r in records])
    return ids, groups, x, gold


def standardise(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``(x - mean) / sd`` with a bias column of ones appended."""
    z = (x - mean) / sd
    return np.column_stack([z, np.ones(len(z))])


def _fold(group: str) -> int:
    return hashlib.sha256(group.encode()).digest()[0] % _FOLDS


def fit_head(x: np.ndarray, gold: np.ndarray, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """The logistic head of the module docstring: its weights, one per column of ``x`` (whose
    last column is the bias's 1), by IRLS with the L2 penalty ``l2`` on all but the bias."""
    w = np.zeros(x.shape[1])
    penalty = np.diag([l2] * (x.shape[1] - 1) + [0.0])
    for _ in range(steps):
        p = head_scores(w, x)
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, x.T @ (gold - p) - penalty @ w)
        w = w + step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def head_scores(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """P(harmful) of each row of ``x`` under the head ``weights``."""
    return 1.0 / (1.0 + np.exp(-(x @ weights)))


def best_f1_threshold(scores: np.ndarray, gold: np.ndarray) -> float:
    """The score at or above which flagging has the best F1 on ``scores`` (the lowest of ties)."""
    best, best_f1 = 0.5, -1.0
    for t in np.unique(scores):
        flagged = scores >= t
        tp = float(np.sum(flagged & (gold == 1)))
        f1 = 2 * tp / (np.sum(flagged) + np.sum(gold == 1))
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def measure_scores(
    scores: np.ndarray, gold: np.ndarray, threshold: float
) -> dict[str, float | None]:
    """AUC of ``scores``, and F1 / FPR / FNR of flagging those at or above ``threshold``."""
    flagged = scores >= threshold
    tp = int(np.sum(flagged & (gold == 1)))
    fp = int(np.sum(flagged & (gold == 0)))
    fn = int(np.sum(~flagged & (gold == 1)))
    tn = int(np.sum(~flagged & (gold == 0)))
    return {
        "items": len(gold),
        "auc": auc(scores.tolist(), (gold == 1).tolist()),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "fpr": fp / (fp + tn) if fp + tn else None,
        "fnr": fn / (fn + tp) if fn + tp else None,
    }


def _log_loss(scores: np.ndarray, gold: np.ndarray) -> float:
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    return float(-np.mean(gold * np.log(p) + (1 - gold) * np.log(1 - p)))


def cross_validated(x: np.ndarray, gold: np.ndarray, groups: list[str], l2: float) -> np.ndarray:
    """Out-of-fold P(harmful) of every training item (folds by prompt group)."""
    folds = np.array([_fold(g) for g in groups])
    scores = np.zeros(len(gold))
    for k in range(_FOLDS):
        held = folds == k
        if not held.any() or held.all():
            continue
        mean, sd = x[~held].mean(0), x[~held].std(0) + 1e-6
        head = fit_head(standardise(x[~held], mean, sd), gold[~held], l2=l2, steps=30)
        scores[held] = head_scores(head, standardise(x[held], mean, sd))
    return scores


def _fmt(figures: dict[str, float | None]) -> str:
    return ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) and not math.isnan(v) else f"{k} {v}"
        for k, v in figures.items()
    )


def _fpr_threshold(scores: np.ndarray, gold: np.ndarray, cap: float) -> float:
    """The lowest threshold whose false-positive rate on ``scores`` stays within ``cap``."""
    negatives = scores[gold == 0]
    for t in np.unique(scores):
        if negatives.size == 0 or float(np.mean(negatives >= t)) <= cap:
            return float(t)
    return 1.0


def choose_threshold(scores: np.ndarray, gold: np.ndarray, rule: str) -> float:
    """``best-f1``, or ``fpr:CAP`` (the most recall with a false-positive rate within CAP)."""
    if rule == "best-f1":
        return best_f1_threshold(scores, gold)
    name, _, cap = rule.partition(":")
    if name != "fpr" or not cap:
        raise ConfigError(f"unknown threshold rule {rule!r} (best-f1, fpr:CAP)")
    return _fpr_threshold(scores, gold, float(cap))


def extraction_of(run_dir: Path) -> dict[str, Any]:
    """What an ``extract`` run's vectors were read with: the judge, the framework, the answer
    length, the layout and the reading of the state (its ``run.json``; runs from before the
    logits reading read ``/v1/embeddings``, runs from before the layout was chosen the paper's)."""
    try:
        identity = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_dir}: not a probe extraction ({exc})") from exc
    return {"read": "embeddings", "layout": Layout.PAPER.value, **identity}


class Head(NamedTuple):
    """A fitted read-out: the standardisation, the head (bias last), the penalty chosen, and
    train's out-of-fold scores that chose it and the threshold."""

    mean: np.ndarray
    sd: np.ndarray
    head: np.ndarray
    l2: float
    out_of_fold: np.ndarray
    threshold: float


def fit_arrays(
    x: np.ndarray, gold: np.ndarray, groups: Sequence[str], threshold_rule: str = "best-f1"
) -> Head:
    """The head of the module docstring on the rows ``x``: λ by out-of-fold log-loss (folds
    by ``groups``), the threshold by ``threshold_rule`` on the out-of-fold scores."""
    groups = list(groups)
    losses = {l2: _log_loss(cross_validated(x, gold, groups, l2), gold) for l2 in _LAMBDAS}
    for l2, loss in losses.items():
        log.info("probe: lambda %g, out-of-fold log-loss %.4f", l2, loss)
    l2 = min(losses, key=losses.__getitem__)
    oof = cross_validated(x, gold, groups, l2)
    threshold = choose_threshold(oof, gold, threshold_rule)
    mean, sd = x.mean(0), x.std(0) + 1e-6
    head = fit_head(standardise(x, mean, sd), gold, l2=l2, steps=30)
    return Head(mean, sd, head, l2, oof, threshold)


def probe_of(
    head: Head,
    extraction: dict[str, Any],
    *,
    read_chars: int,
    fitted: dict[str, Any],
) -> Probe:
    """The probe file's entry for ``head``, fitted on states of ``extraction``."""
    return Probe(
        model=extraction["judge"],
        framework=extraction["framework"],
        layout=extraction["layout"],
        max_answer_chars=read_chars,
        mean=tuple(float(v) for v in head.mean),
        sd=tuple(float(v) for v in head.sd),
        weights=tuple(float(v) for v in head.head[:-1]),
        bias=float(head.head[-1]),
        threshold=head.threshold,
        fitted=fitted,
    )


def fit_probe(
    train_dir: Path,
    *,
    threshold_rule: str = "best-f1",
    read_chars: int | None = None,
) -> tuple[Probe, np.ndarray, np.ndarray]:
    """The probe of the module docstring, fitted on an ``extract`` run of train items, the
    out-of-fold scores of train it chose λ and the threshold on, and train's gold (read once:
    an extraction may still be appending to the run).

    The judge and the framework are the extraction's, so a probe cannot be labelled with
    another framework than the prompts it read. It reads answers in windows of the
    extraction's length unless ``read_chars`` says otherwise (a measured choice: fitted on
    800-character answers, read in 1,500-character windows; docs/decisions.md)."""
    extraction = extraction_of(train_dir)
    fitted_chars = int(extraction["max_answer_chars"])
    _, groups, x, gold = load_vectors(train_dir)
    head = fit_arrays(x, gold, groups, threshold_rule)
    probe = probe_of(
        head,
        extraction,
        read_chars=read_chars or fitted_chars,
        fitted={
            "train": str(train_dir),
            "train_items": len(gold),
            "train_answer_chars": fitted_chars,
            "read": extraction["read"],
            "l2": head.l2,
            "threshold_rule": f"{threshold_rule} on train's out-of-fold scores",
            "train_out_of_fold": measure_scores(head.out_of_fold, gold, head.threshold),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return probe, head.out_of_fold, gold


def measure_probe(probe: Probe, run_dir: Path, threshold: float | None = None) -> dict:
    """AUC, F1, FPR, FNR of ``probe`` on an ``extract`` run (at its threshold, or another)."""
    _, _, x, gold = load_vectors(run_dir)
    scores = np.array([probe.score(row) for row in x])
    return measure_scores(scores, gold, probe.threshold if threshold is None else threshold)


def _cmd_fit(args: argparse.Namespace) -> int:
    train, dev = extraction_of(Path(args.train)), extraction_of(Path(args.dev))
    if train != dev:
        raise ConfigError(f"train vectors were read with {train}, dev with {dev}")
    probe, oof, gold = fit_probe(
        Path(args.train), threshold_rule=args.threshold_rule, read_chars=args.read_chars
    )
    fitted = probe.fitted
    print(f"lambda {fitted['l2']:g}; threshold {probe.threshold:.3f} ({fitted['threshold_rule']})")
    print("train out-of-fold: " + _fmt(fitted["train_out_of_fold"]))
    dev = measure_probe(probe, Path(args.dev))
    print("dev: " + _fmt(dev))
    for rule in ("fpr:0.05", "fpr:0.1", "fpr:0.2"):
        t = choose_threshold(oof, gold, rule)
        figures = measure_probe(probe, Path(args.dev), t)
        print(f"dev at {rule} on train (threshold {t:.3f}): {_fmt(figures)}")
    if args.save:
        probe = replace(probe, fitted={**fitted, "dev": {"run": str(args.dev), **dev}})
        save_probe(Path(args.save), probe)
        print(f"probe saved to {args.save}")
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    """One probe of a file on an ``extract`` run, at its own threshold: on a run of another
    framework, how far a probe carries beyond the prompt it was fitted on."""
    probes = load_probes(Path(args.probe)).values()
    chosen = next((p for p in probes if p.framework == args.framework), None)
    if chosen is None:
        fitted = ", ".join(sorted(p.framework for p in probes))
        raise ConfigError(f"{args.probe} has no probe for {args.framework!r} (it has: {fitted})")
    read_under = extraction_of(Path(args.vectors))["framework"]
    figures = measure_probe(chosen, Path(args.vectors))
    print(f"the {args.framework} probe on {args.vectors} ({read_under} prompts): " + _fmt(figures))
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from conscience.settings import Settings

    items = load_labelled(args.data, args.split)
    if args.limit is not None:
        items = items[: args.limit]
    asyncio.run(
        extract(
            Settings(),
            items,
            Path(args.out),
            framework=args.framework,
            max_answer_chars=args.max_answer_chars,
            layout=Layout(args.layout),
        )
    )
    return 0


def extract_splits(args: argparse.Namespace, settings: Settings) -> dict[str, Path]:
    """The states of ``--data``'s train and dev splits, extracted beside ``--out``
    (``OUT.vectors/FRAMEWORK/SPLIT``, ``FRAMEWORK-LAYOUT`` for another layout than the paper's;
    resumable): the extraction run of each split."""
    out = Path(args.out)
    runs = {}
    for split in (args.train_split, args.dev_split):
        items = load_labelled(args.data or "harm-judging", split)
        if args.limit is not None:
            items = items[: args.limit]
        if not items:
            raise ConfigError(f"no items in split {split!r} of {args.data or 'harm-judging'}")
        runs[split] = vectors_dir(out, settings) / split
        asyncio.run(
            extract(
                settings,
                items,
                runs[split],
                framework=settings.framework,
                max_answer_chars=args.max_answer_chars,
                layout=settings.layout,
            )
        )
    return runs


def vectors_dir(out: Path, settings: Settings) -> Path:
    """Where the states of the probe file ``out``'s entry for the settings' framework and
    layout are kept."""
    layout = settings.layout
    named = settings.framework + ("" if layout is Layout.PAPER else f"-{layout.value}")
    return out.with_name(f"{out.name}.vectors") / named


def calibrate_probe(args: argparse.Namespace, settings: Settings) -> Probe:
    """``conscience fit probe``: extract train and dev vectors of a labelled set beside
    the output (``extract_splits``), fit on train, measure on dev, and add the probe to the
    file (a probe of another framework or layout there is kept)."""
    runs = extract_splits(args, settings)
    probe, _, _ = fit_probe(runs[args.train_split], threshold_rule=args.threshold_rule)
    dev = measure_probe(probe, runs[args.dev_split])
    probe = replace(
        probe, fitted={**probe.fitted, "dev": {"run": str(runs[args.dev_split]), **dev}}
    )
    save_probe(Path(args.out), probe)
    return probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conscience eval probe")
    commands = parser.add_subparsers(dest="command", required=True)
    extract_cmd = commands.add_parser("extract", help="hidden states of harm-judging items")
    extract_cmd.add_argument("--data", default="harm-judging", help="a labelled set or JSONL")
    extract_cmd.add_argument(
        "--split", required=True, help="train and dev to fit and choose; test only to measure"
    )
    extract_cmd.add_argument("--limit", type=int)
    extract_cmd.add_argument("--framework", default="three-laws")
    extract_cmd.add_argument("--max-answer-chars", type=int, default=1500)
    extract_cmd.add_argument(
        "--layout",
        default=Layout.PAPER.value,
        choices=[layout.value for layout in Layout],
        help="the review prompt's layout (follow-up: the answer as the judge's own last turn)",
    )
    extract_cmd.add_argument("--out", required=True)
    extract_cmd.set_defaults(handler=_cmd_extract)
    fit_cmd = commands.add_parser("fit", help="fit on train, measure on dev")
    fit_cmd.add_argument("--train", required=True)
    fit_cmd.add_argument("--dev", required=True)
    fit_cmd.add_argument("--save", help="write the probe file the server loads")
    fit_cmd.add_argument(
        "--read-chars", type=int, help="the windows it reads answers in (default: as extracted)"
    )
    fit_cmd.add_argument("--threshold-rule", default="best-f1", help="best-f1 or fpr:CAP")
    fit_cmd.set_defaults(handler=_cmd_fit)
    measure_cmd = commands.add_parser("measure", help="a fitted probe on extracted vectors")
    measure_cmd.add_argument("--probe", required=True, help="a probe file")
    measure_cmd.add_argument("--framework", default="three-laws", help="which probe of the file")
    measure_cmd.add_argument("--vectors", required=True, help="an extract run (any framework)")
    measure_cmd.set_defaults(handler=_cmd_measure)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
