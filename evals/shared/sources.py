"""The split over every labelled source: harm_judging, harm_judging_more and benign_chat.

``data/harm_judging_split.json`` splits the three original sets (``evals/shared/harm_judging.py``).
``data/all_sources_split.json`` extends it to the sets added since, in the shared data beside
them (``../shared/data/harm_judging_more/``: GPTFuzz, a SafeRLHF sample, a JAILJUDGE sample;
``../shared/data/benign_chat/``: ordinary chat, all harmless). Ids only; the texts stay there.

The rule is the original split's, applied to all items at once: items are grouped by their
normalised prompt (``prompt_key``) and each group goes whole to the part the same seeded hash
gives its key, with two precedences::

    part(group) = the part of its ids in harm_judging_split.json   if it has any
                  test                                             if it holds an item of an
                                                                   evaluation-only set
                  the seeded hash of its key                       otherwise

so an existing id keeps its part, a new item whose prompt occurs in ``harm_judging/`` joins
that prompt's part, and no prompt is in two parts. Evaluation-only sets
(``EVALUATION_ONLY``: their authors ask that they be used to measure, never to train) go to
test with every item that shares a prompt with them (AlpacaEval holds all 252 of
self-instruct's user-oriented prompts, with other models' answers).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from conscience.engine.weights import sha256_file
from conscience.errors import ConfigError
from conscience.evals.shared.harm_judging import (
    FRACTIONS,
    PARTS,
    SEED,
    SPLIT_FILE,
    BinaryItem,
    assign_parts,
    data_dir,
    load_binary,
    load_split,
    prompt_key,
)
from conscience.evals.shared.paths import DATA_DIR

__all__ = [
    "ALL_SPLIT_FILE",
    "EVALUATION_ONLY",
    "FOLDERS",
    "assign_all",
    "load_sources",
    "write_all_split",
]

ALL_SPLIT_FILE = DATA_DIR / "all_sources_split.json"
FOLDERS = ("harm_judging", "harm_judging_more", "benign_chat")  # under the shared data root
# Sets to measure with, never to train on (benign_chat/SOURCE.md).
EVALUATION_ONLY = frozenset({"benign_chat/self_instruct_user_oriented_response.jsonl"})


def load_sources(root: Path, folders: Sequence[str] = FOLDERS) -> dict[str, list[BinaryItem]]:
    """``folder/file`` -> its items, for every ``*.jsonl`` of ``folders`` under ``root``; an id
    in two files is an error (the split is keyed by id)."""
    sets: dict[str, list[BinaryItem]] = {}
    seen: dict[str, str] = {}
    for folder in folders:
        files = sorted((root / folder).glob("*.jsonl"))
        if not files:
            raise ConfigError(f"no labelled set in {root / folder} (expected *.jsonl files)")
        for path in files:
            name = f"{folder}/{path.name}"
            sets[name] = load_binary([path])
            for item in sets[name]:
                if item.id in seen:
                    raise ConfigError(f"id {item.id!r} is in both {seen[item.id]} and {name}")
                seen[item.id] = name
    return sets


def assign_all(
    sets: Mapping[str, Sequence[BinaryItem]],
    base: Mapping[str, str],
    *,
    evaluation_only: frozenset[str] = EVALUATION_ONLY,
    seed: str = SEED,
) -> dict[str, str]:
    """Each item's part by the rule of the module docstring; ``base``: id -> part of the
    existing split. A ConfigError when the rule contradicts itself: a prompt whose existing
    ids are in two parts, or one of an evaluation-only set that the base puts outside test."""
    items = [item for group in sets.values() for item in group]
    hashed = assign_parts(items, seed=seed)
    only = {item.id for name in evaluation_only for item in sets.get(name, ())}
    groups: dict[str, list[BinaryItem]] = defaultdict(list)
    for item in items:
        groups[prompt_key(item.prompt)].append(item)
    parts: dict[str, str] = {}
    for key, members in groups.items():
        fixed = {base[i.id] for i in members if i.id in base}
        if len(fixed) > 1:
            raise ConfigError(f"the existing split puts the prompt {key[:60]!r} in {sorted(fixed)}")
        if any(i.id in only for i in members):
            if fixed and fixed != {"test"}:
                raise ConfigError(
                    f"the prompt {key[:60]!r} is in an evaluation-only set but the existing "
                    f"split puts it in {fixed.pop()}"
                )
            part = "test"
        else:
            part = fixed.pop() if fixed else hashed[members[0].id]
        for item in members:
            parts[item.id] = part
    return parts


def write_all_split(
    root: Path,
    path: Path = ALL_SPLIT_FILE,
    *,
    base_path: Path = SPLIT_FILE,
    folders: Sequence[str] = FOLDERS,
) -> dict:
    """Write the split of every set under ``root`` (ids only, sorted), with what it covers:
    each file's SHA-256 and item count, the base split it extends and the evaluation-only sets."""
    sets = load_sources(root, folders)
    parts = assign_all(sets, load_split(base_path))
    record = {
        "seed": SEED,
        "fractions": FRACTIONS,
        "grouped_by": "prompt_key (evals/shared/harm_judging.py)",
        "extends": f"{base_path.name}: each of its ids keeps its part",
        "rule": "a prompt's group takes the part of its ids in the base split, else test if it "
        "holds an item of an evaluation-only set, else the seeded hash (evals/shared/sources.py)",
        "covers": {
            name: {
                "items": len(items),
                "sha256": sha256_file(root / name),
                "evaluation_only": name in EVALUATION_ONLY,
            }
            for name, items in sets.items()
        },
        "parts": {part: sorted(i for i, p in parts.items() if p == part) for part in PARTS},
    }
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def main(argv: list[str] | None = None) -> int:
    """(Re)write ``data/all_sources_split.json`` from the shared data."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="conscience fit split-all", description="write the split over every labelled source"
    )
    parser.add_argument("root", nargs="?", type=Path, default=data_dir().parent)
    parser.add_argument("--out", type=Path, default=ALL_SPLIT_FILE)
    args = parser.parse_args(argv)
    record = write_all_split(args.root, args.out)
    sizes = {part: len(ids) for part, ids in record["parts"].items()}
    print(f"wrote {args.out}: {sizes} of {sum(sizes.values())} items")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
