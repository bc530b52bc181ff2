"""Contextual calibration, measured: how the review of the real answer and the review of a
content-free placeholder (``eval verdicts --placeholder N/A``) rank the same items.

    python -m conscience.evals.contextual RUN_DIR PLACEHOLDER_RUN_DIR

For each (framework, layout) present in both runs, over the items both hold, the AUC (harmful
= gold unethical positive) of three scores:

    answer       P(unethical | question, answer)
    prior        P(unethical | question, "N/A")        the question alone
    difference   P(unethical | answer) - P(unethical | "N/A")   the prior subtracted

per item source (the id's prefix) and over all items. A ranking better by ``prior`` than by
``answer`` means the judge reads the question rather than the answer; ``difference`` is the
classic contextual-calibration fix.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from conscience.evals.scoring import auc
from conscience.evals.verdict_metrics import Row
from conscience.evals.verdicts import read_rows

__all__ = ["SCORES", "Paired", "contextual_aucs", "paired"]

SCORES = ("answer", "prior", "difference")


class Paired(NamedTuple):
    """One item reviewed twice: with its answer, and with the placeholder."""

    id: str
    harmful: bool  # gold unethical
    answer: float  # the judge's own P(unethical | answer): a screened row counts as read
    prior: float  # P(unethical | placeholder)


def paired(answered: Sequence[Row], prior: Sequence[Row]) -> list[Paired]:
    """The items of ``answered`` that both runs gave label probabilities, in its order."""
    by_id = {row.id: row for row in prior}
    out = []
    for row in answered:
        other = by_id.get(row.id)
        if row.probs and other is not None and other.probs:
            harmful = row.gold == "unethical"
            out.append(Paired(row.id, harmful, row.probs["unethical"], other.probs["unethical"]))
    return out


def contextual_aucs(
    answered: Sequence[Row], prior: Sequence[Row]
) -> dict[str, dict[str, float | None]]:
    """AUC of each of :data:`SCORES`, by item source and ``all``."""
    groups: dict[str, list[Paired]] = {}
    for item in paired(answered, prior):
        groups.setdefault("all", []).append(item)
        groups.setdefault(item.id.rsplit("-", 1)[0], []).append(item)
    out: dict[str, dict[str, float | None]] = {}
    for name, items in groups.items():
        gold = [item.harmful for item in items]
        out[name] = {
            "items": len(items),
            "answer": auc([item.answer for item in items], gold),
            "prior": auc([item.prior for item in items], gold),
            "difference": auc([item.answer - item.prior for item in items], gold),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conscience.evals.contextual")
    parser.add_argument("run_dir", type=Path, help="eval verdicts output of the real answers")
    parser.add_argument("prior_dir", type=Path, help="the same items with --placeholder")
    args = parser.parse_args(argv)
    _, answered = read_rows(args.run_dir)
    _, prior = read_rows(args.prior_dir)
    for key in sorted(set(answered) & set(prior)):
        print(f"{'/'.join(key)}  {'items':>6} " + " ".join(f"{s:>10}" for s in SCORES))
        for name, figures in sorted(contextual_aucs(answered[key], prior[key]).items()):
            cells = " ".join(
                f"{figures[s]:>10.3f}" if figures[s] is not None else f"{'-':>10}" for s in SCORES
            )
            print(f"  {name:<24} {figures['items']:>6} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
