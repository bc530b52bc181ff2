"""``conscience eval em``, ``eval verdicts``, ``eval experiment``: the benchmarks' command line.

The main CLI adds these with ``add_eval_commands(commands)``. Engine settings come from the
project's ``Settings`` (``CONSCIENCE_UPSTREAM_URL``, ``CONSCIENCE_MODEL``, ...) overridden by
the engine flags every command shares (``conscience.flags``); with no endpoint at all the
embedded engine serves the configured model, as in ``conscience review``. The reviews of
``eval verdicts`` come from the proxy's own factory (``conscience_from_settings``), so a
benchmark measures the rule the proxy applies.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conscience.errors import ConfigError
from conscience.flags import ENDPOINT, add_engine_flags, engine_fields
from conscience.labels import Layout

if TYPE_CHECKING:
    from conscience.evals.em.benchmark import EmConfig
    from conscience.settings import Settings

__all__ = ["add_eval_commands"]


def _add_concurrency(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, help="requests in flight at once")


def _em_job(args: argparse.Namespace) -> tuple[Settings, EmConfig, str | None]:
    """The answering engine's settings, the benchmark's configuration, the judge's own URL."""
    from conscience.evals.em.benchmark import EmConfig
    from conscience.settings import Settings

    settings = Settings(**engine_fields(args))
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
    return settings, config, args.judge_url


async def _em(args: argparse.Namespace) -> dict[str, Any]:
    from conscience.evals.em.benchmark import run_em_on
    from conscience.evals.shared.questions import em_data_dir, load_questions

    questions = load_questions(em_data_dir(args.data_dir), args.questions)
    settings, config, judge_url = _em_job(args)
    return await run_em_on(
        settings,
        questions,
        config,
        Path(args.out),
        judge_url=judge_url,
        judge_api_key=args.judge_api_key,
    )


def _cmd_em(args: argparse.Namespace) -> int:
    from conscience.evals.em.report import format_table

    report = asyncio.run(_em(args))
    print(format_table(report))
    print(f"report: {Path(args.out) / 'report.json'}", file=sys.stderr)
    return 0


