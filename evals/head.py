"""A learned decision head over the judge's own probabilities: small, inspectable, fitted on
train and measured on dev (issue 14, item 3). An experiment, not yet the shipped rule.

Features of an item come from ``eval verdicts`` runs of the frozen judge over the same items,
each named by what it is:

    answer    the review of the real answer                 logit P(unethical | answer)
    prior     the review with ``--placeholder N/A``          logit P(unethical | "N/A")
    parts     the decomposed review (``--judge-method decomposed``), giving
              request, complies, harm                       logit P(yes) of each question
              help = request x complies                     logit of their product
              decomposed                                    logit of the shipped rule

and the head is a logistic regression over the chosen features and a bias, fitted by
Newton's method (IRLS) with an L2 penalty ``λ`` on the weights (not the bias)::

    P(harmful | x) = sigmoid(w · x)
    w <- w + (Xᵀ S X + Λ)⁻¹ (Xᵀ (y - p) - Λ w),   S = diag(p (1 - p)),  Λ = diag(λ, ..., λ, 0)

The decision threshold is the one that maximises F1 on the data the head was fitted on; dev
is only measured, never chosen on.

    python -m conscience.evals.head --features answer,prior,request,complies,harm \
        --train answer=RUN prior=RUN parts=RUN --dev answer=RUN prior=RUN parts=RUN
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conscience.decomposed import PARTS, combine
from conscience.errors import ConfigError
from conscience.evals.scoring import auc
from conscience.evals.verdict_metrics import Row
from conscience.evals.verdicts import read_rows

__all__ = [
    "FEATURES",
    "Head",
    "best_f1_threshold",
    "features",
    "fit_head",
    "measure",
    "measure_scores",
]

_EPS = 1e-6


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def _probability(row: Row) -> float | None:
    return row.probs["unethical"] if row.probs else None


def _part(name: str) -> Callable[[Row], float | None]:
    return lambda row: row.parts[name] if row.parts else None


def _help(row: Row) -> float | None:
    return row.parts["request"] * row.parts["complies"] if row.parts else None


def _decomposed(row: Row) -> float | None:
    return combine(row.parts) if row.parts else None


# Feature name -> (the run it is read from, how).
FEATURES: dict[str, tuple[str, Callable[[Row], float | None]]] = {
    "answer": ("answer", _probability),
    "prior": ("prior", _probability),
    **{part: ("parts", _part(part)) for part in PARTS},
    "help": ("parts", _help),
    "decomposed": ("parts", _decomposed),
}


def features(
    runs: Mapping[str, Sequence[Row]], names: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids, the feature matrix (the logit of each named feature, then 1) and the gold
    (harmful = 1), over the items that every run needed holds with a value, in the order of
    the first feature's run."""
    unknown = [name for name in names if name not in FEATURES]
    if unknown:
        raise ConfigError(f"unknown features {unknown} (known: {', '.join(FEATURES)})")
    missing = sorted({FEATURES[name][0] for name in names} - set(runs))
    if missing:
        raise ConfigError(f"the features need the runs {missing}")
    by_id = {run: {row.id: row for row in rows} for run, rows in runs.items()}
    ids, x, gold = [], [], []
    for row in runs[FEATURES[names[0]][0]]:
        values = []
        for name in names:
            run, read = FEATURES[name]
            other = by_id[run].get(row.id)
            value = read(other) if other is not None else None
            if value is None:
                break
            values.append(_logit(value))
        else:
            ids.append(row.id)
            x.append([*values, 1.0])
            gold.append(1.0 if row.gold == "unethical" else 0.0)
    return ids, np.array(x).reshape(-1, len(names) + 1), np.array(gold)


@dataclass(frozen=True)
class Head:
    weights: tuple[float, ...]  # one per feature, then the bias
    threshold: float  # P(harmful) at which an item is flagged

    def scores(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(x @ np.array(self.weights))))


def best_f1_threshold(scores: np.ndarray, gold: np.ndarray) -> float:
    best, best_f1 = 0.5, -1.0
    for t in np.unique(scores):
        flagged = scores >= t
        tp = float(np.sum(flagged & (gold == 1)))
        f1 = 2 * tp / (np.sum(flagged) + np.sum(gold == 1))
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def fit_head(x: np.ndarray, gold: np.ndarray, l2: float = 1.0, steps: int = 50) -> Head:
    """The logistic head of the module docstring, and its best-F1 threshold on the same data."""
    w = np.zeros(x.shape[1])
    penalty = np.diag([l2] * (x.shape[1] - 1) + [0.0])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, x.T @ (gold - p) - penalty @ w)
        w = w + step
        if np.max(np.abs(step)) < 1e-8:
            break
    head = Head(tuple(float(v) for v in w), 0.5)  # type: ignore[arg-type]
    return Head(head.weights, best_f1_threshold(head.scores(x), gold))


def measure(head: Head, x: np.ndarray, gold: np.ndarray) -> dict[str, float | None]:
    """AUC, and F1 / FPR / FNR at the head's threshold."""
    return measure_scores(head.scores(x), gold, head.threshold)


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


def _runs(specs: Sequence[str]) -> dict[str, list[Row]]:
    """``NAME=RUN_DIR`` pairs -> the rows of each run (its one framework/layout)."""
    runs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"expected NAME=RUN_DIR, got {spec!r}")
        _, rows = read_rows(Path(path))
        if len(rows) != 1:
            raise ConfigError(f"{path} holds {len(rows)} framework/layout runs, not one")
        runs[name] = next(iter(rows.values()))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conscience.evals.head")
    parser.add_argument("--features", default="answer,prior", help="comma-separated names")
    parser.add_argument("--train", nargs="+", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--dev", nargs="+", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--l2", type=float, default=1.0)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.features.split(",") if name.strip()]
    _, x_train, y_train = features(_runs(args.train), names)
    _, x_dev, y_dev = features(_runs(args.dev), names)
    head = fit_head(x_train, y_train, l2=args.l2)
    shown = [*names, "bias"]
    print(", ".join(f"{n} {w:+.3f}" for n, w in zip(shown, head.weights, strict=True)))
    print(f"threshold (best F1 on train): {head.threshold:.3f}")
    for name, x, y in (("train", x_train, y_train), ("dev", x_dev, y_dev)):
        m = measure(head, x, y)
        cells = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()
        )
        print(f"{name}: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
