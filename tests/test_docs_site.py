"""The documentation site builds strictly: a broken link or anchor fails it, and its reference
pages are written from the code (every setting, every subcommand)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conscience.cli.reference import cli_markdown, settings_markdown
from conscience.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="the docs extra is not installed")


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    """The site's config and pages under ``tmp_path``, to break without touching the repo."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    text = text.replace("docs_dir: docs", f"docs_dir: {tmp_path / 'docs'}")
    text = text.replace(
        "  - scripts/mkdocs_hooks.py", f"  - {ROOT / 'scripts' / 'mkdocs_hooks.py'}"
    )
    config = tmp_path / "mkdocs.yml"
    config.write_text(text, encoding="utf-8")
    return config


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    built = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text()
    assert "CONSCIENCE_STORE_URL" in settings and "<table>" in settings


@pytest.mark.parametrize(
    "broken", ["[a page](no-such-page.md)", "[a section](concepts.md#no-such-section)"]
)
def test_a_broken_link_fails_the_build(tmp_path: Path, broken: str) -> None:
    config = _copy(tmp_path)
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as page:
        page.write(f"\nSee {broken}.\n")
    built = _build(config, tmp_path / "site")
    assert built.returncode != 0
    assert "no-such" in built.stderr


def test_the_settings_reference_lists_every_setting() -> None:
    page = settings_markdown()
    missing = [name for name in Settings.model_fields if f"`CONSCIENCE_{name.upper()}`" not in page]
    assert missing == []


def test_the_cli_reference_holds_every_subcommand_help() -> None:
    page = cli_markdown()
    for words in ["serve", "fit probe", "eval verdicts", "eval rescore", "pairs start"]:
        assert f"### conscience {words}\n" in page
    assert "usage: conscience fit probe" in page and "usage: conscience eval rescore" in page
