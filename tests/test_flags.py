"""One set of engine flags: every command that reaches an engine takes the same flags, both
spellings of the URL, and they land in the same ``Settings`` fields."""

import argparse

import pytest

from conscience.cli.commands import _parser
from conscience.flags import ENDPOINT, REVIEW, add_engine_flags, engine_fields
from conscience.settings import Settings

# The commands with engine flags, and what else each one requires on its command line.
REQUIRED = {
    ("review",): ["--question", "Q", "--answer", "A"],
    ("serve",): [],
    ("calibrate",): ["--out", "calibration.json"],
    ("fit", "calibration"): ["--out", "calibration.json"],
    ("fit", "probe"): ["--out", "probe.json"],
    ("eval", "em"): [],
    ("eval", "verdicts"): [],
}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (command path, parser) of a command that runs, subcommands walked."""
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not commands:
        yield path, parser
    for action in commands:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*path, name))


def test_every_command_that_reaches_an_engine_is_listed() -> None:
    with_flags = {
        path
        for path, parser in _leaves(_parser())
        if any(action.dest == "upstream_url" for action in parser._actions)
    }
    assert with_flags == set(REQUIRED)


@pytest.mark.parametrize("command", sorted(REQUIRED), ids=" ".join)
@pytest.mark.parametrize("spelling", ["--url", "--upstream"])
def test_both_spellings_reach_the_upstream_url(command: tuple[str, ...], spelling: str) -> None:
    url = "http://engine:8000/v1"
    args = _parser().parse_args([*command, spelling, url, *REQUIRED[command]])
    assert engine_fields(args)["upstream_url"] == url
    assert Settings(**engine_fields(args)).upstream_url == url


@pytest.mark.parametrize("command", sorted(REQUIRED), ids=" ".join)
def test_the_endpoint_flags_set_the_same_fields_everywhere(command: tuple[str, ...]) -> None:
    argv = ["--url", "http://e/v1", "--api-key", "sk", "--model", "m", "--judge-model", "j"]
    args = _parser().parse_args([*command, *argv, "--timeout", "7", *REQUIRED[command]])
    fields = engine_fields(args)
    assert {k: fields[k] for k in ENDPOINT} == {
        "upstream_url": "http://e/v1",
        "upstream_api_key": "sk",
        "model": "m",
        "judge_model": "j",
        "upstream_timeout": 7.0,
    }
    settings = Settings(**fields)
    assert settings.upstream_api_key.get_secret_value() == "sk"
    assert (settings.judge, settings.upstream_timeout) == ("j", 7.0)


def test_a_flag_not_given_sets_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment, not a flag's default, decides what was not given.
    monkeypatch.setenv("CONSCIENCE_UPSTREAM_URL", "http://from-env/v1")
    monkeypatch.setenv("CONSCIENCE_FRAMEWORK", "wwjd")
    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    args = parser.parse_args(["--layout", "follow-up"])
    assert engine_fields(args) == {"layout": "follow-up"}
    settings = Settings(**engine_fields(args))
    assert (settings.upstream_url, settings.framework) == ("http://from-env/v1", "wwjd")
    assert settings.layout.value == "follow-up"


def test_review_flags_where_a_command_reviews() -> None:
    parser = argparse.ArgumentParser()
    add_engine_flags(parser, ENDPOINT)
    args = parser.parse_args([])
    assert not any(hasattr(args, name) for name in REVIEW)
    args = _parser().parse_args(
        ["calibrate", "--out", "c.json", "--framework", "wwjd", "--layout", "follow-up",
         "--frameworks-dir", "fw", "--judge-constraint", "grammar"]
    )  # fmt: skip
    assert engine_fields(args) == {
        "framework": "wwjd",
        "layout": "follow-up",
        "frameworks_dir": "fw",
        "judge_constraint": "grammar",
    }
