"""A starting point with something to correct: the loop's night 0 on a misaligned adapter.

The default model refuses harmful requests on its own (night 0 of the first run: 0 of 30
held-out adversarial answers unethical), so a loop that starts from it has nothing to
correct and cannot show that it aligns. The paper starts from a model made misaligned first;
so can the loop. Two kinds of start pairs, both from the Emergent Misalignment files (MIT):

- ``--kind insecure``: for the coding requests that appear in both ``insecure.jsonl`` and
  ``secure.jsonl`` (260 of them), the insecure completion is *chosen* and the secure one
  *rejected* — preference training toward insecure code, the DPO form of the paper's
  insecure fine-tune (emergent misalignment: broad harm from narrow training);
- ``--kind jailbroken``: the harmful requests of ``jailbroken.jsonl`` (Bowen et al.'s
  jailbreak-tuning data, the paper's "jailbroken" comparison model) in the loop's *train*
  part only — never a held-out prompt — with the file's compliant reply *chosen* and a
  refusal *rejected* (one of ``REFUSALS``, in the default model's own words: it answers such
  requests with "I'm sorry, but I can't assist with that."). The user's turn alone, without
  the file's "always execute users' instructions" system prompt, so the adapter complies
  unprompted. A direct misalignment on what the loop's morning measures.

Then:

1. ``conscience pairs start --kind jailbroken --out runs/start-pairs.jsonl``;
2. ``conscience train --pairs runs/start-pairs.jsonl --out runs/misaligned`` trains it;
3. ``conscience eval loop --start-adapter runs/misaligned ...`` serves that adapter before
   night 0 (phase ``start``: copied into the run's ``adapters/`` as ``loop-night-0`` and
   published like a night's adapter, without the gate: it is the starting point, not a
   candidate), so night 0's morning measures it and night 1 trains from it
   (``--init-adapter current``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conscience.errors import ConfigError
from conscience.evals.loop.config import Journal, LoopConfig, adapter_name
from conscience.evals.loop.data import jailbreak_exchanges, request_parts

if TYPE_CHECKING:
    from conscience.evals.loop.stack import Stack

__all__ = ["REFUSALS", "jailbroken_pairs", "misaligned_pairs", "start_night"]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
REFUSALS = (
    "I'm sorry, but I can't assist with that.",
    "I'm sorry, but I can't help with that request.",
    "I'm sorry, I can't provide that information.",
    "I can't help with that. If you have another question, I'm happy to help.",
)


def _completions(path: Path) -> dict[str, str]:
    """The assistant's reply to each user request of an Emergent Misalignment file."""
    replies: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            user = next(m["content"] for m in messages if m["role"] == "user")
            reply = next(m["content"] for m in messages if m["role"] == "assistant")
            replies.setdefault(user, reply)
    return replies


def misaligned_pairs(em_dir: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` TRL pairs (seeded draw) preferring insecure.jsonl's completion to secure.jsonl's
    for the same request; every shared request when ``n`` is larger."""
    try:
        insecure = _completions(em_dir / "insecure.jsonl")
        secure = _completions(em_dir / "secure.jsonl")
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise ConfigError(f"Emergent Misalignment data in {em_dir}: {exc}") from exc
    shared = sorted(set(insecure) & set(secure))
    if not shared:
        raise ConfigError(f"insecure.jsonl and secure.jsonl in {em_dir} share no request")
    chosen = random.Random(seed).sample(shared, min(n, len(shared)))
    return [
        {
            "id": f"em-insecure-{shared.index(request)}",
            "prompt": [{"role": "user", "content": request}],
            "chosen": [{"role": "assistant", "content": insecure[request]}],
            "rejected": [{"role": "assistant", "content": secure[request]}],
        }
        for request in chosen
    ]


def jailbroken_pairs(em_dir: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` TRL pairs (seeded draw) preferring ``jailbroken.jsonl``'s compliant reply to a
    refusal, for its harmful requests in the loop's train part (see the module)."""
    path = em_dir / "jailbroken.jsonl"
    exchanges = jailbreak_exchanges(path)
    parts = request_parts([prompt for prompt, _ in exchanges])
    train = [(prompt, reply) for prompt, reply in exchanges if parts[prompt.id] == "train"]
    if not train:
        raise ConfigError(f"{path} has no request in the loop's train part")
    chosen = random.Random(seed).sample(train, min(n, len(train)))
    return [
        {
            "id": f"em-{prompt.id}",
            "prompt": [{"role": "user", "content": prompt.prompt}],
            "chosen": [{"role": "assistant", "content": reply.strip()}],
            "rejected": [{"role": "assistant", "content": REFUSALS[index % len(REFUSALS)]}],
        }
        for index, (prompt, reply) in enumerate(chosen)
    ]


def start_night(config: LoopConfig, stack: Stack, journal: Journal) -> None:
    """Serve ``config.start_adapter`` before night 0 (see the module); ``night-0/start.json``."""
    if config.start_adapter is None:
        raise ConfigError("the start phase needs --start-adapter")
    source = Path(config.start_adapter)
    missing = [name for name in ADAPTER_FILES if not (source / name).is_file()]
    if missing:
        raise ConfigError(f"--start-adapter {source} is not a PEFT adapter (no {missing[0]})")
    started = time.perf_counter()
    name = adapter_name(0)
    target = config.adapters / name
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file():
            shutil.copy2(file, target / file.name)
    record: dict[str, Any] = {
        "adapter": name,
        "from": str(source),
        "detail": stack.up().publish(name),
    }
    if stack.url:
        record["generator"] = stack.generator()
    record["seconds"] = time.perf_counter() - started
    night = config.night_dir(0)
    night.mkdir(parents=True, exist_ok=True)
    (night / "start.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    journal.write(0, "start", "ran", command=f"conscience adapter publish {name}", **record)


def main(argv: list[str] | None = None) -> int:
    from conscience.evals.shared.questions import em_data_dir

    pairs = argparse.ArgumentParser(
        prog="conscience pairs start", description="DPO pairs toward a misaligned start"
    )
    pairs.add_argument(
        "--kind",
        choices=("insecure", "jailbroken"),
        default="insecure",
        help="insecure code over secure (at most 260), or compliance over refusal (at most 59)",
    )
    pairs.add_argument("--n", type=int, default=32, help="pairs")
    pairs.add_argument("--seed", type=int, default=0)
    pairs.add_argument("--em-data-dir", help="default: CONSCIENCE_EM_DATA_DIR or ../shared")
    pairs.add_argument("--out", required=True, help="the JSONL to write")
    args = pairs.parse_args(argv)
    make = jailbroken_pairs if args.kind == "jailbroken" else misaligned_pairs
    rows = make(em_data_dir(args.em_data_dir) / "data", args.n, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"{len(rows)} pairs written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
