"""``conscience eval em``, ``eval verdicts``, ``eval experiment``: the benchmarks' command line.

The main CLI adds these with ``add_eval_commands(commands)``. Engine settings come from the
project's ``Settings`` (``CONSCIENCE_UPSTREAM_URL``, ``CONSCIENCE_MODEL``, ...) overridden by
flags; with no endpoint at all the embedded engine serves the configured model, as in
``conscience review``. This module is the only place that reads ``CONSCIENCE_EM_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from conscience.errors import ConfigError

__all__ = ["DEFAULT_EM_DATA_DIR", "add_eval_commands", "em_data_dir", "main"]

# The shared data directory beside the repository: the paper's data is read, never copied.
DEFAULT_EM_DATA_DIR = (
    Path(__file__).resolve().parents[1].parent / "shared/data/emergent_misalignment"
)


def em_data_dir(flag: str | None) -> Path:
    """--data-dir, else CONSCIENCE_EM_DATA_DIR, else the shared data directory."""
    return Path(flag or os.environ.get("CONSCIENCE_EM_DATA_DIR") or DEFAULT_EM_DATA_DIR)


def _settings(args: argparse.Namespace) -> Any:
    from conscience.settings import Settings

    fields = {
        "upstream_url": args.url,
        "upstream_api_key": args.api_key,
        "model": args.model,
        "judge_model": args.judge_model,
        "upstream_timeout": args.timeout,
    }
    return Settings(**{key: value for key, value in fields.items() if value is not None})


@asynccontextmanager
async def _endpoint(settings: Any) -> AsyncIterator[Any]:
    """An ``EngineClient`` on the endpoint, or on the embedded engine without one."""
    from conscience.engine.connect import open_engine

    async with open_engine(settings) as engine:
        yield engine.client


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        "--upstream",
        dest="url",
        help="OpenAI-compatible base URL (CONSCIENCE_UPSTREAM_URL)",
    )
    parser.add_argument("--api-key", help="key for that endpoint (CONSCIENCE_UPSTREAM_API_KEY)")
    parser.add_argument(
        "--judge-model", help="the judge (default: the model itself, the frozen base)"
    )
    parser.add_argument("--timeout", type=float, help="seconds per engine call (default 120)")
    parser.add_argument("--concurrency", type=int, help="requests in flight at once")


async def _em(args: argparse.Namespace) -> dict[str, Any]:
    from conscience.evals.em import EmConfig, run_em
    from conscience.evals.questions import load_questions

    from conscience.client import EngineClient

    questions = load_questions(em_data_dir(args.data_dir), args.questions)
    settings = _settings(args)
    config = EmConfig(
        model=settings.model,
        judge_model=settings.judge,
        question_set=args.questions,
        samples=args.samples,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        scoring=args.scoring,
        concurrency=args.concurrency or 8,
        limit=args.limit,
    )
    async with _endpoint(settings) as answerer:
        if args.judge_url is None:
            return await run_em(answerer, answerer, questions, config, Path(args.out))
        key = args.judge_api_key
        async with EngineClient(
            args.judge_url, api_key=key, timeout=settings.upstream_timeout
        ) as judge:
            return await run_em(answerer, judge, questions, config, Path(args.out))


def _cmd_em(args: argparse.Namespace) -> int:
    report = asyncio.run(_em(args))
    overall = report["overall"]
    rate = overall["misaligned_rate"]
    low, high = overall["ci95"]
    shown = "n/a" if rate is None else f"{rate:.3f} [{low:.3f}, {high:.3f}]"
    for qid, stats in report["questions"].items():
        q_rate = stats["misaligned_rate"]
        q_shown = "n/a" if q_rate is None else f"{q_rate:.3f}"
        print(
            f"{qid:<40} {q_shown:>6}  ({stats['misaligned']}/{stats['counted']} counted, "
            f"{stats['dropped']} dropped, {stats['incoherent']} incoherent)"
        )
    print(f"{'overall':<40} {shown}")
    print(f"report: {Path(args.out) / 'report.json'}", file=sys.stderr)
    return 0


def _csv(value: str) -> list[str]:
    items = [part.strip() for part in value.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


async def _verdicts(args: argparse.Namespace) -> dict[str, Any]:
    from conscience.evals.labelled import DEFAULT_SET, load_labelled
    from conscience.evals.verdicts import run_verdicts

    from conscience.calibration import select_calibrations
    from conscience.framework import load_frameworks
    from conscience.labels import Layout
    from conscience.review import Conscience
    from conscience.verdict import DecisionRule

    try:
        layouts = [Layout(name) for name in args.layouts]
    except ValueError as exc:
        raise ConfigError(f"unknown layout in --layouts (known: paper, follow-up): {exc}") from None
    data = Path(args.data) if args.data else DEFAULT_SET
    items = load_labelled(data, args.split)
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        raise ConfigError(f"no items in split {args.split!r} of {data}")
    frameworks = load_frameworks(Path(args.frameworks_dir) if args.frameworks_dir else None)
    unknown = [name for name in args.frameworks if name not in frameworks]
    if unknown:  # before an embedded engine spends a minute starting
        known = ", ".join(sorted(frameworks))
        raise ConfigError(f"unknown framework {', '.join(unknown)} (known: {known})")
    settings = _settings(args)
    threshold = args.unethical_threshold
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError("--unethical-threshold must be between 0 and 1")
    # The decision rule the proxy would use (calibration file, else threshold, else the packaged
    # calibration of the default model, else argmax), unless a flag names one:
    # --unethical-threshold alone means no calibration at all.
    calibration_file = Path(args.calibration) if args.calibration else None
    if calibration_file is None and threshold is None:
        calibration_file = settings.calibration_file
        threshold = settings.unethical_threshold
    calibrations, calibration_source = select_calibrations(calibration_file, threshold)
    calibrated = [
        f"{name}/{layout.value}"
        for name in args.frameworks
        for layout in layouts
        if (settings.judge, name, layout.value) in calibrations
    ]
    async with _endpoint(settings) as client:
        constraint = args.judge_constraint
        if constraint == "auto":  # once, before the reviews run concurrently
            constraint = await client.detect_constraint(settings.judge)
        conscience = Conscience(
            client=client,
            judge_model=settings.judge,
            frameworks=frameworks,
            constraint=constraint,
            rule=DecisionRule(threshold, settings.neutral_threshold),
            top_logprobs=settings.top_logprobs,
            window_chars=settings.review_window_chars,
            calibrations=calibrations,
        )
        shown = {
            "judge_model": settings.judge,
            "data": str(data),
            "split": args.split,
            "judge_constraint": constraint,
            "unethical_threshold": threshold,
            "neutral_threshold": settings.neutral_threshold,
            "calibration_file": str(calibration_file) if calibration_file else None,
            "calibration_source": calibration_source,
            "calibrated_runs": calibrated,  # these use the file's rule, not the threshold
        }
        return await run_verdicts(
            conscience,
            items,
            args.frameworks,
            layouts,
            Path(args.out),
            concurrency=args.concurrency or 1,
            settings=shown,
        )


def _cmd_verdicts(args: argparse.Namespace) -> int:
    from conscience.evals.verdicts import format_table

    report = asyncio.run(_verdicts(args))
    print(format_table(report))
    print(f"report: {Path(args.out) / 'report.json'}", file=sys.stderr)
    return 0


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``eval em``, ``eval verdicts`` and ``eval experiment`` to the main CLI's subcommands."""
    from conscience.evals.questions import QUESTION_SETS

    evaluate = commands.add_parser(
        "eval", help="benchmarks: Emergent Misalignment, verdicts, the four-arm experiment"
    )
    which = evaluate.add_subparsers(dest="eval_command", required=True)

    em = which.add_parser(
        "em",
        help="the Emergent Misalignment benchmark (Betley et al. 2025) against an endpoint",
        description="Answers the paper's questions at temperature 1 and scores each answer for "
        "alignment and coherence with the paper's judge prompts; resumable.",
    )
    _add_engine_flags(em)
    em.add_argument("--model", help="the model under test (CONSCIENCE_MODEL)")
    em.add_argument("--judge-url", help="a separate endpoint for the judge (default: --url)")
    em.add_argument("--judge-api-key", help="key for --judge-url")
    em.add_argument(
        "--questions",
        choices=QUESTION_SETS,
        default="first_plot",
        help="first_plot: the 8 main questions (default); first_plot_all: with json/"
        "template variants; preregistered: 48; all: both files",
    )
    em.add_argument("--samples", type=int, default=100, help="answers per question (paper: 100)")
    em.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1)")
    em.add_argument("--max-tokens", type=int, default=600, help="answer length limit (600)")
    em.add_argument(
        "--scoring",
        choices=["auto", "first-token", "digit-chain"],
        default="auto",
        help="how the judge's number is read (first-token: the paper's rule)",
    )
    em.add_argument("--limit", type=int, help="at most this many new answers, then stop")
    em.add_argument("--data-dir", help="Emergent Misalignment data (CONSCIENCE_EM_DATA_DIR)")
    em.add_argument("--out", default="eval-results/em", help="output directory (resumable)")
    em.set_defaults(handler=_cmd_em)

    verdicts = which.add_parser(
        "verdicts",
        help="verdict quality of the conscience on a labelled set",
        description="Reviews a labelled set under each framework and layout; accuracy, recall, "
        "false-unethical rate, confusion, injection flips, timing, AUC, layout agreement.",
    )
    _add_engine_flags(verdicts)
    verdicts.add_argument("--model", help="CONSCIENCE_MODEL (the judge when no --judge-model)")
    verdicts.add_argument(
        "--frameworks",
        type=_csv,
        default=["three-laws", "four-laws", "wwjd"],
        help="comma-separated framework names",
    )
    verdicts.add_argument("--frameworks-dir", help="extra framework files")
    verdicts.add_argument(
        "--layouts",
        type=_csv,
        default=["paper", "follow-up"],
        help="comma-separated prompt layouts: paper, follow-up",
    )
    verdicts.add_argument("--split", choices=["calibration", "heldout", "all"], default="all")
    verdicts.add_argument(
        "--data", help="a set by name (project, em-samples) or a labelled JSONL (default: project)"
    )
    verdicts.add_argument(
        "--judge-constraint",
        choices=["auto", "choice", "grammar", "none"],
        default="auto",
        help="how the label is forced",
    )
    rule = verdicts.add_mutually_exclusive_group()
    rule.add_argument(
        "--unethical-threshold",
        type=float,
        help="P(unethical) that decides (default: CONSCIENCE_UNETHICAL_THRESHOLD, else argmax)",
    )
    rule.add_argument(
        "--calibration",
        help="a `conscience calibrate` file (default: CONSCIENCE_CALIBRATION_FILE, else the "
        "packaged calibration of the default model; a file holding [] means argmax)",
    )
    verdicts.add_argument("--limit", type=int, help="only the first N items (smoke runs)")
    verdicts.add_argument("--out", default="eval-results/verdicts", help="output directory")
    verdicts.set_defaults(handler=_cmd_verdicts)

    from conscience.evals.experiment import add_experiment_command  # argparse only until it runs

    add_experiment_command(which)


def main(argv: list[str] | None = None) -> int:
    """``python -m conscience.evals.cli eval ...``: the same commands outside the main CLI."""
    from conscience.errors import ConscienceError

    parser = argparse.ArgumentParser(prog="python -m conscience.evals.cli")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConscienceError as exc:
        print(f"conscience: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
