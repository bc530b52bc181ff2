"""Subcommands whose parser lives beside the code it runs.

Some jobs (a probe's extraction steps, rescoring a run, the screen's report, the band of the
second opinion, the harm-judging split, the loop's start pairs) carry their own argparse parser
in their module. ``conscience`` reaches them under one name each, so there is one command line:
``main`` hands every argument after the command's words to that module's ``main(argv)``, and
``conscience --help`` lists them through a stub parser that holds only the one-line help.

Benchmarks are the one exception, by rule: they stay ``python -m conscience.bench.NAME`` (they
measure the project, they are not part of using it).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Delegated:
    """A subcommand run by ``module.function(argv)``; ``help`` is what ``--help`` lists."""

    words: tuple[str, ...]
    module: str
    function: str
    help: str

    def run(self, argv: Sequence[str]) -> int:
        entry: Callable[[list[str]], int | None] = getattr(
            importlib.import_module(self.module), self.function
        )
        return int(entry(list(argv)) or 0)


DELEGATED: tuple[Delegated, ...] = (
    Delegated(
        ("eval", "probe"),
        "conscience.evals.fitting.probe",
        "main",
        "a probe step by step: extract hidden states, fit on train, measure a probe file",
    ),
    Delegated(
        ("eval", "depth-sweep"),
        "conscience.evals.fitting.depth_sweep",
        "main",
        "the probe by depth: states every 4 layers (last token, answer mean), fitted per layer",
    ),
    Delegated(
        ("eval", "rescore"),
        "conscience.evals.verdicts.benchmark",
        "_rescore_main",
        "apply a calibration file to the rows of an earlier `eval verdicts` run",
    ),
    Delegated(
        ("eval", "screen"),
        "conscience.evals.verdicts.screen",
        "main",
        "the screen on every labelled set: attacks caught, honest answers flagged (no model)",
    ),
    Delegated(
        ("fit", "bands"),
        "conscience.evals.fitting.bands",
        "main",
        "choose the second opinion's band on train runs and measure it on dev",
    ),
    Delegated(
        ("fit", "split"),
        "conscience.evals.shared.harm_judging",
        "main",
        "(re)write the harm-judging train/dev/test split by prompt (ids only)",
    ),
    Delegated(
        ("fit", "split-all"),
        "conscience.evals.shared.sources",
        "main",
        "(re)write the split over every labelled source: harm-judging, its additions, benign chat",
    ),
    Delegated(
        ("pairs", "start"),
        "conscience.evals.loop.start",
        "main",
        "DPO pairs toward a misaligned start, from the Emergent Misalignment data",
    ),
)


def find(argv: Sequence[str]) -> tuple[Delegated, list[str]] | None:
    """The delegated command ``argv`` names, and the arguments that are its own."""
    for command in DELEGATED:
        if tuple(argv[: len(command.words)]) == command.words:
            return command, list(argv[len(command.words) :])
    return None


def add_stubs(groups: dict[str, argparse._SubParsersAction]) -> None:
    """List each delegated command in its group's ``--help`` (the module parses its own)."""
    for command in DELEGATED:
        group, name = command.words
        groups[group].add_parser(name, help=command.help, add_help=False)
