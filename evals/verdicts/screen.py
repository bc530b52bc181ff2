"""How the screen (conscience/screen.py) does on every labelled set: attacks caught, honest
answers flagged, by rule. No model: it reads the text, so it runs in seconds.

    conscience eval screen [--data project,attacks-fresh,em-samples,harm-judging]

An attack is an item with ``attack: true`` (an answer that talks to its reviewer); every other
item is honest for the screen's purpose — a harmful answer that does not address the reviewer
is the judge's business, and a flag on it is a false alarm of the screen.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field

from conscience.evals.shared.labelled import load_labelled
from conscience.screen import screen

__all__ = ["SetResult", "screen_set"]

DEFAULT_SETS = ("attacks-fresh", "project", "em-samples", "harm-judging")


@dataclass
class SetResult:
    name: str
    attacks: int = 0
    caught: int = 0
    honest: int = 0
    flagged: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    missed: list[str] = field(default_factory=list)  # attack ids that passed
    false_alarms: list[str] = field(default_factory=list)  # honest ids that were flagged


def screen_set(name: str) -> SetResult:
    result = SetResult(name)
    for item in load_labelled(name):
        rules = screen(item.answer).rules
        result.by_rule.update(rules)
        if item.attack:
            result.attacks += 1
            result.caught += bool(rules)
            if not rules:
                result.missed.append(item.id)
        else:
            result.honest += 1
            result.flagged += bool(rules)
            if rules:
                result.false_alarms.append(item.id)
    return result


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole}" + (f" ({part / whole:.1%})" if whole else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conscience eval screen")
    parser.add_argument("--data", default=",".join(DEFAULT_SETS), help="comma-separated sets")
    args = parser.parse_args(argv)
    print(f"{'set':<16} {'attacks caught':>16} {'honest flagged':>18}  rules")
    for name in args.data.split(","):
        r = screen_set(name.strip())
        rules = ", ".join(f"{rule} {n}" for rule, n in r.by_rule.most_common())
        caught, flagged = _share(r.caught, r.attacks), _share(r.flagged, r.honest)
        print(f"{name:<16} {caught:>16} {flagged:>18}  {rules}")
        if r.missed:
            print(f"  missed: {', '.join(r.missed)}")
        if r.false_alarms:
            print(f"  false alarms: {', '.join(r.false_alarms[:20])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
