"""The Emergent Misalignment evaluation questions, read from the paper's YAML at run time.

The data stays in the shared data directory (it is the paper's, under its own licence); this
module only reads it. ``first_plot`` is the paper's main figure: the first eight questions of
``first_plot_questions.yaml`` in their plain form (no ``_json`` / ``_template`` variant).
Where the data lives is ``em_data_dir``'s answer, the one place that reads
``CONSCIENCE_EM_DATA_DIR``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from conscience.errors import ConfigError

__all__ = [
    "DEFAULT_EM_DATA_DIR",
    "QUESTION_SETS",
    "EmQuestion",
    "QuestionSet",
    "em_data_dir",
    "load_questions",
]

QuestionSet = Literal["first_plot", "first_plot_all", "preregistered", "all"]
QUESTION_SETS: tuple[str, ...] = ("first_plot", "first_plot_all", "preregistered", "all")
_FIRST_PLOT = "evaluation/first_plot_questions.yaml"
_PREREGISTERED = "evaluation/preregistered_evals.yaml"
_VARIANT_SUFFIXES = ("_json", "_template")
# The shared data directory beside the repository: the paper's data is read, never copied.
DEFAULT_EM_DATA_DIR = (
    Path(__file__).resolve().parents[2].parent / "shared/data/emergent_misalignment"
)


def em_data_dir(flag: str | None) -> Path:
    """--data-dir, else CONSCIENCE_EM_DATA_DIR, else the shared data directory."""
    return Path(flag or os.environ.get("CONSCIENCE_EM_DATA_DIR") or DEFAULT_EM_DATA_DIR)


@dataclass(frozen=True)
class EmQuestion:
    id: str
    paraphrases: tuple[str, ...]
    system: str | None
    aligned_prompt: str  # judge prompt with {question} and {answer}
    coherent_prompt: str

    def paraphrase(self, sample: int) -> str:
        # Deterministic by sample index, so a resumed run asks exactly what it would have asked.
        return self.paraphrases[sample % len(self.paraphrases)]

    def messages(self, sample: int) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.paraphrase(sample)}]


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is in the eval extra
        raise ConfigError(
            "reading the questions needs pyyaml: pip install 'conscience[eval]'"
        ) from exc
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the questions file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"questions file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, list):
        raise ConfigError(f"questions file {path}: expected a list of questions")
    return data


def _question(entry: dict[str, Any], path: Path) -> EmQuestion:
    try:
        prompts = entry["judge_prompts"]
        question = EmQuestion(
            id=str(entry["id"]),
            paraphrases=tuple(str(p) for p in entry["paraphrases"]),
            system=entry.get("system"),
            aligned_prompt=str(prompts["aligned"]),
            coherent_prompt=str(prompts["coherent"]),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"questions file {path}: malformed entry {entry.get('id')!r}") from exc
    if entry.get("type", "free_form_judge_0_100") != "free_form_judge_0_100":
        raise ConfigError(f"questions file {path}: {question.id}: unsupported type {entry['type']}")
    if not question.paraphrases:
        raise ConfigError(f"questions file {path}: {question.id} has no paraphrases")
    for prompt in (question.aligned_prompt, question.coherent_prompt):
        if "{question}" not in prompt or "{answer}" not in prompt:
            raise ConfigError(f"questions file {path}: {question.id}: judge prompt lacks fields")
    return question


def load_questions(data_dir: Path, which: str = "first_plot") -> list[EmQuestion]:
    """The questions of one set: ``first_plot`` (8, the paper's main figure),
    ``first_plot_all`` (those 8 with their json and template variants, 24),
    ``preregistered`` (48), or ``all`` (the 24 and the 48)."""
    if which not in QUESTION_SETS:
        raise ConfigError(f"unknown question set {which!r} (known: {', '.join(QUESTION_SETS)})")
    if not data_dir.is_dir():
        raise ConfigError(
            f"Emergent Misalignment data directory {data_dir} does not exist "
            "(give --data-dir or CONSCIENCE_EM_DATA_DIR)"
        )
    questions: list[EmQuestion] = []
    if which != "preregistered":
        path = data_dir / _FIRST_PLOT
        first = [_question(entry, path) for entry in _read(path)]
        if which == "first_plot":
            first = [q for q in first if not q.id.endswith(_VARIANT_SUFFIXES)]
        questions.extend(first)
    if which in ("preregistered", "all"):
        path = data_dir / _PREREGISTERED
        questions.extend(_question(entry, path) for entry in _read(path))
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"question ids repeat in {data_dir}")
    return questions
