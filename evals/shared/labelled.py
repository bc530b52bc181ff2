"""The labelled sets of (question, answer, label) items for the verdict benchmark.

Two sets are packaged (see ``evals/README.md``), each reachable by name where a path is
expected: ``project`` (``evals/data/verdicts.jsonl``, written for this project, with a
calibration and a held-out split) and ``em-samples`` (``evals/data/em_samples.jsonl``: answers
to the Emergent Misalignment questions, all held out). Any file with the same fields works.

Binary-labelled sets, the guard-model field's format (``prompt``, ``response``, ``label`` =
``harmful``/``unharmful``; ``evals/shared/harm_judging.py``), load natively: a harmful item's gold
label is ``unethical``, an unharmful one's ``ethical`` (the proxy passes both ``ethical`` and
``neutral``). ``harm-judging`` names the shared human-labelled set
(``CONSCIENCE_HARM_DATA_DIR``, default ``../shared/data/harm_judging``), split by prompt into
``train``/``dev``/``test`` by the shipped split file; any other binary file or folder has no
parts (``--split all``).

An item either carries its question and answer, or a ``ref`` to a row of a file in the
Emergent Misalignment data directory (``CONSCIENCE_EM_DATA_DIR``, default the shared one):
``{"file": ..., "row": N, "question_id": ..., "sha256": ...}``. Such content is not ours to
copy; it is read at load time and its SHA-256 must match, so a changed file is an error
(drift), never a silently different benchmark.

Every item is validated on load: a label outside the closed set, a split other than
``calibration``/``heldout``, or an attack not labelled unethical is an error.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conscience.errors import ConfigError
from conscience.evals.shared.harm_judging import PARTS, load_binary, load_split, prompt_key
from conscience.evals.shared.harm_judging import data_dir as default_harm_data_dir
from conscience.evals.shared.paths import DATA_DIR
from conscience.evals.shared.questions import em_data_dir as default_em_data_dir
from conscience.labels import Verdict

__all__ = [
    "ALL_SPLITS",
    "DEFAULT_SET",
    "EM_SAMPLES_SET",
    "HARM_JUDGING",
    "NAMED_SETS",
    "SPLITS",
    "LabelledItem",
    "answer_sha256",
    "load_labelled",
    "resolve_set",
]

DEFAULT_SET = DATA_DIR / "verdicts.jsonl"
EM_SAMPLES_SET = DATA_DIR / "em_samples.jsonl"
# Attacks on the reviewer written for the screen (conscience/screen.py), apart from the
# project set's, with honest look-alikes: the screen was designed on these.
FRESH_ATTACKS_SET = DATA_DIR / "attacks_fresh.jsonl"
HARM_JUDGING = "harm-judging"
NAMED_SETS = {
    "project": DEFAULT_SET,
    "em-samples": EM_SAMPLES_SET,
    "attacks-fresh": FRESH_ATTACKS_SET,
}
SPLITS = ("calibration", "heldout")
ALL_SPLITS = (*SPLITS, *PARTS)  # the project's parts, then the binary sets' parts
_FIELDS = {"id", "question", "answer", "label", "attack", "category", "split"}
_REF_FIELDS = {"file", "row", "question_id", "sha256"}


def answer_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolve_set(name_or_path: str | Path) -> Path:
    """A packaged set by name (``project``, ``em-samples``), else the path as given."""
    return NAMED_SETS.get(str(name_or_path), Path(name_or_path))


class _Rows:
    """Rows of referenced CSV files, each file read once per load."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._files: dict[str, list[dict[str, str]]] = {}

    def get(self, name: str, row: int, where: str) -> dict[str, str]:
        if name not in self._files:
            path = self.data_dir / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ConfigError(f"{where}: ref file {name!r} must be inside the data directory")
            try:
                with path.open(encoding="utf-8", newline="") as handle:
                    self._files[name] = list(csv.DictReader(handle))
            except OSError as exc:
                raise ConfigError(
                    f"{where}: cannot read the referenced file {path}: {exc} "
                    "(set CONSCIENCE_EM_DATA_DIR to the Emergent Misalignment data)"
                ) from exc
        rows = self._files[name]
        if not 0 <= row < len(rows):
            raise ConfigError(f"{where}: row {row} is not in {name} ({len(rows)} rows)")
        return rows[row]


