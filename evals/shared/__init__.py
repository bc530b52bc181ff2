"""What the evaluations share: the labelled sets and their splits (``labelled``, ``harm_judging``,
``sources``), the Emergent Misalignment questions, scoring, thresholds, resumable JSONL logs and
bounded concurrency."""
