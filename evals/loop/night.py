"""The loop's night: ``conscience train`` on the store's new pairs, then the gate and publish.

Training is a subprocess (``conscience train --store ... --resume``), so a killed loop resumes
it from its checkpoint; it dies with the loop (PR_SET_PDEATHSIG) so no orphan races the
resumed one. The wall-clock budget ``--max-minutes`` is passed when this installation's
trainer has the flag (the journal says so when it has not). The gate is the trainer's own
(``trainer.cli.gate``, as ``conscience train --publish`` applies it); a refused gate keeps
yesterday's adapter, and its pairs stay consumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conscience.errors import ConscienceError
from conscience.evals.loop.config import Journal, LoopConfig, adapter_name, shown
from conscience.evals.loop.stack import Stack

__all__ = ["publish_night", "train_argv", "train_night"]


def _base_model(config: LoopConfig) -> str:
    if config.base_model:
        return config.base_model
    from conscience.engine.weights import model_path
    from conscience.settings import Settings

    settings = Settings(**({"model": config.model} if config.model else {}))
    return str(model_path(settings.model, settings.model_cache_dir))


def train_argv(config: LoopConfig, night: int) -> list[str]:
    """The night's ``conscience train`` command (without the interpreter): a warm start from
    the adapter published last (CURRENT), within the night's time budget."""
    argv = [
        "train", "--store", str(config.store), "--base-model", _base_model(config),
        "--out", str(config.adapters / adapter_name(night)), "--run-id", adapter_name(night),
        "--resume", "--quiet", "--seed", str(config.seed), "--init-adapter", "current",
    ]  # fmt: skip
    if config.max_minutes:
        argv += ["--max-minutes", f"{config.max_minutes:g}"]
    return [*argv, *config.train_args]


def _trained(out: Path) -> dict[str, Any] | None:
    report = out / "report.json"
    if not (out / "adapter_model.safetensors").is_file() or not report.is_file():
        return None
    data = json.loads(report.read_text(encoding="utf-8"))
    return data if data.get("status") == "trained" else None


# `conscience train` that dies with the loop (Linux: PR_SET_PDEATHSIG), so a killed loop
# leaves no trainer behind to race the resumed one. Set in the child's own interpreter, not by
# a preexec_fn: the loop has threads (the proxy's), and running Python between fork and exec
# of a threaded process can deadlock.
_TRAIN = """
import contextlib, ctypes, signal, sys
with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
from conscience.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train_night(config: LoopConfig, night: int, journal: Journal) -> None:
    """Train the night's adapter on the store's unconsumed pairs; ``night-N/train.json``."""
    out = config.adapters / adapter_name(night)
    argv = train_argv(config, night)
    record: dict[str, Any] = {"argv": argv}
    threads = str(config.train_threads or os.cpu_count() or 1)
    env = {"OMP_NUM_THREADS": threads}
    started = time.perf_counter()
    finished = _trained(out)
    if finished is not None:  # trained before a kill took the journal line
        kept = ("status", "steps", "pairs_used", "stopped")
        record.update(returncode=0, summary={k: finished.get(k) for k in kept})
    else:
        night_dir = config.night_dir(night)
        night_dir.mkdir(parents=True, exist_ok=True)
        with (night_dir / "train.log").open("a", encoding="utf-8") as log:
            done = subprocess.run(
                [sys.executable, "-c", _TRAIN, *argv],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                check=False,
            )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        record.update(returncode=done.returncode, summary=json.loads(lines[-1]) if lines else {})
    seconds = time.perf_counter() - started
    record["seconds"] = seconds
    path = config.night_dir(night) / "train.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    status = "ran" if record["returncode"] == 0 else f"failed ({record['returncode']})"
    outcome = (record.get("summary") or {}).get("status")
    journal.write(
        night, "train", status, seconds=seconds, command=shown(argv, env), outcome=outcome
    )
    if record["returncode"] != 0:
        raise ConscienceError(f"training night {night} failed; see {path.parent / 'train.log'}")


def publish_night(config: LoopConfig, night: int, stack: Stack, journal: Journal) -> None:
    """The gate on the night's adapter, then publish it; ``night-N/publish.json``."""
    from conscience.trainer.cli import gate

    name = adapter_name(night)
    trained = _trained(config.adapters / name)
    started = time.perf_counter()
    record: dict[str, Any] = {"adapter": name}
    if trained is None:
        record["outcome"] = "nothing to publish"
    elif (reason := gate(trained, config.min_reward_accuracy)) is not None:
        record.update(outcome="refused by the gate", reason=reason)
    else:
        record.update(outcome="published", detail=stack.up().publish(name))
    if stack.url:
        record["generator"] = stack.generator()
    seconds = time.perf_counter() - started
    record["seconds"] = seconds
    path = config.night_dir(night) / "publish.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    how = "--publish embedded" if config.mode() == "embedded" else "--publish ENGINE_URL"
    command = (
        f"(in conscience train: {how} --proxy-admin PROXY_URL) conscience adapter publish {name}"
    )
    journal.write(night, "publish", "ran", command=command, **record)
