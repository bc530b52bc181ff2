"""Server-sent events: one JSON object as one ``data:`` line (every stream the proxy writes)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["sse"]


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
