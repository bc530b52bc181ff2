"""An append-only JSONL log that a killed run can resume from.

Each record is one line, written and flushed as soon as it is complete. A run killed in the
middle of a write leaves a last line without its newline: opening the log cuts that fragment
off, so the next append starts on a clean line and no record is ever half-read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from conscience.errors import ConfigError

__all__ = ["AppendLog", "read_records"]


def _cut_partial_tail(path: Path) -> None:
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a log (a missing file is an empty log)."""
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith("\n"):
                break  # the fragment a killed writer left; opening for append removes it
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{path}:{number}: not a JSON record: {exc}") from exc
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{number}: a record must be a JSON object")
            records.append(record)
    return records


class AppendLog:
    """Appends records to a JSONL file, one flushed line each."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync  # off by default: a lost last answer is only asked again
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _cut_partial_tail(path)
        self._handle = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        if self._fsync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
