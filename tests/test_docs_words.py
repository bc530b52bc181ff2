"""The user docs speak to users: no page cites a tracker issue by number ("issue 14") or a
file that is not in the repository (DESIGN.md, docs/notes/). A page under docs/history/, if
one exists, is a record and is not checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ISSUE = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
MISSING = re.compile(r"DESIGN\.md|docs/notes/?")


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "evals" / "README.md"]
    history = ROOT / "docs" / "history"
    pages += [p for p in sorted((ROOT / "docs").rglob("*.md")) if history not in p.parents]
    return [p for p in pages if p.is_file()]


def _hits(pattern: re.Pattern[str], page: Path) -> list[str]:
    """Every match, a mention split over two lines ("issue\n14") included."""
    text = re.sub(r"\s+", " ", page.read_text(encoding="utf-8"))
    return [f"{page.relative_to(ROOT)}: {m.group(0)!r}" for m in pattern.finditer(text)]


def test_pages_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _pages()}
    assert {"README.md", "evals/README.md", "docs/index.md"} <= names


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_issue_numbers(page: Path) -> None:
    assert _hits(ISSUE, page) == []


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_missing_files(page: Path) -> None:
    assert _hits(MISSING, page) == []


def test_the_patterns_catch_what_they_mean() -> None:
    for text in ("issue 14", "Issue #7", "issues 14 and 16", "(issue\n16, item 3)"):
        assert ISSUE.search(re.sub(r"\s+", " ", text)), text
    for text in ("the issue's target", "tissue 5", "issues"):
        assert not ISSUE.search(text), text
    assert MISSING.search("DESIGN.md section 6") and MISSING.search("see docs/notes/vllm.md")
