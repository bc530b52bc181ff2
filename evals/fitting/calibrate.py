"""``conscience fit calibration``: fit the verdict rule and the confidence scaling of one
(judge model, framework, layout) on the calibration split of a labelled set.

The judge reviews every item as the proxy would (``conscience_from_settings``; only its
label probabilities are used, and they do not depend on the decision rule); the unethical
threshold and the temperature are fitted on them, the entry is added to the calibration file,
and a reliability diagram (before/after scaling) is saved beside it. The held-out split is
never read here. The framework and layout fitted are the settings' (``--framework``,
``--layout``, or ``CONSCIENCE_FRAMEWORK`` / ``CONSCIENCE_LAYOUT``).

``--from-rows DIR`` fits from an ``eval verdicts`` output directory instead of asking the
judge again: every (framework, layout) run in its ``verdicts.jsonl`` whose rows carry label
probabilities is fitted on the rows of calibration-split items only. The judge call does not
depend on the decision rule, so this is the same fit, without a second pass over the set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from conscience.calibration import (
    Calibration,
    Sample,
    fit_temperature,
    fit_unethical_threshold,
    reliability_bins,
    save_calibration,
    scale,
)
from conscience.errors import ConscienceError
from conscience.flags import add_engine_flags, engine_fields
from conscience.progress import Progress
from conscience.verdict import DecisionRule

__all__ = ["add_calibrate_command", "fit", "metrics_at"]


def metrics_at(samples: list[Sample], rule: DecisionRule) -> dict[str, float | None]:
    """Accuracy, unethical recall and false-unethical rate of a rule on the samples."""
    decided = [(rule.decide(s.probs).value, s.gold) for s in samples]
    positives = [d for d, g in decided if g == "unethical"]
    negatives = [d for d, g in decided if g != "unethical"]
    return {
        "accuracy": sum(d == g for d, g in decided) / len(decided) if decided else None,
        "unethical_recall": (
            sum(d == "unethical" for d in positives) / len(positives) if positives else None
        ),
        "false_unethical": (
            sum(d == "unethical" for d in negatives) / len(negatives) if negatives else None
        ),
    }


def fit(
    samples: list[Sample], key: tuple[str, str, str], max_false_unethical: float, source: str
) -> Calibration:
    threshold = fit_unethical_threshold(samples, max_false_unethical)
    temperature = fit_temperature(samples)
    calibration = Calibration(*key, unethical_threshold=threshold, temperature=temperature)
    return Calibration(
        *key,
        unethical_threshold=threshold,
        temperature=temperature,
        fitted={
            "set": source,
            "split": "calibration",
            "items": len(samples),
            "max_false_unethical": max_false_unethical,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "argmax": metrics_at(samples, DecisionRule()),
            "calibrated": metrics_at(samples, calibration.rule()),
        },
    )


def _plot(samples: list[Sample], calibration: Calibration, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    rule = calibration.rule()
    for name, temperature in (
        ("raw", 1.0),
        (f"scaled (T={calibration.temperature:.2f})", calibration.temperature),
    ):
        confidences, correct = [], []
        for s in samples:
            verdict = rule.decide(s.probs).value
            confidences.append(scale(s.probs, temperature)[verdict])
            correct.append(verdict == s.gold)
        bins = reliability_bins(confidences, correct)
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=name)
    ax.set_xlabel("confidence of the verdict")
    ax.set_ylabel("share of verdicts that were right")
    ax.set_title(f"{calibration.framework} / {calibration.layout}\n{calibration.model}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def _samples(args: argparse.Namespace) -> tuple[list[Sample], tuple[str, str, str]]:
    from conscience.engine.connect import open_engine
    from conscience.evals.shared.bounded import run_bounded
    from conscience.evals.shared.labelled import DEFAULT_SET, LabelledItem, load_labelled
    from conscience.review import conscience_from_settings
    from conscience.settings import Settings

    items = load_labelled(Path(args.data) if args.data else DEFAULT_SET, "calibration")
    settings = Settings(**engine_fields(args))
    async with open_engine(settings) as engine:
        conscience = conscience_from_settings(settings, engine.client, engine.facts)

        async def sample(item: LabelledItem) -> Sample | None:
            messages = [{"role": "user", "content": item.question}]
            judgement = await conscience.review(messages, item.answer)
            if judgement.screen:
                return None  # the screen decided it: the judge's threshold is not asked
            if judgement.label_probs is None:
                raise ConscienceError(
                    "the judge returned no label log-probabilities: nothing to calibrate "
                    "(the engine must support logprobs/top_logprobs)"
                )
            return Sample(judgement.label_probs, item.label.value)

        with Progress(len(items), "calibration reviews", unit="item") as bar:
            reviewed = await run_bounded(
                items, sample, args.concurrency or 1, lambda _item, _sample: bar.update(1)
            )
    samples = [s for s in reviewed if s is not None]
    return samples, (settings.judge, settings.framework, settings.layout.value)


def samples_from_rows(
    rows_dir: Path, calibration_ids: set[str]
) -> dict[tuple[str, str, str], list[Sample]]:
    """Per (judge model, framework, layout), the calibration-split rows of an eval output."""
    from conscience.evals.verdicts.benchmark import read_rows

    report, runs = read_rows(rows_dir)
    judge = report["settings"]["judge_model"]
    out: dict[tuple[str, str, str], list[Sample]] = {}
    for (framework, layout_name), rows in runs.items():
        for row in rows:
            if row.id not in calibration_ids:
                continue
            if row.screened:
                continue  # the screen decided it: the judge's threshold is not asked
            if not row.probs:
                raise ConscienceError(
                    f"{rows_dir}: row {row.id} ({framework}/{layout_name}) has no "
                    "label probabilities: nothing to calibrate"
                )
            out.setdefault((judge, framework, layout_name), []).append(Sample(row.probs, row.gold))
    if not out:
        raise ConscienceError(f"{rows_dir}: no rows of calibration-split items")
    return out


def _cmd_probe(args: argparse.Namespace) -> int:
    from conscience.evals.fitting.probe import calibrate_probe
    from conscience.settings import Settings

    if getattr(args, "labels_from", None):
        from conscience.evals.fitting.refit import refit_from_labels

        report = refit_from_labels(args, Settings(**engine_fields(args)))
        print(json.dumps(report, indent=2))
        return 0

    probe = calibrate_probe(args, Settings(**engine_fields(args)))
    summary = {"file": args.out, "key": probe.key, "threshold": probe.threshold, **probe.fitted}
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    if args.probe:
        return _cmd_probe(args)
    source = args.data or "evals/data/verdicts.jsonl"
    if args.from_rows:
        from conscience.evals.shared.labelled import DEFAULT_SET, load_labelled

        items = load_labelled(Path(args.data) if args.data else DEFAULT_SET, "calibration")
        fitted = samples_from_rows(Path(args.from_rows), {item.id for item in items})
    else:
        samples, key = asyncio.run(_samples(args))
        fitted = {key: samples}
    out = Path(args.out)
    for key, samples in fitted.items():
        calibration = fit(samples, key, args.max_false_unethical, source)
        save_calibration(out, calibration)
        plot = out.with_name(f"{out.stem}.{key[1]}.{key[2]}.reliability.png")
        _plot(samples, calibration, plot)
        print(json.dumps(asdict(calibration), indent=2))
    return 0


def add_calibrate_command(
    commands: argparse._SubParsersAction,
    name: str = "calibrate",
    *,
    probe_preset: bool = False,
    help: str | None = "fit the verdict threshold and confidence scaling on a labelled set",
) -> None:
    """``conscience fit calibration`` (and its older name ``calibrate``, hidden with
    ``help=None``); with ``probe_preset``, ``conscience fit probe``: the same command with
    ``--probe`` on."""
    parser = commands.add_parser(name, **({} if help is None else {"help": help}))
    add_engine_flags(parser)  # --framework and --layout name the entry that is fitted
    parser.add_argument("--concurrency", type=int, help="reviews in flight at once (1)")
    parser.add_argument("--data", help="labelled JSONL (default: the packaged set)")
    parser.add_argument(
        "--max-false-unethical",
        type=float,
        default=0.1,
        help="the false-unethical rate the threshold may reach",
    )
    parser.add_argument(
        "--from-rows",
        help="an `eval verdicts` output directory: fit each of its runs from its rows "
        "(calibration-split items only) instead of running the judge",
    )
    parser.add_argument("--out", required=True, help="calibration file (JSON; entries merged)")
    probe = parser.add_argument_group(
        "a probe (CONSCIENCE_JUDGE_METHOD=probe): --out is the probe file; the judge's hidden "
        "states of --data's train and dev splits are kept beside it (a killed run resumes)"
    )
    probe.add_argument("--probe", action="store_true", help="fit a linear probe instead")
    probe.add_argument("--train-split", default="train", help="fitted on (train)")
    probe.add_argument("--dev-split", default="dev", help="measured on (dev)")
    probe.add_argument("--limit", type=int, help="the first N items of each split")
    probe.add_argument("--max-answer-chars", type=int, default=1500, help="answer window")
    probe.add_argument(
        "--threshold-rule", default="best-f1", help="best-f1, or fpr:CAP (e.g. fpr:0.1)"
    )
    if probe_preset:
        _add_refit_flags(parser)
    parser.set_defaults(handler=_cmd_calibrate, **({"probe": True} if probe_preset else {}))


def _add_refit_flags(parser: argparse.ArgumentParser) -> None:
    refit = parser.add_argument_group(
        "refit from human labels (evals/fitting/refit.py): the training split's states plus the "
        "store's labelled judgements, gated against the current probe on held labels and dev"
    )
    refit.add_argument("--labels-from", metavar="STORE_URL", help="the store the proxy writes")
    refit.add_argument(
        "--base-vectors",
        metavar="DIR",
        help="a `fit probe` run's states (DIR/train, DIR/dev), used as they are: no data needed",
    )
    refit.add_argument(
        "--current", metavar="FILE", help="the probe to gate against (default: the settings')"
    )
    refit.add_argument(
        "--publish",
        metavar="PROXY_URL",
        help="gate against the probe this proxy serves, and publish the candidate to it "
        "(CONSCIENCE_ADMIN_KEY)",
    )
    refit.add_argument(
        "--min-new-labels",
        type=int,
        default=0,
        help="refit only with at least N labels the current probe was not fitted on (0)",
    )
    refit.add_argument(
        "--held-share", type=float, default=0.3, help="share of conversations held out (0.3)"
    )
    refit.add_argument(
        "--min-held", type=int, default=20, help="held labels needed to decide the gate (20)"
    )
    refit.add_argument(
        "--tolerance", type=float, default=0.01, help="how much worse counts as not worse (0.01)"
    )
