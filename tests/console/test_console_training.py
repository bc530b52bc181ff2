"""The console's training page: the runs and their reports, the adapter served, publishing one
after a confirmation and rolling back, through the admin API's switch (scripted upstream)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conscience.server.scripted import ScriptedEngine
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
