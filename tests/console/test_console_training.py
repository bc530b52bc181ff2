"""The console's training page: the runs and their reports, the adapter served, publishing one
after a confirmation and rolling back, through the admin API's switch (scripted upstream)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conscience.testing.scripted import ScriptedEngine
from tests.console.conftest import ADMIN_KEY, csrf_of, sign_in

RUN = "conscience-20260101"


@pytest.fixture
def adapters(tmp_path: Path, engine: ScriptedEngine) -> Path:
    root = tmp_path / "adapters"
    for name, report in (
        (RUN, {"status": "trained", "pairs_total": 12, "note": "<script>alert(1)</script>"}),
        ("conscience-20251231", {"status": "nothing_to_learn"}),
    ):
        (root / name).mkdir(parents=True)
        (root / name / "adapter_config.json").write_text("{}")
        (root / name / "report.json").write_text(json.dumps(report))
    engine.adapters = {RUN: str(root / RUN)}  # the upstream serves this one (vLLM loaded it)
    return root


@pytest.fixture
def console_settings(adapters: Path) -> dict[str, Any]:
    return {"adapters_dir": adapters}


def _generator(url: str) -> str:
    answer = httpx.get(url + "/admin/adapter", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return answer.json()["model"]


def test_publish_and_roll_back(console_url: str, adapters: Path) -> None:
    client = sign_in(console_url)
    page = client.get("/ui/training").text
    assert RUN in page and "nothing_to_learn" in page and "12" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'id="generator">gen<' in page
    confirm = client.get(f"/ui/training/publish/{RUN}").text
    assert f"Publish {RUN}" in confirm and _generator(console_url) == "gen"  # nothing yet
    token = csrf_of(confirm)
    assert client.post("/ui/training/publish", data={"name": RUN}).status_code == 403
    done = client.post("/ui/training/publish", data={"name": RUN, "csrf": token})
    assert done.status_code == 303 and _generator(console_url) == RUN
    assert (adapters / "CURRENT").read_text().strip() == RUN
    page = client.get("/ui/training").text
    assert 'id="generator">conscience-20260101<' in page and "Roll back to the base model" in page
    # Not served by the upstream: refused with the admin API's reason, nothing changes.
    refused = client.post(
        "/ui/training/publish", data={"name": "conscience-20251231", "csrf": token}
    )
    assert refused.status_code == 404 and _generator(console_url) == RUN
    back = client.post("/ui/training/publish", data={"name": "gen", "csrf": token})
    assert back.status_code == 303 and _generator(console_url) == "gen"
    assert (adapters / "CURRENT").read_text().strip() == "gen"
    bad = client.post("/ui/training/publish", data={"name": "../etc", "csrf": token})
    assert bad.status_code == 400


def test_the_probe_section_shows_refits_and_rolls_back(
    console_url: str, tmp_path: Path, engine: ScriptedEngine
) -> None:
    from dataclasses import asdict, replace

    from conscience.testing.scripted import SCRIPTED_PROBE

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    state = httpx.get(console_url + "/admin/probe", headers=admin)
    if state.status_code == 409:
        pytest.skip("this console's proxy judges with the single method")
    client = sign_in(console_url)
    page = client.get("/ui/training").text
    assert "<h2>The judge" in page and "No refit has been published" in page
    assert "Roll back the probe" not in page
    fitted = {**SCRIPTED_PROBE.fitted, "labels": {"count": 42}}
    candidate = replace(SCRIPTED_PROBE, threshold=0.0, fitted=fitted)
    refused = {"passed": False, "reason": "held auc 0.6 against <b>0.7</b>"}
    body = {"probes": [asdict(candidate)], "gate": refused}
    assert httpx.post(console_url + "/admin/probe", json=body, headers=admin).status_code == 409
    body["gate"] = {"passed": True, "reason": "not worse on held, dev"}
    assert httpx.post(console_url + "/admin/probe", json=body, headers=admin).status_code == 200
    page = client.get("/ui/training").text
    assert "refused: held auc 0.6 against &lt;b&gt;0.7&lt;/b&gt;" in page  # inert
    assert "passed: not worse on held, dev" in page and "(42 human labels)" in page
    assert 'id="probe-source">published probe' in page
    confirm = client.get("/ui/training/probe/rollback").text
    token = csrf_of(confirm)
    assert client.post("/ui/training/probe/rollback", data={}).status_code == 403
    done = client.post("/ui/training/probe/rollback", data={"csrf": token})
    assert done.status_code == 303
    source = httpx.get(console_url + "/admin/probe", headers=admin).json()["source"]
    assert not source.startswith("published")
    assert client.get("/ui/training/probe/rollback").status_code == 409
