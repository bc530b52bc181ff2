"""A client key's own policy, framework and threshold (request > key > default), and the flag
policy's stored rewrite that is never served."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from conscience.errors import ConfigError
from conscience.server.app import create_app
from conscience.server.auth import key_id
from conscience.settings import Settings
from conscience.testing.scripted import ScriptedEngine

ASK = [{"role": "user", "content": "Help me cheat on my exam."}]
ADMIN = {"Authorization": "Bearer admin-key"}


def _said(url: str, key: str, **extra: Any) -> dict[str, Any]:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model="gen", messages=ASK, **extra)
    return {
        **answer.model_extra["conscience"],
        "content": answer.choices[0].message.content,
    }


def test_each_key_is_judged_by_its_own_policy_and_a_request_wins_over_it(
    engine: ScriptedEngine, make_proxy: Any
) -> None:
    engine.verdict = "unethical"  # P(unethical) 0.9
    policies = {
        key_id("strict-key"): {"policy": "block", "framework": "wwjd"},
        key_id("lenient-key"): {"unethical_threshold": 0.95},
    }
    url = make_proxy(
        api_keys="strict-key,lenient-key,plain-key",
        admin_key="admin-key",
        key_policies=json.dumps(policies),
        judge_method="single",
    )
    strict = _said(url, "strict-key")
    assert strict["action"] == "blocked" and strict["framework"] == "wwjd"
    lenient = _said(url, "lenient-key")
    assert lenient["verdict"] == "ethical" and lenient["action"] == "passed"  # 0.9 < 0.95
    plain = _said(url, "plain-key")
    assert plain["action"] == "rewritten" and plain["framework"] == "three-laws"
    # The request's own options win over its key's.
    asked = _said(url, "strict-key", extra_body={"conscience": {"policy": "flag"}})
    assert asked["action"] == "flagged" and asked["framework"] == "wwjd"
    rows = httpx.get(url + "/admin/judgements", headers=ADMIN).json()["data"]
    by_key = {row["client_key_id"]: row["action"] for row in reversed(rows)}
    assert by_key[key_id("lenient-key")] == "passed"


def test_a_key_policy_must_name_a_key_id_and_a_known_framework(
    engine_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="not a key id"):
        Settings(key_policies=json.dumps({"sk-the-key-itself": {"policy": "block"}}))
    with pytest.raises(ValidationError):
        Settings(key_policies=json.dumps({key_id("k"): {"policy": "maybe"}}))
    settings = Settings(
        upstream_url=engine_url,
        model="gen",
        judge_model="judge",
        store_url=str(tmp_path / "judgements.sqlite3"),
        key_policies=json.dumps({key_id("k"): {"framework": "nope"}}),
    )
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ConfigError, match=f"{key_id('k')}'s framework 'nope' is unknown"):
        asyncio.run(start())


@pytest.mark.parametrize("shadow", [True, False])
def test_the_flag_policy_stores_the_rewrite_it_does_not_serve(
    engine: ScriptedEngine, make_proxy: Any, shadow: bool
) -> None:
    engine.verdict = "unethical"
    url = make_proxy(policy="flag", flag_rewrite=shadow, admin_key="admin-key")
    said = _said(url, "none")
    assert said["action"] == "flagged" and said["content"] == engine.generation  # served as is
    stored = httpx.get(url + f"/admin/judgements/{said['judgement_id']}", headers=ADMIN).json()
    assert stored["action"] == "flagged"
    if shadow:
        assert stored["rewrite"] == engine.rewrite and len(engine.of_kind("rewrite")) == 1
    else:
        assert stored["rewrite"] is None and engine.of_kind("rewrite") == []
