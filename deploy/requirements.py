"""Print the project's requirements for some extras, one per line, from pyproject.toml alone.

    python requirements.py engine,train [pyproject.toml] > requirements.txt

The Dockerfile installs these before it copies the source, so the dependency layer (torch is
gigabytes) is rebuilt only when pyproject.toml changes, not on every code change. An extra that
pyproject.toml does not define is an error, never silently nothing.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["requirements"]


def requirements(pyproject: Path, extras: Sequence[str]) -> list[str]:
    """The core dependencies, then each extra's, in order, without duplicates."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        known = ", ".join(sorted(optional)) or "none"
        raise ValueError(f"unknown extra(s) {', '.join(unknown)}; pyproject.toml has: {known}")
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines.extend(optional[extra])
    return list(dict.fromkeys(lines))


def main(argv: Sequence[str]) -> int:
    extras = [extra.strip() for extra in (argv[0] if argv else "").split(",") if extra.strip()]
    pyproject = Path(argv[1] if len(argv) > 1 else "pyproject.toml")
    try:
        print("\n".join(requirements(pyproject, extras)))
    except (OSError, KeyError, ValueError) as exc:
        print(f"requirements.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
