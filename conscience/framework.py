"""Ethics frameworks as data: one TOML file each, with its review and rewrite templates.

The built-in frameworks live in ``conscience/frameworks/``; a user adds one by dropping a
``NAME.toml`` into the directory named by the ``frameworks_dir`` setting (a user file of the
same name replaces the built-in). A malformed file fails at start with its path and the
problem, never at the first request.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from pathlib import Path

from conscience.errors import ConfigError

__all__ = ["BUILTIN_DIR", "Framework", "load_framework_file", "load_frameworks"]

BUILTIN_DIR = Path(__file__).parent / "frameworks"

# Each template field and the placeholders it may use. System templates hold only the
# framework's own text, so they are a constant prefix that an engine's prefix cache reuses.
_TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "review_system": frozenset({"title", "laws_name", "laws"}),
    "review_user": frozenset({"question", "answer", "laws_name"}),
    "follow_up_user": frozenset({"title", "laws_name", "laws"}),
    "rewrite_system": frozenset({"title", "laws_name", "laws"}),
    "rewrite_user": frozenset({"question", "answer", "laws_name"}),
}
_TEXT_FIELDS = ("name", "title", "laws_name", "laws")
# Placeholders a template cannot do without: a review that never shows the answer is no review.
_REQUIRED_PLACEHOLDERS = {
    "review_user": {"question", "answer"},
    "rewrite_user": {"question", "answer"},
}


@dataclass(frozen=True)
class Framework:
    name: str
    title: str
    laws_name: str
    laws: str
    review_system: str
    review_user: str
    follow_up_user: str
    rewrite_system: str
    rewrite_user: str
    source: Path

    def render(self, field: str, **values: str) -> str:
        """Fill one template; the framework's own texts are always available."""
        own = {"title": self.title, "laws_name": self.laws_name, "laws": self.laws.strip()}
        return getattr(self, field).format(**own, **values)


def _placeholders(template: str) -> set[str]:
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            names.add(name)
    return names


def load_framework_file(path: Path) -> Framework:
    """Read and validate one framework file; every problem names the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"framework file {path}: cannot be read as TOML: {exc}") from exc

    known = set(_TEXT_FIELDS) | set(_TEMPLATE_FIELDS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"framework file {path}: unknown keys {unknown}")
    missing = sorted(known - set(data))
    if missing:
        raise ConfigError(f"framework file {path}: missing keys {missing}")
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"framework file {path}: {key!r} must be a non-empty string")
    if data["name"] != path.stem:
        raise ConfigError(
            f"framework file {path}: name {data['name']!r} must match the file name {path.stem!r}"
        )
    for field, allowed in _TEMPLATE_FIELDS.items():
        try:
            used = _placeholders(data[field])
        except ValueError as exc:
            raise ConfigError(f"framework file {path}: {field}: bad template: {exc}") from exc
        if used - allowed:
            raise ConfigError(
                f"framework file {path}: {field} uses unknown placeholders "
                f"{sorted(used - allowed)} (allowed: {sorted(allowed)})"
            )
        needed = _REQUIRED_PLACEHOLDERS.get(field, set()) - used
        if needed:
            raise ConfigError(f"framework file {path}: {field} must use {sorted(needed)}")
    return Framework(**data, source=path)


def load_frameworks(user_dir: Path | None = None) -> dict[str, Framework]:
    """The built-in frameworks, then the user's (which may replace a built-in by name)."""
    frameworks = {f.name: f for f in map(load_framework_file, sorted(BUILTIN_DIR.glob("*.toml")))}
    if user_dir is not None:
        if not user_dir.is_dir():
            raise ConfigError(f"frameworks directory {user_dir} does not exist")
        for path in sorted(user_dir.glob("*.toml")):
            framework = load_framework_file(path)
            frameworks[framework.name] = framework
    return frameworks
