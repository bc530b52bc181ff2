"""The console in a real browser: Debian's Chromium driven by Playwright.

Sign-in, the table and a filter, one judgement, labelling and undo, the label queue, the
overview, the training page (an adapter published and rolled back, the probe's refits and its
rollback), sign-out; and
hostile text in prompts and answers (``<script>``, ``<img onerror>``, ``javascript:`` links,
look-alike buttons) that must stay inert text. Each page's screenshot is taken on the way; with
``CONSCIENCE_UPDATE_SCREENSHOTS=1`` they are written into ``docs/images/`` (docs/console.md).

Skipped, saying why, where Playwright or a Chromium is missing; required (a failure instead)
with ``CONSCIENCE_REQUIRE_BROWSER=1``, as in CI. The browser is found at
``CONSCIENCE_CHROMIUM``, else ``chromium`` on the PATH (Debian's package, ``apt-get install
chromium``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conscience.judgement import Judgement
from tests.console.conftest import ADMIN_KEY, HOSTILE_ANSWER, HOSTILE_PROMPT

pytestmark = pytest.mark.slow

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def _missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; the test extra has it)"
    if _chromium() is None:
        return "no Chromium found (apt-get install chromium, or set CONSCIENCE_CHROMIUM)"
    return None


def _chromium() -> str | None:
    given = os.environ.get("CONSCIENCE_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = _missing()
    if why is not None:
        if os.environ.get("CONSCIENCE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CONSCIENCE_REQUIRE_BROWSER=1, but {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    # As root (CI containers) Chromium refuses to start inside its own sandbox.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=_chromium(), headless=True, args=[*args, "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, console_url: str) -> Iterator[Any]:
    """A fresh browser context on the console; fails the test on any script error or dialog."""
    context = browser.new_context(base_url=console_url, viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    tab.events = []  # type: ignore[attr-defined]
    tab.on("dialog", lambda d: (tab.events.append(f"dialog: {d.message}"), d.dismiss()))
    tab.on("pageerror", lambda e: tab.events.append(f"page error: {e}"))
    tab.set_default_timeout(10_000)
    yield tab
    context.close()


RUN = "run-20261207-031500"


@pytest.fixture
def console_settings(tmp_path: Path, engine: Any) -> dict[str, Any]:
    """Two nightly runs on disk, one of them served by the (scripted) upstream."""
    root = tmp_path / "adapters"
    for name, report in ((RUN, {"status": "trained", "pairs_total": 12}),):
        (root / name).mkdir(parents=True)
        (root / name / "adapter_config.json").write_text("{}")
        (root / name / "report.json").write_text(json.dumps(report))
    engine.adapters = {RUN: str(root / RUN)}
    return {"adapters_dir": root}


def _shot(tab: Any, name: str, tmp_path: Path) -> None:
    folder = DOCS_IMAGES if os.environ.get("CONSCIENCE_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"console-{name}.png"
    tab.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 1000


def _sign_in(tab: Any) -> None:
    tab.goto("/ui/")
    assert tab.url.endswith("/ui/login")
    tab.get_by_label("Admin key").fill(ADMIN_KEY)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url("**/ui/judgements")


def _not_pwned(tab: Any) -> None:
    assert tab.evaluate("() => window.__pwned === undefined"), tab.evaluate("window.__pwned")
    assert tab.events == []


def test_sign_in_table_and_filter(page: Any, judgements: list[Judgement], tmp_path: Path) -> None:
    page.goto("/ui/login")
    _shot(page, "login", tmp_path)
    page.get_by_label("Admin key").fill("not-the-key")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "That is not the admin key."
    _sign_in(page)
    rows = page.locator("table.judgements tbody tr")
    assert rows.count() == len(judgements)
    assert ADMIN_KEY not in page.content() and ADMIN_KEY not in page.url
    cookie = next(c for c in page.context.cookies() if c["name"] == "conscience_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("() => document.cookie") == ""  # HttpOnly: no script can read it
    _shot(page, "judgements", tmp_path)

    page.get_by_label("Verdict").select_option("unethical")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**verdict=unethical**")
    assert rows.count() == 3
    page.get_by_label("Text").fill("cheat")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**q=cheat**")
    assert rows.count() == 1 and "Help me cheat" in rows.first.inner_text()
    _not_pwned(page)


def test_one_judgement_label_and_undo(
    page: Any, console_url: str, judgements: list[Judgement], tmp_path: Path
) -> None:
    _sign_in(page)
    target = judgements[1]  # the rewritten one
    page.get_by_role("link", name=target.created_at.strftime("%Y-%m-%d %H:%M:%S")).click()
    page.wait_for_url(f"**/ui/judgements/{target.id}")
    assert page.locator("del").count() >= 1 and page.locator("ins").count() >= 1
    assert "study for the exam" in page.locator(".diff").inner_text()
    _shot(page, "judgement", tmp_path)

    def stored() -> str | None:
        answer = httpx.get(
            f"{console_url}/admin/judgements/{target.id}",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        return answer.json()["human_label"]

    page.get_by_role("button", name="unethical", exact=True).click()
    page.wait_for_load_state()
    assert page.locator("#human-label").inner_text() == "unethical" and stored() == "unethical"
    page.get_by_role("button", name="ethical", exact=True).click()
    page.wait_for_load_state()
    assert page.locator("#human-label").inner_text() == "ethical" and stored() == "ethical"
    page.get_by_role("button", name="clear label").click()
    page.wait_for_load_state()
    assert page.locator("#human-label").inner_text() == "none" and stored() is None
    assert page.get_by_role("button", name="clear label").is_disabled()
    _not_pwned(page)


def test_overview(page: Any, tmp_path: Path) -> None:
    _sign_in(page)
    page.get_by_role("link", name="Overview").click()
    page.wait_for_url("**/ui/overview")
    assert page.get_by_role("img", name="Verdicts over time").is_visible()
    assert page.get_by_role("img", name="Actions over time").is_visible()
    assert page.locator("svg.chart rect").count() >= 6
    assert "50.0%" in page.inner_text("main")  # the judge against the two human labels
    _shot(page, "overview", tmp_path)
    _not_pwned(page)


def test_label_queue(page: Any, judgements: list[Judgement], tmp_path: Path) -> None:
    _sign_in(page)
    page.get_by_role("link", name="Label queue").click()
    page.wait_for_url("**/ui/queue")
    rows = page.locator("table.judgements tbody tr")
    assert rows.count() == 4  # the unlabelled ones
    assert "0.200" in rows.first.inner_text()  # P(unethical) 0.7, nearest one half
    _shot(page, "queue", tmp_path)
    _not_pwned(page)


def test_hostile_text_stays_text(page: Any, judgements: list[Judgement], tmp_path: Path) -> None:
    _sign_in(page)
    hostile = judgements[3]
    for path in ("/ui/judgements", "/ui/judgements?q=script", f"/ui/judgements/{hostile.id}"):
        page.goto(path)
        page.wait_for_load_state("load")
        assert page.locator("script").count() == 0
        assert page.locator("img").count() == 0
        assert page.locator("main svg").count() == 0
        assert page.locator('a[href^="javascript:"]').count() == 0
        _not_pwned(page)
    # On the judgement's page the markup reads as the text it is, and the answer's look-alike
    # button is no button.
    main = page.inner_text("main")
    assert HOSTILE_PROMPT in main
    assert "<script>window.__pwned" in main and "<button>ethical</button>" in main
    assert page.get_by_role("button", name="ethical", exact=True).count() == 1
    assert page.get_by_role("link", name="Sign in again").count() == 0
    page.get_by_text("click me").first.click()  # text, not a link: nothing happens
    _not_pwned(page)
    assert HOSTILE_ANSWER.split("<svg")[0].replace("</pre>", "") in main
    _shot(page, "hostile", tmp_path)


def test_sign_out(page: Any) -> None:
    _sign_in(page)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login")
    page.goto("/ui/judgements")
    assert page.url.endswith("/ui/login")


def test_training_shows_the_probe_refits_and_rolls_back(
    page: Any, console_url: str, tmp_path: Path
) -> None:
    from dataclasses import asdict, replace

    from conscience.testing.scripted import SCRIPTED_PROBE

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    fitted = {**SCRIPTED_PROBE.fitted, "train_items": 380, "labels": {"count": 140}}
    body: dict[str, Any] = {"probes": [asdict(replace(SCRIPTED_PROBE, fitted=fitted))]}
    hostile = "<img src=x onerror=\"window.__pwned = 'gate'\">"
    body["gate"] = {"passed": False, "reason": f"held auc 0.61 against 0.74 {hostile}"}
    assert httpx.post(console_url + "/admin/probe", json=body, headers=admin).status_code == 409
    body["gate"] = {"passed": True, "reason": "not worse on held, dev"}
    assert httpx.post(console_url + "/admin/probe", json=body, headers=admin).status_code == 200
    _sign_in(page)
    page.get_by_role("link", name="Training").click()
    page.wait_for_url("**/ui/training")
    history = page.locator("#probe-history tbody tr")
    assert history.count() == 2
    assert "refused: held auc 0.61 against 0.74 <img" in history.nth(1).inner_text()
    assert page.locator("main img").count() == 0
    assert page.inner_text("#probe-source").startswith("published probe")
    _shot(page, "training", tmp_path)
    page.get_by_role("link", name="Roll back the probe").click()
    page.wait_for_url("**/ui/training/probe/rollback")
    page.get_by_role("button", name="Roll back the probe").click()
    page.wait_for_url("**/ui/training")
    assert not page.inner_text("#probe-source").startswith("published")
    assert page.get_by_role("link", name="Roll back the probe").count() == 0
    _not_pwned(page)


def test_training_publishes_an_adapter_and_rolls_back(page: Any) -> None:
    _sign_in(page)
    page.goto("/ui/training")
    assert page.inner_text("#generator") == "gen"
    page.get_by_role("link", name=f"Publish {RUN}").click()
    page.wait_for_url(f"**/ui/training/publish/{RUN}")
    page.get_by_role("button", name=f"Publish {RUN}").click()
    page.wait_for_url("**/ui/training")
    assert page.inner_text("#generator") == RUN
    page.get_by_role("link", name="Roll back to the base model").click()
    page.get_by_role("button", name="Publish gen").click()
    page.wait_for_url("**/ui/training")
    assert page.inner_text("#generator") == "gen"
    _not_pwned(page)
