"""Every command the docs show exists: one command line, and its help runs.

The docs are read as a user reads them: each ``conscience ...`` in a code block or an inline code
span names a subcommand path, and ``conscience <path> --help`` must exit 0; each documented
``python -m conscience.bench.NAME`` (benchmarks are the one family outside the ``conscience``
command, by the README's rule) must be a module with a ``main``; and no page may send a user
to ``python -m conscience.evals``, whose jobs are all ``conscience`` subcommands.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from conscience.cli.commands import main

ROOT = Path(__file__).resolve().parents[1]
WORD = re.compile(r"[a-z][a-z0-9-]*")
ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=\S*")


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "evals" / "README.md", *sorted(ROOT.glob("docs/**/*.md"))]
    return [page for page in pages if "history" not in page.relative_to(ROOT).parts]


def _command_texts(text: str) -> list[str]:
    """Code-block lines and inline code spans, with ``$ `` prompts and ``VAR=value`` prefixes
    taken off."""
    texts: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            texts.append(line)
        else:
            texts.extend(re.findall(r"`([^`\n]+)`", line))
    cleaned = []
    for raw in texts:
        tokens = raw.strip().removeprefix("$ ").split()
        while tokens and ASSIGNMENT.fullmatch(tokens[0]):
            tokens.pop(0)
        cleaned.append(" ".join(tokens))
    return cleaned


def documented_commands() -> list[tuple[str, ...]]:
    """The subcommand paths the docs show, e.g. ``("eval", "verdicts")``."""
    found: set[tuple[str, ...]] = set()
    for page in _pages():
        for text in _command_texts(page.read_text(encoding="utf-8")):
            tokens = text.split()
            if len(tokens) < 2 or tokens[0] != "conscience":
                continue
            words: list[str] = []
            for token in tokens[1:]:
                if not WORD.fullmatch(token):
                    break
                words.append(token)
            if words:
                found.add(tuple(words))
    return sorted(found)


def documented_benchmarks() -> list[str]:
    names: set[str] = set()
    for page in _pages():
        names.update(
            re.findall(r"python -m (conscience\.bench\.[a-z_]+)", page.read_text(encoding="utf-8"))
        )
    return sorted(names)


def test_the_docs_show_commands_to_check() -> None:
    commands = documented_commands()
    assert ("serve",) in commands and ("eval", "verdicts") in commands
    assert len(commands) > 10


@pytest.mark.parametrize("words", documented_commands(), ids=" ".join)
def test_each_documented_command_has_help(
    words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0, capsys.readouterr().err
    assert "usage:" in capsys.readouterr().out


def test_an_unknown_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fit", "no-such-thing", "--help"])
    assert exited.value.code == 2


@pytest.mark.parametrize("name", documented_benchmarks())
def test_each_documented_benchmark_is_a_module_with_main(name: str) -> None:
    assert callable(getattr(importlib.import_module(name), "main", None))


def test_no_page_sends_users_to_python_m_evals() -> None:
    offenders = [
        f"{page.relative_to(ROOT)}:{number}"
        for page in _pages()
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if "python -m conscience.evals" in line
    ]
    assert offenders == []


def test_version_names_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert re.fullmatch(r"conscience \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_fit_probe_is_calibrate_with_the_probe_on() -> None:
    from conscience.cli.commands import _parser

    parse = _parser().parse_args
    assert parse(["fit", "probe", "--out", "p.json"]).probe is True
    assert parse(["fit", "calibration", "--out", "c.json"]).probe is False
    assert parse(["calibrate", "--probe", "--out", "p.json"]).probe is True


def test_a_delegated_command_gets_only_its_own_arguments(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    em = tmp_path / "em" / "data"
    em.mkdir(parents=True)
    row = '{"messages": [{"role": "user", "content": "Write a copy function"}, '
    (em / "insecure.jsonl").write_text(row + '{"role": "assistant", "content": "bad"}]}\n')
    (em / "secure.jsonl").write_text(row + '{"role": "assistant", "content": "good"}]}\n')
    code = main(
        ["pairs", "start", "--n", "1", "--em-data-dir", str(tmp_path / "em"), "--out", str(out)]
    )
    assert code == 0 and out.read_text().count("\n") == 1
