"""The engine flags every command shares, and the ``Settings`` fields they set.

``conscience review``, ``serve``, ``fit``, ``eval em`` and ``eval verdicts`` reach an
engine the same way: one table here names each flag, its spellings and the ``Settings`` field
it overrides (the flag's ``dest`` is the field's name). A flag that is not given sets nothing,
so the environment (``CONSCIENCE_*``) and the defaults apply as ``Settings`` says. argparse
only: importing this module loads nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["ENDPOINT", "REVIEW", "add_engine_flags", "engine_fields"]

# Settings field -> (spellings, argparse options).
_FLAGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "upstream_url": (
        ("--upstream", "--url"),  # the proxy's name and the benchmarks' name, both everywhere
        {
            "metavar": "URL",
            "help": "OpenAI-compatible base URL (CONSCIENCE_UPSTREAM_URL; none: the embedded "
            "engine on the configured model)",
        },
    ),
    "upstream_api_key": (
        ("--api-key",),
        {"metavar": "KEY", "help": "key for that endpoint (CONSCIENCE_UPSTREAM_API_KEY)"},
    ),
    "model": (
        ("--model",),
        {"help": "the generating model (CONSCIENCE_MODEL; the judge too without --judge-model)"},
    ),
    "judge_model": (
        ("--judge-model",),
        {"help": "the frozen judge (CONSCIENCE_JUDGE_MODEL; default: the model itself)"},
    ),
    "upstream_timeout": (
        ("--timeout",),
        {
            "type": float,
            "metavar": "SECONDS",
            "help": "seconds per engine call (CONSCIENCE_UPSTREAM_TIMEOUT, 120)",
        },
    ),
    "framework": (("--framework",), {"help": "ethics framework (CONSCIENCE_FRAMEWORK)"}),
    "frameworks_dir": (
        ("--frameworks-dir",),
        {"help": "extra framework files (CONSCIENCE_FRAMEWORKS_DIR)"},
    ),
    "layout": (
        ("--layout",),
        {
            "choices": ["paper", "follow-up", "follow-up-brief"],
            "help": "review prompt layout (CONSCIENCE_LAYOUT)",
        },
    ),
    "judge_constraint": (
        ("--judge-constraint",),
        {
            "choices": ["auto", "choice", "grammar", "none"],
            "help": "how the label is forced (CONSCIENCE_JUDGE_CONSTRAINT; auto asks the engine)",
        },
    ),
    "judge_method": (
        ("--judge-method",),
        {
            "choices": ["single", "probe"],
            "help": "one question, read from the label's log-probs; or a linear probe on the "
            "judge's hidden state (CONSCIENCE_JUDGE_METHOD, probe)",
        },
    ),
}
ENDPOINT = ("upstream_url", "upstream_api_key", "model", "judge_model", "upstream_timeout")
REVIEW = ("framework", "frameworks_dir", "layout", "judge_constraint", "judge_method")


def add_engine_flags(
    parser: argparse.ArgumentParser, fields: Sequence[str] = (*ENDPOINT, *REVIEW)
) -> None:
    """Add the flags of ``fields`` (``Settings`` names; default: the endpoint and the review)."""
    for name in fields:
        spellings, options = _FLAGS[name]
        parser.add_argument(*spellings, dest=name, **options)


def engine_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Settings`` fields the engine flags in ``args`` set: only those that were given."""
    given = {name: getattr(args, name, None) for name in _FLAGS}
    return {name: value for name, value in given.items() if value is not None}
