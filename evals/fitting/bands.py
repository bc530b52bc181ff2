"""A fast probe first, a better one only where the first is in doubt: measured offline.

    conscience fit bands --first runs/probe-brief-dev-three-laws \\
        --then runs/probe-paper-dev-three-laws \\
        --choose-on runs/probe-brief-train-three-laws runs/probe-paper-train-three-laws

``--first`` and ``--then`` are ``evals/probe extract`` runs of the same items in two layouts
(say the follow-up-brief layout, whose review is cheap after a generation, and the paper
layout, which reads better); each is scored by the probe of ``--probes`` fitted for its judge,
framework and layout. The cascade's verdict on an item, for a band ``lo <= hi``::

    unethical              if s_first >= hi
    ethical                if s_first <  lo
    s_then >= t_then       otherwise: the item is escalated, the second review runs

For a grid of bands it prints F1, FPR and FNR over the items, and the share of items (and of
the harmless ones) escalated: the share of reviews that pay the second review's latency; then
the least escalated band that reaches the better review's F1. A band chosen on the same items
is optimistic: ``--choose-on`` chooses it on train runs' out-of-fold scores and measures it on
``--first``/``--then``; ``--save FILE`` then adds that band to a band file
(``conscience.cascade``, ``CONSCIENCE_BAND_FILE``; the packaged one is
``conscience/calibrations/cascade.json``).
"""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from conscience.cascade import Band, save_band
from conscience.errors import ConfigError
from conscience.evals.fitting.probe import (
    cross_validated,
    extraction_of,
    load_vectors,
    measure_scores,
)
from conscience.probe import PACKAGED_PROBE, Probe, load_probes

__all__ = ["cascade", "main"]

Paired = tuple[np.ndarray, np.ndarray, np.ndarray, Probe, Probe]


