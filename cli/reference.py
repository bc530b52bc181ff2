"""The reference pages of the documentation, written from the code so they cannot drift.

- ``settings_markdown()``: every field of ``conscience.settings.Settings`` — its environment
  variable, type, default, bounds and the comment that explains it in the source — grouped by
  the source's ``# --- section`` lines;
- ``cli_markdown()``: every ``conscience`` subcommand with its ``--help``, as the command
  prints it (delegated commands included).

The documentation build (``scripts/mkdocs_hooks.py``) puts them in place of a marker line.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import os
from collections.abc import Iterator

from pydantic_core import PydanticUndefined

__all__ = ["cli_markdown", "settings_markdown"]


def _comment(line: str) -> str:
    _code, sep, comment = line.partition("  # ")
    return comment.strip() if sep else ""


def _constraints(value: ast.expr | None) -> str:
    if not (isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Field"):
        return ""
    return ", ".join(
        f"{kw.arg} {ast.unparse(kw.value)}"
        for kw in value.keywords
        if kw.arg not in (None, "default_factory")
    )


def _default(name: str) -> str:
    from conscience.settings import Settings

    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return f"computed: `{field.default_factory.__name__}()`"
    default = field.default
    if default is PydanticUndefined:
        return "required"
    if default is None or default == []:
        return "unset" if default is None else "none"
    return f"`{getattr(default, 'value', default)}`"


def _type(name: str, annotation: str) -> str:
    """The annotation in words a user types: an enum's values, ``or`` for a union."""
    import enum
    import typing

    from conscience.settings import Settings

    hint = Settings.model_fields[name].annotation
    choices = [
        a
        for a in (*typing.get_args(hint), hint)
        if isinstance(a, type) and issubclass(a, enum.Enum)
    ]
    if choices:
        values = ", ".join(f"`{member.value}`" for member in choices[0])
        return f"one of {values}" + (" or unset" if "None" in annotation else "")
    return f"`{annotation}`".replace(" | ", "` or `")


def _settings_rows() -> Iterator[tuple[str, str, str, str, str, str]]:
    """(section, name, type, default, bounds, explanation) per field, in source order."""
    from conscience import settings

    source = inspect.getsource(settings)
    lines = source.splitlines()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    section = "general"
    previous_end = cls.body[0].end_lineno or cls.lineno
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            previous_end = node.end_lineno or node.lineno
            continue
        above: list[str] = []
        for line in lines[previous_end : node.lineno - 1]:
            text = line.strip()
            if text.startswith("# ---"):
                section, above = text.removeprefix("# ---").strip(), []
            elif text.startswith("#"):
                above.append(text.removeprefix("#").strip())
        explanation = " ".join([*above, _comment(lines[node.lineno - 1])]).strip()
        name = node.target.id
        annotation = ast.unparse(node.annotation).replace(
            "Annotated[list[SecretStr], NoDecode]", "list[SecretStr]"
        )
        yield (
            section,
            name,
            _type(name, annotation),
            _default(name),
            _constraints(node.value),
            explanation,
        )
        previous_end = node.end_lineno or node.lineno


def settings_markdown() -> str:
    """Every setting, as Markdown tables by section."""
    out: list[str] = []
    section = None
    for where, name, annotation, default, bounds, explanation in _settings_rows():
        if where != section:
            section = where
            out += ["", f"### {section[:1].upper()}{section[1:]}", ""]
            out += ["| variable | type | default | explanation |", "|---|---|---|---|"]
        text = explanation + (f" ({bounds})" if bounds else "")
        cell = text.replace("|", "\\|")
        out.append(f"| `CONSCIENCE_{name.upper()}` | {annotation} | {default} | {cell} |")
    return "\n".join(out).strip() + "\n"


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield path
    for action in actions:
        for name, sub in action.choices.items():
            if name == "calibrate":  # the older name of `fit calibration`, not listed
                continue
            yield from _leaves(sub, (*path, name))


def _help(words: tuple[str, ...]) -> str:
    from conscience.cli.commands import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        main([*words, "--help"])
    return buffer.getvalue().rstrip()


def cli_markdown() -> str:
    """Each subcommand's ``--help``, as printed (80 columns)."""
    from conscience.cli.commands import _parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        out = ["```text", _help(()), "```"]
        for words in _leaves(_parser()):
            if words and words[0] == "adapter" and len(words) > 1:
                continue
            out += ["", f"### conscience {' '.join(words)}", "", "```text", _help(words), "```"]
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(out) + "\n"
