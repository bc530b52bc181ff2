"""The experiment's arms and the files of its working directory: what the run
(``evals/experiment/run.py``) writes and the report (``evals/experiment/report.py``) reads.
"""

from __future__ import annotations

__all__ = ["ARMS", "JOURNAL", "SETTINGS", "TRAINED"]

ARMS: dict[str, str] = {
    "base": "base model",
    "proxy": "base + guardrail proxy, inference time",
    "sft": "SFT on the task set",
    "sft-dpo": "SFT + conscience DPO",
}
TRAINED = ("sft", "sft-dpo")  # the arms with an adapter of their own
JOURNAL = "phases.jsonl"  # one line per phase that ran or was skipped
SETTINGS = "experiment.json"  # the run's configuration and machine