def cascade(
    first: np.ndarray, then: np.ndarray, then_threshold: float, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """The cascade's flags (unethical) and the items it escalated, by the rule above."""
    if lo > hi:
        raise ConfigError(f"the band's low end {lo} is above its high end {hi}")
    escalated = (first >= lo) & (first < hi)
    flagged = np.where(escalated, then >= then_threshold, first >= hi)
    return flagged, escalated


def _f1(flagged: np.ndarray, gold: np.ndarray) -> float:
    return measure_scores(flagged.astype(float), gold, 1.0)["f1"] or 0.0


def _measured(flagged: np.ndarray, escalated: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """F1, FPR, FNR of the flags, the share escalated, and that share among harmless items."""
    measured = measure_scores(flagged.astype(float), gold, 1.0)
    harmless = float(escalated[gold == 0].mean()) if (gold == 0).any() else float("nan")
    figures = {name: round(float(measured[name] or 0.0), 3) for name in ("f1", "fpr", "fnr")}
    return {**figures, "escalated": round(float(escalated.mean()), 3), "harmless": harmless}


def _figures(flagged: np.ndarray, escalated: np.ndarray, gold: np.ndarray) -> str:
    m = _measured(flagged, escalated, gold)
    return (
        f"F1 {m['f1']:.3f}  FPR {m['fpr']:.3f}  FNR {m['fnr']:.3f}  "
        f"escalated {m['escalated']:.2f} (harmless {m['harmless']:.2f})"
    )


def _scored(
    run: Path, probes: dict[tuple[str, str, str], Probe], out_of_fold: bool
) -> tuple[dict[str, tuple[float, float]], Probe]:
    """Item id -> (score, gold) of ``run`` under the probe fitted for its prompts, and that
    probe; with ``out_of_fold``, each item scored by a head fitted without its prompt group
    (``evals.probe.cross_validated``, the probe's own L2): a train run's honest scores."""
    made = extraction_of(run)
    key = (made["judge"], made["framework"], made["layout"])
    probe = probes.get(key)
    if probe is None:
        raise ConfigError(f"no probe for {key} (the prompts of {run})")
    ids, groups, x, gold = load_vectors(run)
    if out_of_fold:
        scores = cross_validated(x, gold, groups, float(probe.fitted["l2"]))
    else:
        scores = np.array([probe.score(list(v)) for v in x])
    return dict(zip(ids, zip(scores.tolist(), gold.tolist(), strict=True), strict=True)), probe


def _paired(
    first: Path, then: Path, probes: dict[tuple[str, str, str], Probe], out_of_fold: bool
) -> Paired:
    """Both runs' scores on their shared items, the gold, and the two probes."""
    first_of, first_probe = _scored(first, probes, out_of_fold)
    then_of, then_probe = _scored(then, probes, out_of_fold)
    ids = sorted(first_of.keys() & then_of.keys())
    if not ids:
        raise ConfigError(f"{first} and {then} share no items")
    scores = [np.array([of[i][0] for i in ids]) for of in (first_of, then_of)]
    gold = np.array([first_of[i][1] for i in ids])
    if first_probe.key[:2] != then_probe.key[:2]:
        raise ConfigError(f"{first} and {then} were read by other judges or frameworks")
    return scores[0], scores[1], gold, first_probe, then_probe


def _bands(
    first: np.ndarray, then: np.ndarray, gold: np.ndarray, t_first: float, t_then: float
) -> list[tuple[float, float, float, float]]:
    """(-F1, share escalated, lo, hi) of each band of the grid, best F1 first."""
    bands = []
    for lo in np.arange(0.2, t_first + 1e-9, 0.02):
        for hi in np.arange(t_first, 0.96, 0.02):
            flagged, escalated = cascade(first, then, t_then, float(lo), float(hi))
            f1 = -round(_f1(flagged, gold), 3)
            bands.append((f1, float(escalated.mean()), float(lo), float(hi)))
    return sorted(bands)


def _cheapest(
    bands: list[tuple[float, float, float, float]], then_f1: float
) -> tuple[float, float] | None:
    """The least escalated band whose F1 reaches the better review's alone."""
    reaching = [b for b in bands if -b[0] >= round(then_f1, 3)]
    return min(reaching, key=lambda b: b[1])[2:] if reaching else None


def _choose(
    args: argparse.Namespace, probes: dict[tuple[str, str, str], Probe], dev: Paired
) -> None:
    """Choose the band on the train runs' out-of-fold scores, measure it on ``dev``, and
    save it with both measurements when asked."""
    first, then, gold, first_probe, then_probe = dev
    t_first, t_then = first_probe.threshold, then_probe.threshold
    train_first, train_then, train_gold, _, _ = _paired(
        Path(args.choose_on[0]), Path(args.choose_on[1]), probes, True
    )
    train_f1 = _f1(cascade(train_first, train_then, t_then, -np.inf, np.inf)[0], train_gold)
    chosen = _cheapest(_bands(train_first, train_then, train_gold, t_first, t_then), train_f1)
    if chosen is None:
        raise ConfigError("no band reaches the better review's F1 on the train runs")
    # Rounded outward: the band still contains the first probe's threshold.
    lo, hi = math.floor(chosen[0] * 1e4) / 1e4, math.ceil(chosen[1] * 1e4) / 1e4
    on_train = cascade(train_first, train_then, t_then, lo, hi)
    here = cascade(first, then, t_then, lo, hi)
    print(
        f"band chosen on train, out of fold: [{lo:.2f}, {hi:.2f}): "
        f"{_figures(*on_train, train_gold)}"
    )
    print(f"at that band here: {_figures(*here, gold)}")
    if args.save:
        fitted = {
            "rule": "least escalated band reaching the second review's F1, train out of fold",
            "chosen_on": list(args.choose_on),
            "train_out_of_fold": _measured(*on_train, train_gold),
            "measured_on": [args.first, args.then],
            "measured": _measured(*here, gold),
            "date": datetime.now(UTC).date().isoformat(),
        }
        band = Band(*first_probe.key, then_probe.layout, lo, hi, fitted)
        save_band(Path(args.save), band)
        print(f"saved the band for {band.key} in {args.save}")


def _grid(top: int, dev: Paired) -> None:
    """The best bands on these items, and the least escalated at the better review's F1:
    chosen on the items they are measured on, so optimistic."""
    first, then, gold, first_probe, then_probe = dev
    t_then = then_probe.threshold
    bands = _bands(first, then, gold, first_probe.threshold, t_then)
    for _, _, lo, hi in bands[:top]:
        print(f"band [{lo:.2f}, {hi:.2f}): {_figures(*cascade(first, then, t_then, lo, hi), gold)}")
    chosen = _cheapest(bands, _f1(cascade(first, then, t_then, -np.inf, np.inf)[0], gold))
    if chosen is not None:
        lo, hi = chosen
        figures = _figures(*cascade(first, then, t_then, lo, hi), gold)
        print(f"least escalated at then's F1 (chosen here): [{lo:.2f}, {hi:.2f}): {figures}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conscience fit bands")
    parser.add_argument("--first", required=True, help="the fast review's extract run")
    parser.add_argument("--then", required=True, help="the better review's extract run")
    parser.add_argument(
        "--choose-on",
        nargs=2,
        metavar=("FIRST_TRAIN", "THEN_TRAIN"),
        help="choose the band on these train runs' out-of-fold scores, then measure it on"
        " --first/--then",
    )
    parser.add_argument("--probes", default=str(PACKAGED_PROBE), help="the probe file")
    parser.add_argument(
        "--save", metavar="FILE", help="with --choose-on: add the chosen band to this band file"
    )
    parser.add_argument("--top", type=int, default=10, help="bands printed")
    args = parser.parse_args(argv)
    if args.save and not args.choose_on:
        parser.error(
            "--save needs --choose-on: a band chosen on the items it is measured on is optimistic"
        )
    probes = load_probes(Path(args.probes))
    dev = _paired(Path(args.first), Path(args.then), probes, False)
    first, then, gold, first_probe, then_probe = dev
    t_first, t_then = first_probe.threshold, then_probe.threshold
    print(f"{len(gold)} items in both runs")
    alone = cascade(first, then, t_then, t_first, t_first)
    print(f"first alone (threshold {t_first:.3f}): {_figures(*alone, gold)}")
    every = cascade(first, then, t_then, -np.inf, np.inf)
    print(f"then alone (threshold {t_then:.3f}): {_figures(*every, gold)}")
    if args.choose_on:
        _choose(args, probes, dev)
    else:
        _grid(args.top, dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
