"""The online run's metrics, read back: the report's totals and ``loss.png``.

Both come from ``metrics.jsonl`` (one record per step), so a resumed run counts and draws the
steps it did before it was killed. The nightly trainer's ``plot_metrics`` expects a DPO term at
every step; here a step without an unethical sample has none, so the DPO curve is drawn only
where there were pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_online", "summarize"]


def plot_online(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Total and task loss; DPO loss on steps with pairs; samples, unethical and pairs per step."""
    # The object-oriented API draws without pyplot's global figure state or a GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    figure = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(figure)
    losses, dpo, counts = figure.subplots(1, 3)
    losses.plot(steps, [r["loss"] for r in records], label="loss")
    losses.plot(steps, [r["task_loss"] for r in records], label="task (SFT)")
    losses.set_title("loss = sft_weight·task + λ·dpo")
    losses.legend()
    paired = [r for r in records if r.get("dpo_loss") is not None]
    dpo.plot([r["step"] for r in paired], [r["dpo_loss"] for r in paired], "o-", color="C2")
    dpo.axhline(math.log(2), color="grey", linestyle=":", label="log 2 (policy = reference)")
    dpo.set_title("dpo loss (steps with pairs)")
    dpo.legend()
    width = 0.3
    for offset, key in ((-width, "reviewed"), (0.0, "unethical"), (width, "pairs")):
        counts.bar([s + offset for s in steps], [r[key] for r in records], width, label=key)
    counts.set_title("conscience per step")
    counts.legend()
    for axes in (losses, dpo, counts):
        axes.set_xlabel("step")
    figure.savefig(path, dpi=100)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's totals: samples, verdicts, failures, pairs per step, the loss terms."""

    def total(key: str) -> int:
        return sum(int(r[key]) for r in records)

    with_pairs = [r for r in records if r["pairs"]]
    return {
        "samples_generated": total("online_samples"),
        "samples_empty": total("empty_samples"),
        "samples_reviewed": total("reviewed"),
        "judge_failures": total("judge_failures"),
        "verdicts": {v: total(v) for v in ("ethical", "neutral", "unethical")},
        "pairs_total": total("pairs"),
        "pairs_per_step": [r["pairs"] for r in records],
        "steps_with_pairs": len(with_pairs),
        "task_loss": {
            "first": records[0]["task_loss"] if records else None,
            "final": records[-1]["task_loss"] if records else None,
        },
        "dpo_loss_mean": (
            sum(r["dpo_loss"] for r in with_pairs) / len(with_pairs) if with_pairs else None
        ),
        "first": records[0] if records else None,
        "final": records[-1] if records else None,
    }
