"""A word diff of the answer the model wrote and what the client received, as two escaped
columns: words only in the original are ``<del>``, words only in what was served ``<ins>``."""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from conscience.server.console.markup import Html, el, join

__all__ = ["word_diff"]

_TOKEN = re.compile(r"\s+|[^\s]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def word_diff(original: str, served: str) -> tuple[Html, Html]:
    """(the original with its removed words marked, the served text with its added words).

    Whitespace alone between two changes is part of the change, so that a rewritten sentence
    reads as one marked run, not a word at a time."""
    a, b = _tokens(original), _tokens(served)
    runs: list[list[object]] = []  # [changed, removed, added]
    matcher = SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        removed, added = "".join(a[i1:i2]), "".join(b[j1:j2])
        changed = op != "equal"
        if runs and runs[-1][0] and (changed or not removed.strip()):
            runs[-1][1] = f"{runs[-1][1]}{removed}"  # a change, or blank space after one
            runs[-1][2] = f"{runs[-1][2]}{added}"
            runs[-1].append(changed)
        else:
            runs.append([changed, removed, added, changed])
    left: list[Html] = []
    right: list[Html] = []
    for run in runs:
        changed, removed, added = bool(run[0]), str(run[1]), str(run[2])
        if not changed:
            left.append(join([removed]))
            right.append(join([added]))
            continue
        # Trailing blank space that no later change followed is plain text again.
        tail_a = removed[len(removed.rstrip()) :] if not run[-1] else ""
        tail_b = added[len(added.rstrip()) :] if not run[-1] else ""
        removed, added = removed[: len(removed) - len(tail_a)], added[: len(added) - len(tail_b)]
        if removed:
            left.append(el("del", removed))
        if added:
            right.append(el("ins", added))
        left.append(join([tail_a]))
        right.append(join([tail_b]))
    return join(left), join(right)
