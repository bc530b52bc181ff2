"""Every `conscience` command line that the deployment runs exists in the real CLI.

The command lines come from the Dockerfile, docker-compose.yml (through the image's entrypoint
or a deploy/ script), deploy/*.sh and the code blocks of docs/deploy.md; the CLI's subcommands
and flags come from the argparse parser itself, so the two cannot drift apart unnoticed.
"""

import contextlib
import io

import pytest
from deploy_files import (
    doc_conscience_commands,
    flags,
    image_invocations,
    option_strings,
    resolve,
    substitute_variables,
)

from conscience.cli.commands import _parser

INVOCATIONS = image_invocations()
DOC_COMMANDS = [("docs/deploy.md", argv) for argv in doc_conscience_commands()]


def _id(case: tuple[str, list[str]]) -> str:
    where, argv = case
    return f"{where}: conscience {' '.join(argv[:2])}"


def test_the_deployment_runs_the_commands_it_is_meant_to():
    """What the image, the compose services and the scripts run (and so what the CLI must have)."""
    used = {(where, tuple(argv[:1])) for where, argv in INVOCATIONS}
    assert ("Dockerfile ENTRYPOINT + CMD", ("serve",)) in used
    assert ("docker-compose.yml service proxy via /app/deploy/serve.sh", ("serve",)) in used
    assert ("docker-compose.yml service proxy-cpu", ("serve",)) in used
    assert ("docker-compose.yml service trainer via /app/deploy/nightly.sh", ("train",)) in used
    train = next(argv for where, argv in INVOCATIONS if argv[:1] == ["train"])
    assert flags(train) == [
        "--store",
        "--base-model",
        "--out",
        "--publish",
        "--proxy-admin",
        "--max-minutes",
        "--init-adapter",
    ]
    assert ("docker-compose.yml service trainer-cpu via /app/deploy/nightly.sh", ("train",)) in used
    assert {tuple(flags(argv)) for _, argv in INVOCATIONS if argv[:1] == ["serve"]} == {("--host",)}


@pytest.mark.parametrize("case", INVOCATIONS + DOC_COMMANDS, ids=_id)
def test_subcommands_and_flags_exist_in_the_cli(case):
    where, argv = case
    try:
        path, leaf, rest = resolve(_parser(), argv)
    except LookupError as exc:
        pytest.fail(f"{where}: {exc}")
    known = option_strings(leaf)
    unknown = [flag for flag in flags(rest) if flag not in known]
    assert not unknown, (
        f"{where}: `conscience {' '.join(path)}` has no {unknown}; it has {sorted(known)}"
    )


@pytest.mark.parametrize("case", INVOCATIONS + DOC_COMMANDS, ids=_id)
def test_the_real_parser_accepts_each_command_line(case):
    """Beyond flag names: required flags present, choices valid, values of the right type."""
    where, argv = case
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            _parser().parse_args(substitute_variables(argv))
    except SystemExit as exc:
        if exc.code == 0:  # --help, say
            return
        pytest.fail(f"{where}: `conscience {' '.join(argv)}` is refused: {stderr.getvalue()}")
