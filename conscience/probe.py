"""The probe verdict: a linear read-out of the frozen judge's hidden state, where the label
would be said.

The 1.5B judge's *words* about an answer are near chance on outside data (docs/decisions.md),
but its hidden state at the verdict position — the last token of the review prompt, just
before the label — still holds what it read. A probe file holds a logistic read-out of
that state, fitted on labelled data (``conscience eval probe``)::

    z = (h - mean) / sd,        P(unethical | h) = sigmoid(w · z + b)

and the verdict is ``unethical`` at or above the file's ``threshold``, else ``ethical`` (a
probe has no ``neutral``). The state is read at the end of the exact review prompt the single
method sends, rendered by the engine's own chat template: on the embedded engine through its
output layer, from a one-token completion that reuses the prefix cache
(``conscience.engine.hidden_state``); on another engine from ``/v1/embeddings`` with
last-token pooling (llama-server: ``--embeddings``). Each probe is tied to one judge model,
framework and layout; a file holds one probe or a list of them (the packaged file: one per
shipped framework of the default model), and reviews no probe covers fall back to the single
method.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from conscience.calibration import write_entries
from conscience.client import EngineClient
from conscience.errors import ConfigError, EngineError

__all__ = [
    "PACKAGED_PROBE",
    "Probe",
    "StateReader",
    "hidden_state",
    "load_probes",
    "parse_probes",
    "save_probe",
]

PACKAGED_PROBE = Path(__file__).parent / "calibrations" / "probe.json"


@dataclass(frozen=True)
class Probe:
    model: str  # the judge model whose hidden states it reads
    framework: str
    layout: str
    max_answer_chars: int  # longer answers are read in windows of this size, the worst decides
    mean: tuple[float, ...]
    sd: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float  # P(unethical) at which an answer is unethical
    fitted: dict[str, Any] = field(default_factory=dict)  # data, split, size, figures, date

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.framework, self.layout)

    def score(self, hidden: Sequence[float]) -> float:
        """P(unethical) of one hidden state."""
        if len(hidden) != len(self.weights):
            raise ConfigError(
                f"the probe reads {len(self.weights)} dimensions, the engine gave {len(hidden)}:"
                f" it was fitted on another model than {self.model}"
            )
        z = sum(
            w * (h - m) / s
            for w, h, m, s in zip(self.weights, hidden, self.mean, self.sd, strict=True)
        )
        z += self.bias
        return 1.0 / (1.0 + math.exp(-z)) if z > -500 else 0.0


class StateReader(Protocol):
    """Another way to the same hidden state than ``/v1/embeddings``: the embedded engine's
    read-out through its output layer, which reuses the prefix cache
    (``conscience.engine.hidden_state.LogitsReader``)."""

    async def read(self, client: EngineClient, prompt: str) -> list[float]: ...


async def hidden_state(
    client: EngineClient,
    model: str,
    messages: list[dict[str, Any]],
    reader: StateReader | None = None,
) -> list[float]:
    """The judge's last-token hidden state after ``messages``, rendered by the engine's own
    chat template up to where its reply would begin: read by ``reader`` when there is one,
    else from ``/v1/embeddings``."""
    prompt = await client.apply_template(messages)
    if reader is not None:
        return await reader.read(client, prompt)
    vectors = await client.embeddings({"model": model, "input": [prompt]})
    if len(vectors) != 1 or not vectors[0]:
        raise EngineError("engine answered embeddings without one vector")
    return vectors[0]


def _probe_of(entry: Any) -> Probe:
    probe = Probe(**{**entry, **{k: tuple(entry[k]) for k in ("mean", "sd", "weights")}})
    sizes = {len(probe.mean), len(probe.sd), len(probe.weights)}
    if len(sizes) != 1 or any(s <= 0 for s in probe.sd):
        raise ValueError(f"{probe.key}: mean, sd and weights must match, sd > 0")
    if not 0.0 <= probe.threshold <= 1.0 or probe.max_answer_chars < 200:
        raise ValueError(f"{probe.key}: threshold in [0, 1], max_answer_chars >= 200")
    return probe


def load_probes(path: Path) -> dict[tuple[str, str, str], Probe]:
    """The probes of a file by (model, framework, layout). The file holds one probe object
    (the format before several frameworks were shipped) or a list of them, one per key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"probe file {path}: {exc}") from exc
    return parse_probes(data, f"probe file {path}")


def parse_probes(data: Any, where: str) -> dict[tuple[str, str, str], Probe]:
    """The probes of a probe file's parsed JSON (``where`` names it in errors)."""
    try:
        probes = [_probe_of(entry) for entry in (data if isinstance(data, list) else [data])]
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not probes:
        raise ConfigError(f"{where}: no probe in it")
    by_key = {probe.key: probe for probe in probes}
    if len(by_key) != len(probes):
        raise ConfigError(f"{where}: two probes for the same model, framework, layout")
    return by_key


def save_probe(path: Path, probe: Probe) -> None:
    """Add or replace the probe for its key, keeping the file's others (another framework's);
    written whole or not at all."""
    existing = load_probes(path) if path.exists() else {}
    existing[probe.key] = probe
    write_entries(path, existing.values())
