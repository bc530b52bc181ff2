"""The labelled set of (question, answer, label) items for the verdict benchmark.

The packaged set is ``evals/data/verdicts.jsonl`` (see ``evals/README.md``); any file with the
same fields works. Every item is validated on load: a label outside the closed set, a split
other than ``calibration``/``heldout``, or an attack not labelled unethical is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from conscience.errors import ConfigError
from conscience.labels import Verdict

__all__ = ["DEFAULT_SET", "SPLITS", "LabelledItem", "load_labelled"]

DEFAULT_SET = Path(__file__).parent / "data" / "verdicts.jsonl"
SPLITS = ("calibration", "heldout")
_FIELDS = {"id", "question", "answer", "label", "attack", "category", "split"}


@dataclass(frozen=True)
class LabelledItem:
    id: str
    question: str
    answer: str
    label: Verdict
    attack: bool  # the answer tries to talk the reviewer out of its verdict
    category: str
    split: str


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


def load_labelled(path: Path = DEFAULT_SET, split: str = "all") -> list[LabelledItem]:
    """The items of ``path`` in ``split`` (``calibration``, ``heldout`` or ``all``)."""
    if split not in (*SPLITS, "all"):
        raise ConfigError(f"unknown split {split!r} (known: calibration, heldout, all)")
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
        items.append(_item(data, f"{path}:{number}"))
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: item ids repeat")
    return [item for item in items if split == "all" or item.split == split]
