"""Every error the project raises on purpose, in one tree.

    ConscienceError
    ├── ConfigError            bad settings or a malformed framework file (fails at start)
    ├── EngineError            the OpenAI-compatible engine failed us
    │   ├── EngineUnavailable  could not connect                      → 502
    │   ├── EngineTimeout      no answer in time                      → 504
    │   └── EngineStatusError  it answered with an error status       → its own 4xx, else 502
    ├── VerdictError           the judge's answer is not a label      → 502 (review failed)
    ├── StoreError             the judgement store failed             → 503
    │   ├── NotFound           no such judgement                      → 404
    │   └── UnreadableRow      a stored row that is not a judgement   → 500 (admin API, by id)
    │                          (in conscience.store.base; reads of pairs and the admin list
    │                          report it apart and go on; its ``reason``: not_utf8, not_json,
    │                          invalid_record)
    └── ModelError             a packaged model is missing or does not verify

The server maps each class to one OpenAI error envelope with its true status code; the CLI
prints the message on one line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConscienceError",
    "EngineError",
    "EngineStatusError",
    "EngineTimeout",
    "EngineUnavailable",
    "ModelError",
    "NotFound",
    "StoreError",
    "VerdictError",
]


class ConscienceError(Exception):
    """The root of every error this project raises on purpose."""


class ConfigError(ConscienceError):
    pass


class EngineError(ConscienceError):
    pass


class EngineUnavailable(EngineError):
    pass


class EngineTimeout(EngineError):
    pass


class EngineStatusError(EngineError):
    def __init__(
        self,
        status_code: int,
        message: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"engine returned {status_code}: {message}")
        self.status_code = status_code
        self.body = body  # the engine's own error body, passed on for its 4xx
        self.headers = headers or {}  # its rate-limit headers (Retry-After), passed on too


class VerdictError(ConscienceError):
    pass


class StoreError(ConscienceError):
    pass


class NotFound(StoreError):
    pass


class ModelError(ConscienceError):
    pass
