"""Every setting in one place: a pydantic-settings object, env prefix ``CONSCIENCE_``.

Nothing else in the project reads the environment. CLI flags override these fields by name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from platformdirs import user_cache_dir, user_data_dir
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conscience.labels import JudgeMethod, Layout, Policy, ReviewErrorMode

__all__ = ["DEFAULT_MODEL", "KeyPolicy", "Settings", "default_store_url"]

DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"


def default_store_url() -> str:
    return "sqlite:///" + str(Path(user_data_dir("conscience")) / "judgements.sqlite3")


def _default_model_cache() -> Path:
    return Path(user_cache_dir("conscience")) / "models"


_KEY_ID = re.compile(r"key_[0-9a-f]{12}|admin")


class KeyPolicy(BaseModel):
    """How one client key's requests are judged (``CONSCIENCE_KEY_POLICIES``, by the key's id):
    each field given wins over the default setting, and a request's own ``conscience`` options
    win over it (request > key > default)."""

    model_config = ConfigDict(extra="forbid")

    framework: str | None = None
    policy: Policy | None = None
    # P(unethical) at which this key's answers are unethical (``verdict.at_threshold``).
    unethical_threshold: float | None = Field(None, ge=0, le=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSCIENCE_", extra="ignore")

    # --- the engines
    upstream_url: str | None = None  # OpenAI-compatible base URL; None starts the embedded engine
    upstream_api_key: SecretStr | None = None  # sent to the upstream, never shown to anyone
    model: str = DEFAULT_MODEL  # the generating model (on vLLM: the current adapter's name)
    judge_model: str | None = None  # the frozen copy (on vLLM: the base model); None = `model`
    judge_constraint: Literal["auto", "choice", "grammar", "none"] = "auto"  # auto asks /models
    upstream_timeout: float = Field(120.0, gt=0)  # seconds for any one upstream call
    # Seconds a whole request may take before its work is cancelled (504); None: no deadline.
    request_timeout: float | None = Field(None, gt=0)

    # --- the review
    framework: str = "three-laws"  # the default framework of a request
    frameworks_dir: Path | None = None  # user framework files (NAME.toml) added to the built-ins
    layout: Layout = Layout.PAPER  # docs/decisions.md, "Prompt layout"
    screen: bool = True  # answers that talk to their reviewer are unethical (conscience/screen.py)
    # The probe reads the judge's hidden state (packaged for the default model under each
    # built-in framework; other judges and frameworks use the single method); "single" is the
    # paper's pure form.
    judge_method: JudgeMethod = JudgeMethod.PROBE  # or "single", the paper's one question
    probe_file: Path | None = None  # the probe's read-out; None: the packaged one
    # Probes refitted from human labels and published (POST /admin/probe), and the history of
    # what was served and refused (conscience/probe_history.py); None: kept in memory only.
    probes_dir: Path | None = None
    # Where the embedded engine's probe reads the state: "logits", its output layer through the
    # prefix cache (engine/hidden_state.py); "embeddings", /v1/embeddings, which re-prefills
    # every prompt. An upstream is always read through /v1/embeddings.
    probe_read: Literal["logits", "embeddings"] = "logits"
    # A second opinion in this layout where the first probe is in doubt (conscience/cascade.py):
    # "paper" behind the "follow-up-brief" layout gives most answers the brief review's speed.
    second_opinion: Layout | None = None
    band_file: Path | None = None  # the bands of doubt; None: the packaged ones
    policy: Policy = Policy.REWRITE  # what to do with an unethical answer
    on_review_error: ReviewErrorMode = ReviewErrorMode.CLOSED  # fail closed: nothing unreviewed
    allow_overrides: bool = True  # may a request choose its framework/policy in "conscience"?
    # Per client key, by its id (server/auth.key_id): its framework, policy, threshold. JSON:
    # {"key_0123456789ab": {"policy": "block", "unethical_threshold": 0.8}}.
    key_policies: Annotated[dict[str, KeyPolicy], NoDecode] = {}
    # Under the flag policy, also ask for the rewrite and store it (never served): what
    # enforcement would have done, for an operator to see before switching it on.
    flag_rewrite: bool = False
    calibration_file: Path | None = None  # `fit calibration` output; wins over thresholds
    unethical_threshold: float | None = Field(None, ge=0, le=1)  # P(unethical) that decides
    neutral_threshold: float | None = Field(None, ge=0, le=1)  # P(neutral) that decides
    top_logprobs: int = Field(20, ge=1, le=20)  # label candidates read from the judge
    rewrite_max_tokens: int = Field(1024, gt=0)  # length of a rewrite
    review_window_chars: int = Field(6000, ge=200)  # longer answers: reviewed in windows
    # The judge reads at most this much of a conversation: the system prompt, the newest turns,
    # the last one always (conscience/context.py); less where the judge says it is too long.
    review_context_chars: int = Field(8000, ge=800)
    # Review while generating (conscience/ahead.py): the generation is streamed from the engine
    # and the judge starts on the answer before it ends; the verdict is the same. Off by
    # default: on 2 CPU cores it moves the judge's work without saving time (docs/decisions.md,
    # "Review while generating"). An upstream must stream with usage (vLLM, llama-server do).
    review_ahead: bool = False
    stream_mode: Literal["buffered", "incremental"] = "buffered"  # incremental: reviewed windows
    stream_window_chars: int = Field(400, gt=0)  # incremental mode: text reviewed per window

    # --- the store
    store_url: str = Field(default_factory=default_store_url)  # sqlite path/URL or postgresql://
    retention_days: int | None = Field(None, gt=0)  # purge stored conversations older than this

    # --- the server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = []  # client keys; none = no auth
    admin_key: SecretStr | None = None  # for /admin; admin is disabled without it
    max_body_bytes: int = Field(4_000_000, gt=0)  # larger requests get 413

    # --- the embedded engine (no upstream_url)
    model_cache_dir: Path = Field(default_factory=_default_model_cache)
    engine_threads: int | None = None  # llama.cpp threads; None = all cores
    engine_ctx_size: int = Field(8192, gt=0)  # context of each slot of the embedded engine
    # Requests the embedded engine decodes together (llama.cpp slots); None: from the machine,
    # engine/connect.py default_parallel (2 to 4, by cores and memory).
    engine_parallel: int | None = Field(None, gt=0)
    # Prompt tokens the embedded engine prefills in one step (llama.cpp's n_batch): a client
    # that leaves during a long prompt is noticed between steps (docs/decisions.md,
    # "Cancellation"); llama.cpp's own 2,048 would prefill most prompts in one uninterruptible step.
    engine_batch_size: int = Field(256, gt=0)
    # Trained adapters (NAME/ directories in peft's format, and CURRENT): the embedded engine
    # serves the one published (POST /admin/adapter), and the one in CURRENT from its start.
    adapters_dir: Path | None = None

    @field_validator(
        "upstream_url",
        "judge_model",
        "admin_key",
        "upstream_api_key",
        "adapters_dir",
        "request_timeout",
        "engine_parallel",
        "second_opinion",
        "band_file",
        "probes_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("key_policies", mode="before")
    @classmethod
    def _policies_json(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not JSON ({exc})") from None
        return value

    @field_validator("key_policies")
    @classmethod
    def _key_ids(cls, value: dict[str, KeyPolicy]) -> dict[str, KeyPolicy]:
        for key in value:
            if not _KEY_ID.fullmatch(key):
                raise ValueError(
                    f"{key!r} is not a key id: key_ and the first 12 hex digits of the key's"
                    ' SHA-256 (printf %s "$KEY" | sha256sum | cut -c1-12), or admin'
                )
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def judge(self) -> str:
        return self.judge_model or self.model
