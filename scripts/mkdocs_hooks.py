"""MkDocs hooks: the reference pages are written from the code at build time.

A page line ``<!-- generated: settings -->`` becomes the settings tables, ``<!-- generated: cli
-->`` every subcommand's help (``conscience.cli.reference``), and ``<!-- include: README.md
SECTION -->`` the README's ``## SECTION`` (to its next ``## ``), so the README stays the one
copy of what it holds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- (generated|include): (.+?) -->$", re.M)


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise ValueError(f"README.md has no section '## {title}'")
    return match.group(1).strip() + "\n"


def _expand(match: re.Match[str]) -> str:
    kind, what = match.group(1), match.group(2).strip()
    from conscience.cli.reference import cli_markdown, settings_markdown

    if kind == "generated":
        writers = {"settings": settings_markdown, "cli": cli_markdown}
        if what not in writers:
            raise ValueError(f"no generated page part named {what!r}")
        return writers[what]()
    source, _, section = what.partition(" ")
    if source != "README.md":
        raise ValueError(f"only README.md sections can be included, not {source!r}")
    return _readme_section(section)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(_expand, markdown)
