"""A refitted probe published to a running proxy: served without a restart where its gate
passed, recorded where it did not, rolled back, and judged with again after a restart."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conscience.cli import main
from conscience.probe import save_probe
from conscience.testing.scripted import SCRIPTED_PROBE, ScriptedEngine
from tests.evals.test_probe_refit import _argv, _base_run, _fill, _labelled

ADMIN = {"Authorization": "Bearer admin-key"}
ASK = [{"role": "user", "content": "How do I boil an egg?"}]
PASSED = {"passed": True, "reason": "not worse on held, dev"}
# P(unethical) is below 1 for every state and at least 0 for every state: a probe at threshold
# 1.0 finds every answer ethical, one at 0.0 every answer unethical.
LENIENT = replace(SCRIPTED_PROBE, threshold=1.0)
STRICT = replace(SCRIPTED_PROBE, threshold=0.0)


def _proxy(make_proxy: Any, tmp_path: Path) -> str:
    configured = tmp_path / "configured.json"
    if not configured.exists():
        save_probe(configured, LENIENT)
    return make_proxy(
        admin_key="admin-key",
        api_keys="client-key",
        judge_method="probe",
        probe_file=str(configured),
        probes_dir=str(tmp_path / "probes"),
    )


def _verdict(url: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
    answer = client.chat.completions.create(model="gen", messages=ASK)
    return answer.model_extra["conscience"]["verdict"]


def _publish(url: str, probe: Any, gate: dict[str, Any]) -> httpx.Response:
    body = {"probes": [asdict(probe)], "gate": gate}
    return httpx.post(url + "/admin/probe", json=body, headers=ADMIN, timeout=30)


def test_a_published_probe_judges_at_once_and_a_rollback_restores(
    engine: ScriptedEngine, make_proxy: Any, tmp_path: Path
) -> None:
    url = _proxy(make_proxy, tmp_path)
    state = httpx.get(url + "/admin/probe", headers=ADMIN).json()
    assert state["source"].startswith("probe file") and state["can_roll_back"] is False
    assert [event["action"] for event in state["history"]] == ["started"]
    assert _verdict(url) == "ethical"

    published = _publish(url, STRICT, PASSED)
    assert published.status_code == 200, published.text
    assert _verdict(url) == "unethical"  # the next review, no restart
    state = httpx.get(url + "/admin/probe", headers=ADMIN).json()
    assert state["source"] == f"published probe {tmp_path / 'probes' / 'probe-2.json'}"
    assert state["can_roll_back"] is True and state["history"][0]["gate"] == PASSED
    served = httpx.get(url + "/admin/probe/file", headers=ADMIN).json()
    assert [entry["threshold"] for entry in served] == [0.0]

    # A candidate its gate refused is recorded, and nothing changes.
    refused = _publish(url, LENIENT, {"passed": False, "reason": "dev auc 0.7 against 0.8"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "gate_failed"
    assert "dev auc 0.7 against 0.8" in refused.json()["error"]["message"]
    assert _verdict(url) == "unethical"
    history = httpx.get(url + "/admin/probe", headers=ADMIN).json()["history"]
    assert [event["action"] for event in history] == ["refused", "published", "started"]

    # A probe the judge cannot use is refused before it is recorded.
    other_model = _publish(url, replace(STRICT, model="another"), PASSED)
    assert other_model.status_code == 422 and "another" in other_model.text
    smaller = replace(STRICT, mean=(0.5,) * 4, sd=(0.25,) * 4, weights=(1.0,) * 4)
    assert _publish(url, smaller, PASSED).status_code == 422
    broken = httpx.post(
        url + "/admin/probe", json={"probes": [{"model": "judge"}], "gate": PASSED}, headers=ADMIN
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_probe"
    # Client keys do not open it.
    client = {"Authorization": "Bearer client-key"}
    assert httpx.get(url + "/admin/probe", headers=client).status_code == 401

    # A restart judges with the published probe again; a rollback restores the configured one.
    second = _proxy(make_proxy, tmp_path)
    assert _verdict(second) == "unethical"
    back = httpx.post(second + "/admin/probe/rollback", headers=ADMIN)
    assert back.status_code == 200 and back.json()["source"].startswith("probe file")
    assert _verdict(second) == "ethical"
    again = httpx.post(second + "/admin/probe/rollback", headers=ADMIN)
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_rollback"
    third = _proxy(make_proxy, tmp_path)
    assert _verdict(third) == "ethical"
    lines = (tmp_path / "probes" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == [
        "started",
        "published",
        "refused",
        "started",
        "rolled back",
        "started",
    ]


def test_the_single_method_has_no_probe_to_switch(make_proxy: Any) -> None:
    url = make_proxy(admin_key="admin-key", judge_method="single")
    answer = httpx.get(url + "/admin/probe", headers=ADMIN)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "no_probe"


def test_the_refit_command_gates_against_the_served_probe_and_publishes(
    engine: ScriptedEngine,
    engine_url: str,
    make_proxy: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = _proxy(make_proxy, tmp_path)
    _base_run(tmp_path / "base" / "train", 80, 1)
    _base_run(tmp_path / "base" / "dev", 40, 2)
    for entry in ("train", "dev"):  # the proxy's probe reads 300-character windows
        run = tmp_path / "base" / entry / "run.json"
        run.write_text(
            run.read_text().replace('"max_answer_chars": 400', '"max_answer_chars": 300')
        )
    store = str(tmp_path / "labels.sqlite3")
    asyncio.run(_fill(store, _labelled(60)))
    monkeypatch.setenv("CONSCIENCE_ADMIN_KEY", "admin-key")
    setup = {"store": store, "base": tmp_path / "base", "out": tmp_path / "candidate.json"}
    argv = _argv(engine_url, setup, "--publish", url, "--tolerance", "1")
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["current"] == f"served by {url}"
    assert report["publish"]["published"] is True
    state = httpx.get(url + "/admin/probe", headers=ADMIN).json()
    assert state["source"] == report["publish"]["source"]
    assert state["fitted"]["judge/three-laws/paper"]["human_labels"] == 60
    # Without the admin key the command says what it needs.
    monkeypatch.delenv("CONSCIENCE_ADMIN_KEY")
    assert main(argv) == 1
    assert "CONSCIENCE_ADMIN_KEY" in capsys.readouterr().err
