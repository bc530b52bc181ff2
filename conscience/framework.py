"""Ethics frameworks as data: one TOML file each, with its review and rewrite templates.

The built-in frameworks live in ``conscience/frameworks/``; a user adds one by dropping a
``NAME.toml`` into the directory named by the ``frameworks_dir`` setting (a user file of the
same name replaces the built-in). A malformed file fails at start with its path and the
problem, never at the first request.

A framework file may name a prompt ``variant`` (one of ``VARIANTS``; default ``"plain"``): how
the review question is put to the judge beyond the framework's own words. The variants were
measured on the calibration split of the labelled set (docs/decisions.md, "Prompt variants").

It may also carry worked examples, ``[[demonstration]]`` tables of ``question``, ``answer``
and ``label`` (ethical, neutral or unethical): the paper-layout review shows them to the judge
as earlier review turns answered with their label, after the framework's system message and
before the answer under review (a prefix every review shares, so the engine caches it).
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from pathlib import Path

from conscience.errors import ConfigError

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_VARIANT",
    "VARIANTS",
    "Demonstration",
    "Framework",
    "PromptVariant",
    "load_framework_file",
    "load_frameworks",
]

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
_OPTIONAL_FIELDS = ("variant", "demonstration")
_LABELS = ("ethical", "neutral", "unethical")


@dataclass(frozen=True)
class Demonstration:
    """A worked example of a review: a question, an answer, and the label it deserves."""

    question: str
    answer: str
    label: str


@dataclass(frozen=True)
class PromptVariant:
    """How the review question is put, beyond the framework's templates.

    ``system``: the framework header is a system message (else it opens the user turn, and
    the chat template may insert its own default system prompt). ``fenced``: the question and
    answer go inside tags as data (else plain, as in the paper). ``harm``: the judge is also
    asked explicitly whether the answer could harm a human being. ``reasoning_tokens``: when
    above 0, the judge first writes a short reasoning (greedy, at most that many tokens), then
    gives the forced label in a following turn. ``wording``: ``"paper"`` keeps the framework's
    classification text; ``"strict"`` adds a sharper definition of unethical after it.
    """

    name: str
    system: bool = True
    fenced: bool = True
    harm: bool = False
    reasoning_tokens: int = 0
    wording: str = "paper"


VARIANTS: dict[str, PromptVariant] = {
    v.name: v
    for v in (
        PromptVariant("plain"),
        PromptVariant("no-system", system=False),
        PromptVariant("unfenced", fenced=False),
        PromptVariant("harm", harm=True),
        PromptVariant("strict", wording="strict"),
        PromptVariant("reason", reasoning_tokens=80),
        PromptVariant("harm-strict", harm=True, wording="strict"),
    )
}
DEFAULT_VARIANT = "plain"
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
    variant: str = DEFAULT_VARIANT
    demonstrations: tuple[Demonstration, ...] = ()

    @property
    def prompt_variant(self) -> PromptVariant:
        return VARIANTS[self.variant]

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
    unknown = sorted(set(data) - known - set(_OPTIONAL_FIELDS))
    if unknown:
        raise ConfigError(f"framework file {path}: unknown keys {unknown}")
    missing = sorted(known - set(data))
    if missing:
        raise ConfigError(f"framework file {path}: missing keys {missing}")
    demonstrations = _demonstrations(path, data.pop("demonstration", []))
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"framework file {path}: {key!r} must be a non-empty string")
    if "variant" in data and data["variant"] not in VARIANTS:
        raise ConfigError(
            f"framework file {path}: unknown variant {data['variant']!r} "
            f"(known: {', '.join(VARIANTS)})"
        )
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
    return Framework(**data, source=path, demonstrations=demonstrations)


def _demonstrations(path: Path, tables: object) -> tuple[Demonstration, ...]:
    """The ``[[demonstration]]`` tables of a framework file, checked."""
    if not isinstance(tables, list):
        raise ConfigError(f"framework file {path}: demonstration must be [[demonstration]] tables")
    found = []
    for number, table in enumerate(tables, 1):
        fields = ("question", "answer", "label")
        if not isinstance(table, dict) or set(table) != set(fields):
            raise ConfigError(
                f"framework file {path}: demonstration {number} needs exactly {list(fields)}"
            )
        if not all(isinstance(table[f], str) and table[f].strip() for f in fields):
            raise ConfigError(f"framework file {path}: demonstration {number}: empty or not text")
        if table["label"] not in _LABELS:
            raise ConfigError(
                f"framework file {path}: demonstration {number}: label {table['label']!r} "
                f"is not one of {', '.join(_LABELS)}"
            )
        found.append(Demonstration(table["question"], table["answer"], table["label"]))
    return tuple(found)


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
