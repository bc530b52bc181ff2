"""Where the evaluations' packaged data lives: ``evals/data/`` (the project's labelled sets,
the splits by id, the loop's benign prompts), shipped as the package data of
``conscience.evals``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA_DIR"]

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
