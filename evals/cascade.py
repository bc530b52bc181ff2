"""A fast probe first, a better one only where the first is in doubt: measured offline.

    python -m conscience.evals.cascade --first runs/probe-brief-dev-three-laws \\
        --then runs/probe-paper-dev-three-laws

``--first`` and ``--then`` are ``evals/probe extract`` runs of the same items in two layouts
(say the follow-up-brief layout, whose review is cheap after a generation, and the paper
layout, which reads better); each is scored by the probe of ``--probes`` fitted for its judge,
framework and layout. The cascade's verdict on an item, for a band ``lo <= hi``::

    unethical              if s_first >= hi
    ethical                if s_first <  lo
    s_then >= t_then       otherwise: the item is escalated, the second review runs

For a grid of bands it prints F1, FPR and FNR over the items, and the share of items (and of
the harmless ones) escalated: the share of reviews that pay the second review's latency. A band
chosen on one split must be measured on another before anyone relies on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from conscience.errors import ConfigError
from conscience.evals.head import measure_scores
from conscience.evals.probe import extraction_of, load_vectors
from conscience.probe import Probe, load_probes

__all__ = ["cascade", "main"]

_PACKAGED = Path(__file__).resolve().parents[1] / "conscience" / "calibrations" / "probe.json"


def cascade(
    first: np.ndarray, then: np.ndarray, then_threshold: float, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """The cascade's flags (unethical) and the items it escalated, by the rule above."""
    if lo > hi:
        raise ConfigError(f"the band's low end {lo} is above its high end {hi}")
    escalated = (first >= lo) & (first < hi)
    flagged = np.where(escalated, then >= then_threshold, first >= hi)
    return flagged, escalated


def _figures(flagged: np.ndarray, escalated: np.ndarray, gold: np.ndarray) -> str:
    measured = measure_scores(flagged.astype(float), gold, 1.0)
    harmless = float(escalated[gold == 0].mean()) if (gold == 0).any() else float("nan")
    return (
        f"F1 {measured['f1'] or 0:.3f}  FPR {measured['fpr'] or 0:.3f}  "
        f"FNR {measured['fnr'] or 0:.3f}  escalated {escalated.mean():.2f} "
        f"(harmless {harmless:.2f})"
    )


def _scored(run: Path, probes: dict[tuple[str, str, str], Probe]) -> tuple[dict, Probe]:
    """Item id -> (score, gold) of ``run`` under the probe fitted for its prompts."""
    made = extraction_of(run)
    key = (made["judge"], made["framework"], made["layout"])
    probe = probes.get(key)
    if probe is None:
        raise ConfigError(f"no probe for {key} (the prompts of {run})")
    ids, _, x, gold = load_vectors(run)
    return {i: (probe.score(list(v)), g) for i, v, g in zip(ids, x, gold, strict=True)}, probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conscience.evals.cascade")
    parser.add_argument("--first", required=True, help="the fast review's extract run")
    parser.add_argument("--then", required=True, help="the better review's extract run")
    parser.add_argument("--probes", default=str(_PACKAGED), help="the probe file")
    parser.add_argument("--top", type=int, default=10, help="bands printed")
    args = parser.parse_args(argv)
    probes = load_probes(Path(args.probes))
    first_of, first_probe = _scored(Path(args.first), probes)
    then_of, then_probe = _scored(Path(args.then), probes)
    ids = sorted(first_of.keys() & then_of.keys())
    if not ids:
        raise ConfigError(f"{args.first} and {args.then} share no items")
    first = np.array([first_of[i][0] for i in ids])
    then = np.array([then_of[i][0] for i in ids])
    gold = np.array([first_of[i][1] for i in ids])
    t_first, t_then = first_probe.threshold, then_probe.threshold
    print(f"{len(ids)} items in both runs")
    alone = cascade(first, then, t_then, t_first, t_first)
    print(f"first alone (threshold {t_first:.3f}): {_figures(*alone, gold)}")
    every = cascade(first, then, t_then, -np.inf, np.inf)
    print(f"then alone (threshold {t_then:.3f}): {_figures(*every, gold)}")
    bands = []
    for lo in np.arange(0.2, t_first + 1e-9, 0.02):
        for hi in np.arange(t_first, 0.96, 0.02):
            flagged, escalated = cascade(first, then, t_then, float(lo), float(hi))
            f1 = measure_scores(flagged.astype(float), gold, 1.0)["f1"] or 0.0
            bands.append((-round(f1, 3), float(escalated.mean()), float(lo), float(hi)))
    for _, _, lo, hi in sorted(bands)[: args.top]:
        flagged, escalated = cascade(first, then, t_then, lo, hi)
        print(f"band [{lo:.2f}, {hi:.2f}): {_figures(flagged, escalated, gold)}")
    then_f1 = measure_scores(every[0].astype(float), gold, 1.0)["f1"] or 0.0
    reaching = [b for b in bands if -b[0] >= round(then_f1, 3)]
    if reaching:  # the cheapest band as good as the better review alone
        _, _, lo, hi = min(reaching, key=lambda b: b[1])
        flagged, escalated = cascade(first, then, t_then, lo, hi)
        figures = _figures(flagged, escalated, gold)
        print(f"least escalated at then's F1: [{lo:.2f}, {hi:.2f}): {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
