"""The loop's serving stack: the guardrail proxy on loopback (and the engine it starts), and
publishing an adapter to it.

The proxy is ``create_app`` in this process, served in a thread, with the run's own SQLite
store, a fresh admin key, policy rewrite and per-request overrides (the morning asks for
``flag``, HumanEval for ``off``). It comes up on first use, so a rerun that finds every phase
done starts nothing, and at start it puts back the adapter ``CURRENT`` names.

Publishing is ``engine.publish.publish`` on one of two paths: vLLM-style when the engine is at
``--url`` (the engine loads the adapter, then the proxy switches), or ``vllm=None`` on the
embedded engine, whose proxy loads the adapter itself from ``CONSCIENCE_ADAPTERS_DIR`` (the
run's ``adapters/``). ``judge.json`` records which conscience the proxy runs.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from conscience.evals.loop.config import LoopConfig, shown

if TYPE_CHECKING:
    from conscience.client import EngineClient

__all__ = ["Stack"]


def _settings(config: LoopConfig) -> Any:
    """The proxy's settings: the environment's, with the loop's own store, key and sizes."""
    from conscience.settings import Settings

    fields: dict[str, Any] = {
        "upstream_url": config.url,
        "store_url": str(config.store.resolve()),
        "rewrite_max_tokens": config.rewrite_max_tokens,
        "upstream_timeout": config.timeout,
        "admin_key": secrets.token_urlsafe(24),
        "policy": "rewrite",
        "allow_overrides": True,  # the morning asks for "flag", HumanEval for "off"
    }
    for name in ("model", "judge_model", "framework", "engine_threads"):
        if getattr(config, name) is not None:
            fields[name] = getattr(config, name)
    fields["adapters_dir"] = str(config.adapters.resolve())  # what the embedded engine serves
    if config.url is None:
        fields["upstream_url"] = None  # the embedded engine, whatever the environment says
    return Settings(**fields)


class Stack:
    """The proxy (and the engine it starts), brought up on first use and down at the end."""

    def __init__(self, config: LoopConfig, exits: ExitStack) -> None:
        self.config = config
        self._exits = exits
        self.settings: Any = None
        self.url = ""  # the proxy's base URL (no /v1)
        self._app: Any = None
        self.command = ""

    def up(self) -> Stack:
        if self.url:
            return self
        from conscience.server.app import create_app
        from conscience.server.threaded import serve_in_thread

        self.settings = _settings(self.config)
        app = create_app(self.settings)
        started = time.perf_counter()
        self.url = self._exits.enter_context(serve_in_thread(app))
        self._app = app
        self._record_judge(app.state.pipeline.conscience)
        print(
            f"loop: proxy up at {self.url} in {time.perf_counter() - started:.0f} s "
            f"(engine {app.state.pipeline.client.base_url}, model {self.settings.model}, "
            f"judge {self.settings.judge})",
            file=sys.stderr,
        )
        env = {"CONSCIENCE_STORE_URL": str(self.config.store), "CONSCIENCE_POLICY": "rewrite"}
        if self.config.url:
            env["CONSCIENCE_UPSTREAM_URL"] = self.config.url
        self.command = shown(["serve"], env)
        self._restore()
        return self

    def _record_judge(self, conscience: Any) -> None:
        """``judge.json``: the conscience the proxy runs (which judge the loop used)."""
        facts = {
            "judge_model": self.settings.judge,
            "framework": self.settings.framework,
            "layout": self.settings.layout.value,
            "judge_method": conscience.method.value,
            "probe": conscience.probe_source,
            "probe_read": conscience.probe_read,
            "probe_covers": conscience.probe_for(self.settings.framework) is not None,
            "screen": conscience.screen,
            "calibration": conscience.calibration_source,
            "policy": self.settings.policy.value,
        }
        path = self.config.out / "judge.json"
        path.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")

    def engine_client(self) -> EngineClient:
        """A client of the engine itself, for the second judge: at the address the proxy uses
        now (publishing on the embedded engine starts a new child on a new port) and with the
        proxy's adapter routing, so the judge's requests get the frozen base with every adapter
        off (llama.cpp would otherwise reuse a prompt cache computed with an adapter on)."""
        from conscience.client import EngineClient

        proxies = self._app.state.pipeline.client
        key = self.settings.upstream_api_key
        client = EngineClient(
            proxies.base_url,
            api_key=key.get_secret_value() if key else None,
            timeout=self.config.timeout,
            stream_unary=proxies.stream_unary,  # a run killed mid-review frees the engine
        )
        client.adapters = dict(getattr(proxies, "adapters", {}))
        return client

    @property
    def admin_key(self) -> str:
        return self.settings.admin_key.get_secret_value()

    def client_key(self) -> str:
        keys = self.settings.api_keys
        return keys[0].get_secret_value() if keys else "none"

    def _restore(self) -> None:
        """A restarted proxy generates with the base: put back the adapter published last."""
        from conscience.engine.publish import read_current

        name = read_current(self.config.adapters) if self.config.adapters.is_dir() else None
        if not name or not (self.config.adapters / name).is_dir():
            return
        if self.generator() == name:  # the embedded engine loads CURRENT at its start
            print(f"loop: the proxy generates with {name} (from CURRENT)", file=sys.stderr)
            return
        print(f"loop: {self.publish(name)} (restored from CURRENT)", file=sys.stderr)

    def publish(self, name: str) -> str:
        """Make ``name`` the generating model (the two paths of ``engine.publish.publish``)."""
        import httpx

        from conscience.engine.publish import publish

        self.config.adapters.mkdir(parents=True, exist_ok=True)
        adapters = self.config.adapters.resolve()
        with httpx.Client(timeout=max(600.0, self.config.timeout)) as client:
            if self.config.mode() == "embedded":
                # The embedded engine's path: no vLLM; the proxy converts and serves the adapter.
                return publish(
                    client, name, vllm=None, proxy=self.url, adapters=adapters,
                    admin_key=self.admin_key,
                )  # fmt: skip
            root = str(self.config.url).rstrip("/").removesuffix("/v1")
            key = self.settings.upstream_api_key
            return publish(
                client, name, vllm=root, proxy=self.url, adapters=adapters,
                admin_key=self.admin_key, vllm_key=key.get_secret_value() if key else None,
            )  # fmt: skip

    def generator(self) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self.admin_key}"}
        answer = httpx.get(f"{self.url}/admin/adapter", headers=headers, timeout=30)
        answer.raise_for_status()
        return str(answer.json()["model"])
