"""The probes a proxy judges with over time: the configured one, each refit published to it,
each candidate its gate refused, and each rollback.

A refitted probe file (``conscience fit probe --labels-from``) is published to a running proxy
(``POST /admin/probe``) with the gate its fit measured. The proxy serves it only where the gate
passed; either way the candidate is recorded, so an operator sees what was refused and why.
What is served is a stack::

    served = [configured, published 1, published 2, ...]     the top one judges
    publish  -> push the candidate             rollback -> pop the top (never the configured)

With a directory (``CONSCIENCE_PROBES_DIR``) every event is a line of ``history.jsonl`` and
every published file is kept beside it (``probe-N.json``), each written whole before the line
that names it, so a restarted proxy replays the lines and judges with the same probe again.
Each start is a line too (``started``, with the probes it judges with). Without a directory
the history lives as long as the process, and the start-up log says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conscience.calibration import write_entries
from conscience.errors import ConfigError
from conscience.probe import Probe, load_probes

__all__ = ["HISTORY_FILE", "ProbeEvent", "ProbeHistory"]

HISTORY_FILE = "history.jsonl"
Probes = dict[tuple[str, str, str], Probe]


@dataclass(frozen=True)
class ProbeEvent:
    """One line of the history: what happened, to which file, and the gate that decided."""

    n: int
    at: str  # ISO 8601, UTC
    action: str  # started | published | refused | rolled back
    source: str  # where the probes came from (a file, or the candidate's own record)
    gate: dict[str, Any] | None = None  # the fit's gate, for published and refused ones
    fitted: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> summary

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "at": self.at,
            "action": self.action,
            "source": self.source,
            "gate": self.gate,
            "fitted": self.fitted,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def summary(probes: Probes) -> dict[str, dict[str, Any]]:
    """Per probe (``model/framework/layout``): its threshold and what it was fitted on."""
    out: dict[str, dict[str, Any]] = {}
    for key, probe in probes.items():
        fitted = probe.fitted
        labels = fitted.get("labels") or {}
        out["/".join(key)] = {
            "threshold": round(probe.threshold, 4),
            "date": fitted.get("date"),
            "train_items": fitted.get("train_items"),
            "human_labels": labels.get("count"),
        }
    return out


class ProbeHistory:
    """The served stack and the events of the module docstring. Not safe across processes:
    one proxy owns a directory (replicas each keep their own, or share none)."""

    def __init__(self, directory: Path | None, configured: Probes, source: str) -> None:
        self.directory = directory
        self.events: list[ProbeEvent] = []
        self._served: list[tuple[Probes, str]] = [(configured, source)]
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._replay(directory / HISTORY_FILE)
        probes, active = self.active
        self._record("started", active, None, probes)

    @property
    def active(self) -> tuple[Probes, str]:
        """The probes that judge now, and where they came from."""
        return self._served[-1]

    @property
    def next_source(self) -> str:
        """Where the next published probe will be said to come from (its file)."""
        if self.directory is None:
            return "published probe (in memory)"
        return f"published probe {self.directory / f'probe-{len(self.events) + 1}.json'}"

    @property
    def previous(self) -> tuple[Probes, str]:
        """What a rollback would serve (``can_roll_back`` says whether there is one)."""
        return self._served[-2]

    @property
    def can_roll_back(self) -> bool:
        return len(self._served) > 1

    def publish(self, probes: Probes, gate: dict[str, Any]) -> ProbeEvent:
        """Record the candidate ``probes``; serve it (push) if its gate passed."""
        if not gate.get("passed"):
            return self._record("refused", "candidate (not kept)", gate, probes)
        source = self.next_source
        if self.directory is not None:
            path = self.directory / f"probe-{len(self.events) + 1}.json"
            write_entries(path, probes.values())  # whole, before the line that names it
        self._served.append((probes, source))
        return self._record("published", source, gate, probes)

    def roll_back(self) -> ProbeEvent:
        """Serve the probes below the top again; the configured ones are never popped."""
        if not self.can_roll_back:
            raise ConfigError("nothing to roll back to: the configured probe is being served")
        self._served.pop()
        probes, source = self._served[-1]
        return self._record("rolled back", source, None, probes)

    def _record(
        self, action: str, source: str, gate: dict[str, Any] | None, probes: Probes
    ) -> ProbeEvent:
        event = ProbeEvent(len(self.events) + 1, _now(), action, source, gate, summary(probes))
        self.events.append(event)
        if self.directory is not None:
            with (self.directory / HISTORY_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(event.as_dict()) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        return event

    def _replay(self, path: Path) -> None:
        """The stack as the lines of ``path`` left it: a published file is loaded again (and a
        file that cannot be is an error at start, never a silent fall back)."""
        if not path.exists():
            return
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = ProbeEvent(**json.loads(line))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{path}:{number}: not a probe history line ({exc})") from exc
            self.events.append(event)
            if event.action == "published":
                file = Path(event.source.removeprefix("published probe "))
                self._served.append((load_probes(file), event.source))
            elif event.action == "rolled back" and len(self._served) > 1:
                self._served.pop()