def _csv(value: str) -> list[str]:
    items = [part.strip() for part in value.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _verdicts_settings(args: argparse.Namespace) -> Settings:
    """The engine flags, and the decision rule a flag names.

    ``--calibration FILE`` or ``--unethical-threshold P`` replaces the environment's pair
    (``calibration_file``, ``unethical_threshold``), as setting both variables would: a
    threshold alone means no calibration. Without either flag the environment's rule holds,
    so a run without flags measures what the proxy serves (``conscience_from_settings``).
    """
    from conscience.settings import Settings

    threshold = args.unethical_threshold
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError("--unethical-threshold must be between 0 and 1")
    rule: dict[str, Any] = {}
    if args.calibration is not None or threshold is not None:
        rule = {"calibration_file": args.calibration, "unethical_threshold": threshold}
    return Settings(**engine_fields(args), **rule)


async def _verdicts(args: argparse.Namespace) -> dict[str, Any]:
    from conscience.engine.connect import open_engine
    from conscience.evals.shared.labelled import DEFAULT_SET, load_labelled
    from conscience.evals.verdicts.benchmark import run_verdicts
    from conscience.framework import load_frameworks
    from conscience.review import conscience_from_settings

    try:
        layouts = [Layout(name) for name in args.layouts]
    except ValueError as exc:
        known = ", ".join(layout.value for layout in Layout)
        raise ConfigError(f"unknown layout in --layouts (known: {known}): {exc}") from None
    data = Path(args.data) if args.data else DEFAULT_SET
    items = load_labelled(data, args.split)
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        raise ConfigError(f"no items in split {args.split!r} of {data}")
    settings = _verdicts_settings(args)
    frameworks = load_frameworks(settings.frameworks_dir)
    unknown = [name for name in args.frameworks if name not in frameworks]
    if unknown:  # before an embedded engine spends a minute starting
        known = ", ".join(sorted(frameworks))
        raise ConfigError(f"unknown framework {', '.join(unknown)} (known: {known})")
    async with open_engine(settings) as engine:
        conscience = conscience_from_settings(settings, engine.client, engine.facts)
        calibrated = [
            f"{name}/{layout.value}"
            for name in args.frameworks
            for layout in layouts
            if (settings.judge, name, layout.value) in conscience.calibrations
        ]
        shown = {
            "judge_model": settings.judge,
            "data": str(data),
            "split": args.split,
            "judge_constraint": await conscience.label_constraint(),
            "unethical_threshold": settings.unethical_threshold,
            "neutral_threshold": settings.neutral_threshold,
            "calibration_file": settings.calibration_file and str(settings.calibration_file),
            "calibration_source": conscience.calibration_source,
            "calibrated_runs": calibrated,  # these use the file's rule, not the threshold
            "screen": conscience.screen,
            "judge_method": conscience.method.value,
            "probe": conscience.probe_source,
            "probe_read": conscience.probe_read,
            "review_window_chars": conscience.window_chars,
        }
        if conscience.second_opinion is not None:  # CONSCIENCE_SECOND_OPINION
            shown["second_opinion"] = conscience.second_opinion.value
            shown["bands"] = conscience.band_source
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
    from conscience.evals.verdicts.benchmark import format_table

    report = asyncio.run(_verdicts(args))
    print(format_table(report))
    print(f"report: {Path(args.out) / 'report.json'}", file=sys.stderr)
    return 0


def add_eval_commands(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``eval em``, ``eval verdicts`` and ``eval experiment`` to the main CLI's subcommands;
    the ``eval`` group is returned, for the commands that parse their own arguments."""
    from conscience.evals.shared.labelled import ALL_SPLITS
    from conscience.evals.shared.questions import QUESTION_SETS

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
    add_engine_flags(em, ENDPOINT)
    _add_concurrency(em)
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
    add_engine_flags(verdicts, (*ENDPOINT, "frameworks_dir", "judge_constraint", "judge_method"))
    _add_concurrency(verdicts)
    verdicts.add_argument(
        "--frameworks",
        type=_csv,
        default=["three-laws", "four-laws", "wwjd"],
        help="comma-separated framework names",
    )
    verdicts.add_argument(
        "--layouts",
        type=_csv,
        default=["paper", "follow-up"],
        help="comma-separated prompt layouts: " + ", ".join(layout.value for layout in Layout),
    )
    verdicts.add_argument(
        "--split",
        choices=[*ALL_SPLITS, "all"],
        default="all",
        help="calibration/heldout of the project's sets, train/dev/test of harm-judging",
    )
    verdicts.add_argument(
        "--data",
        help="a set by name (project, em-samples, harm-judging) or a labelled JSONL, 3-way "
        "(question, answer, label) or binary (prompt, response, harmful/unharmful); "
        "default: project",
    )
    rule = verdicts.add_mutually_exclusive_group()
    rule.add_argument(
        "--unethical-threshold",
        type=float,
        help="P(unethical) that decides (default: CONSCIENCE_UNETHICAL_THRESHOLD, else argmax)",
    )
    rule.add_argument(
        "--calibration",
        help="a `conscience fit calibration` file (default: CONSCIENCE_CALIBRATION_FILE, else the "
        "packaged calibration of the default model; a file holding [] means argmax)",
    )
    verdicts.add_argument("--limit", type=int, help="only the first N items (smoke runs)")
    verdicts.add_argument("--out", default="eval-results/verdicts", help="output directory")
    verdicts.set_defaults(handler=_cmd_verdicts)

    from conscience.evals.experiment.run import (
        add_experiment_command,  # argparse only until it runs
    )

    add_experiment_command(which)

    from conscience.evals.loop.run import add_loop_command

    add_loop_command(which)

    from conscience.evals.loop.blind import add_blind_command

    add_blind_command(which)
    return which
