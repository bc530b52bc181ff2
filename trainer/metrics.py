"""A run's outputs besides the adapter: one JSON line per optimizer step, a PNG of the curves
and the run's ``report.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_metrics", "write_report"]


def write_report(out: Path, report: dict[str, Any]) -> None:
    """``out/report.json``: the run's report, indented, whatever JSON cannot hold as text."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )


class MetricsLog:
    """``metrics.jsonl``, appended line by line so a killed run keeps what it had logged."""

    def __init__(self, path: Path, *, keep_through: int = 0) -> None:
        """Open ``path``; keep the records of steps <= ``keep_through`` and drop later ones.

        A resumed run restarts from its last checkpoint: the steps a killed run logged after
        that checkpoint are done again, so their old lines go (else they would appear twice).
        """
        self.path = path
        kept = [r for r in self.read() if r.get("step", 0) <= keep_through] if keep_through else []
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def plot_metrics(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss terms, and reward margin and accuracy, against the step."""
    # The object-oriented API draws without pyplot's global figure state or a GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    figure = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(figure)
    total, dpo, rewards = figure.subplots(1, 3)
    for key in ("loss", "sft_loss"):
        total.plot(steps, [r[key] for r in records], label=key)
    total.set_title("loss = sft_weight·sft + λ·dpo")
    total.legend()
    dpo.plot(steps, [r["dpo_loss"] for r in records], color="C2")
    dpo.axhline(math.log(2), color="grey", linestyle=":", label="log 2 (policy = reference)")
    dpo.set_title("dpo loss")
    dpo.legend()
    rewards.plot(steps, [r["reward_margin"] for r in records], label="reward margin")
    rewards.set_title("rewards")
    accuracy = rewards.twinx()
    accuracy.plot(steps, [r["reward_accuracy"] for r in records], "g:", label="reward accuracy")
    accuracy.set_ylim(-0.05, 1.05)
    rewards.legend(loc="upper left")
    accuracy.legend(loc="lower right")
    for axes in (total, dpo, rewards):
        axes.set_xlabel("step")
    figure.savefig(path, dpi=100)
