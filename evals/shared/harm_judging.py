"""Binary-labelled response-harmfulness sets, and their train / dev / test split by prompt.

The sets are the field's benchmark format for guard models: one JSON object a line,
``{"id", "prompt", "response", "label"}`` with ``label`` = ``harmful`` | ``unharmful``
(``../shared/data/harm_judging/``: HarmBench responses, PKU-SafeRLHF, BeaverTails). Their texts
are not ours to ship; only the split is, as data: ``data/harm_judging_split.json`` lists the
ids of each part.

The split is by *prompt*, never by item: SafeRLHF and BeaverTails answer the same prompt several
times, and an item whose prompt was seen in train would flatter dev and test. Items are grouped
by their normalised prompt (case, whitespace and edge punctuation ignored), and each group goes
whole to one part, chosen by a seeded hash of the group's key::

    part(key) = train  if u < f_train
                dev    if u < f_train + f_dev
                test   otherwise,        u = sha256(seed ":" key) / 2**256

A hash, not a shuffle: adding a set later leaves every existing group where it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from conscience.errors import ConfigError
from conscience.evals.shared.paths import DATA_DIR

__all__ = [
    "BINARY_LABELS",
    "DEFAULT_DIR",
    "PARTS",
    "SPLIT_FILE",
    "BinaryItem",
    "assign_parts",
    "data_dir",
    "load_binary",
    "load_split",
    "prompt_key",
    "write_split",
]

BINARY_LABELS = ("harmful", "unharmful")
PARTS = ("train", "dev", "test")
FRACTIONS = {"train": 0.6, "dev": 0.2, "test": 0.2}
SEED = "conscience-harm-judging-1"
SPLIT_FILE = DATA_DIR / "harm_judging_split.json"
# The shared data, where a checkout of the project sits next to ``shared/``.
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "harm_judging"
_FIELDS = {"id", "prompt", "response", "label"}


@dataclass(frozen=True)
class BinaryItem:
    """One human-labelled (prompt, response) pair: ``harmful`` is the positive class."""

    id: str
    prompt: str
    response: str
    label: str  # "harmful" | "unharmful"

    @property
    def harmful(self) -> bool:
        return self.label == "harmful"


def data_dir() -> Path:
    """``CONSCIENCE_HARM_DATA_DIR``, else the shared data next to the checkout."""
    configured = os.environ.get("CONSCIENCE_HARM_DATA_DIR")
    return Path(configured) if configured else DEFAULT_DIR


def prompt_key(prompt: str) -> str:
    """The prompt as a group key: lower case, whitespace collapsed, edge punctuation dropped."""
    text = " ".join(prompt.lower().split())
    return re.sub(r"^[\W_]+|[\W_]+$", "", text)


def _unit(seed: str, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest, "big") / 2**256


def assign_parts(
    items: Iterable[BinaryItem],
    *,
    seed: str = SEED,
    fractions: Mapping[str, float] = FRACTIONS,
) -> dict[str, str]:
    """Each item's part (``train``/``dev``/``test``), the same for every item of one prompt."""
    if set(fractions) != set(PARTS) or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ConfigError(f"fractions must give {PARTS} and sum to 1, not {dict(fractions)}")
    edges = [fractions["train"], fractions["train"] + fractions["dev"]]
    parts: dict[str, str] = {}
    for item in items:
        u = _unit(seed, prompt_key(item.prompt))
        parts[item.id] = "train" if u < edges[0] else "dev" if u < edges[1] else "test"
    return parts


def _item(obj: object, where: str) -> BinaryItem:
    if not isinstance(obj, dict) or not set(obj) >= _FIELDS:
        raise ConfigError(f"{where}: expected an object with {sorted(_FIELDS)}")
    if obj["label"] not in BINARY_LABELS:
        raise ConfigError(f"{where}: label {obj['label']!r} is not one of {BINARY_LABELS}")
    fields = {name: obj[name] for name in _FIELDS}
    if not all(isinstance(value, str) for value in fields.values()):
        raise ConfigError(f"{where}: id, prompt, response and label must be strings")
    return BinaryItem(**fields)


def load_binary(paths: Iterable[Path]) -> list[BinaryItem]:
    """Every item of the given JSONL files (or of every ``*.jsonl`` in a given folder),
    validated; a duplicate id is an error, since the split is keyed by id."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.jsonl")) if path.is_dir() else [path])
    if not files:
        raise ConfigError("no binary-labelled set found (expected *.jsonl files)")
    items: list[BinaryItem] = []
    seen: set[str] = set()
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028
        except OSError as exc:
            raise ConfigError(f"cannot read the labelled set {path}: {exc}") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = _item(json.loads(line), where)
            except ValueError as exc:
                raise ConfigError(f"{where}: not JSON: {exc}") from exc
            if item.id in seen:
                raise ConfigError(f"{where}: duplicate id {item.id!r}")
            seen.add(item.id)
            items.append(item)
    return items


def write_split(items: list[BinaryItem], path: Path = SPLIT_FILE, *, seed: str = SEED) -> dict:
    """Write the split of ``items`` (ids only, sorted) with what it was made from."""
    parts = assign_parts(items, seed=seed)
    record = {
        "seed": seed,
        "fractions": FRACTIONS,
        "grouped_by": "prompt_key (evals/shared/harm_judging.py)",
        "parts": {part: sorted(i for i, p in parts.items() if p == part) for part in PARTS},
    }
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def load_split(path: Path = SPLIT_FILE) -> dict[str, str]:
    """id -> part, from a split file; an id listed twice is an error."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the split {path}: {exc}") from exc
    parts: dict[str, str] = {}
    for part in PARTS:
        for item_id in record["parts"][part]:
            if item_id in parts:
                raise ConfigError(f"{path}: {item_id} is in both {parts[item_id]} and {part}")
            parts[item_id] = part
    return parts


def main(argv: list[str] | None = None) -> int:
    """``conscience fit split [DATA_DIR]``: (re)write the split file."""
    import argparse

    parser = argparse.ArgumentParser(prog="conscience fit split")
    parser.add_argument("data_dir", nargs="?", type=Path, default=data_dir())
    parser.add_argument("--out", type=Path, default=SPLIT_FILE)
    args = parser.parse_args(argv)
    items = load_binary([args.data_dir])
    record = write_split(items, args.out)
    sizes = {part: len(ids) for part, ids in record["parts"].items()}
    print(f"wrote {args.out}: {sizes} of {len(items)} items")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