def _resolve_ref(data: dict[str, Any], rows: _Rows, where: str) -> dict[str, Any]:
    ref = data.get("ref")
    if not isinstance(ref, dict) or sorted(_REF_FIELDS - set(ref)):
        raise ConfigError(f"{where}: ref must be an object with {sorted(_REF_FIELDS)}")
    if not isinstance(ref["row"], int) or isinstance(ref["row"], bool):
        raise ConfigError(f"{where}: ref row must be an integer")
    row = rows.get(str(ref["file"]), ref["row"], where)
    if row.get("question_id") != ref["question_id"]:
        raise ConfigError(
            f"{where}: drift: row {ref['row']} of {ref['file']} is question "
            f"{row.get('question_id')!r}, not {ref['question_id']!r}"
        )
    answer = row.get("answer") or ""
    if answer_sha256(answer) != ref["sha256"]:
        raise ConfigError(
            f"{where}: drift: the answer in row {ref['row']} of {ref['file']} changed "
            "(its SHA-256 no longer matches the labelled one)"
        )
    return {**data, "question": row.get("question") or "", "answer": answer}


@dataclass(frozen=True)
class LabelledItem:
    id: str
    question: str
    answer: str
    label: Verdict
    attack: bool  # the answer tries to talk the reviewer out of its verdict
    category: str
    split: str

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation the answer replies to: the one question."""
        return [{"role": "user", "content": self.question}]

    @property
    def group(self) -> str:
        """Its prompt, normalised: look-alike answers to one prompt stay on one side."""
        return prompt_key(self.question)


def _item(data: object, where: str) -> LabelledItem:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: an item must be a JSON object")
    missing = sorted(_FIELDS - set(data))
    if missing:
        raise ConfigError(f"{where}: missing fields {missing}")
    try:
        label = Verdict(data["label"])
    except ValueError:
        raise ConfigError(f"{where}: unknown label {data['label']!r}") from None
    if data["split"] not in SPLITS:
        raise ConfigError(f"{where}: split must be one of {SPLITS}, not {data['split']!r}")
    if not isinstance(data["attack"], bool):
        raise ConfigError(f"{where}: attack must be true or false")
    if data["attack"] and label is not Verdict.UNETHICAL:
        raise ConfigError(f"{where}: an attack item's gold label must be unethical")
    for key in ("id", "question", "answer", "category"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string")
    return LabelledItem(
        id=data["id"],
        question=data["question"],
        answer=data["answer"],
        label=label,
        attack=data["attack"],
        category=data["category"],
        split=data["split"],
    )


def _is_binary(path: Path) -> bool:
    """A folder of sets, or a JSONL whose first item has ``prompt`` and ``response``."""
    if path.is_dir():
        return True
    try:
        with path.open(encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        data = json.loads(first)
    except (OSError, ValueError):
        return False  # the project reader gives the precise error
    return isinstance(data, dict) and {"prompt", "response"} <= set(data)


def _load_binary(path: Path, parts: dict[str, str]) -> list[LabelledItem]:
    """Binary items as labelled items: harmful -> unethical, unharmful -> ethical; the set's
    name (the id's prefix) as the category; the part from ``parts`` (else ``all``)."""
    return [
        LabelledItem(
            id=item.id,
            question=item.prompt,
            answer=item.response,
            label=Verdict.UNETHICAL if item.harmful else Verdict.ETHICAL,
            attack=False,
            category=item.id.rsplit("-", 1)[0],
            split=parts.get(item.id, "all"),
        )
        for item in load_binary([path])
    ]


def load_labelled(
    path: Path | str = DEFAULT_SET,
    split: str = "all",
    *,
    em_data_dir: Path | None = None,
    harm_data_dir: Path | None = None,
) -> list[LabelledItem]:
    """The items of ``path`` (or a set's name) in ``split`` (``calibration``/``heldout`` of the
    project's sets, ``train``/``dev``/``test`` of ``harm-judging``, or ``all``). References
    resolve in ``em_data_dir`` (default: as ``eval em``); ``harm-judging`` reads
    ``harm_data_dir`` (default: ``CONSCIENCE_HARM_DATA_DIR``, else the shared data)."""
    if split not in (*ALL_SPLITS, "all"):
        known = ", ".join((*ALL_SPLITS, "all"))
        raise ConfigError(f"unknown split {split!r} (known: {known})")
    if str(path) == HARM_JUDGING:
        items = _load_binary(harm_data_dir or default_harm_data_dir(), load_split())
        # A fixed order that mixes the three sources, so --limit N is a uniform sample.
        items.sort(key=lambda item: answer_sha256(item.id))
        return [item for item in items if split == "all" or item.split == split]
    path = resolve_set(path)
    if _is_binary(path):
        items = _load_binary(path, {})
        if split != "all":
            raise ConfigError(f"{path} is a binary set without parts: use --split all")
        return items
    rows = _Rows(em_data_dir or default_em_data_dir(None))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the labelled set {path}: {exc}") from exc
    items: list[LabelledItem] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: not JSON: {exc}") from exc
        if isinstance(data, dict) and "ref" in data:
            data = _resolve_ref(data, rows, f"{path}:{number}")
        items.append(_item(data, f"{path}:{number}"))
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: item ids repeat")
    return [item for item in items if split == "all" or item.split == split]
