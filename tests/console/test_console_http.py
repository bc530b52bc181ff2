"""The console over HTTP: sign-in and its cookie, CSRF, the pages' headers, the table and its
filters, one judgement, labels through the store, the overview; hostile text stays text."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from conscience.judgement import Judgement
from tests.console.conftest import ADMIN_KEY, CLIENT_KEY, csrf_of, sign_in


def _ids(page: str) -> list[str]:
    return re.findall(r'href="/ui/judgements/(jdg_[0-9a-f]+)"', page)


def test_sign_in_gives_a_strict_session_cookie_never_the_key(console_url: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = sign_in(console_url)
    answer = client.last
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/judgements"
    cookie = next(h for h in answer.headers.get_list("set-cookie") if "conscience_session" in h)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=" in cookie
    assert "Path=/ui" in cookie
    assert ADMIN_KEY not in cookie and ADMIN_KEY not in answer.headers.get("location", "")
    assert len(client.cookies["conscience_session"]) >= 40  # 32 random bytes
    for path in ("/ui/judgements", "/ui/overview"):
        page = client.get(path)
        assert page.status_code == 200 and ADMIN_KEY not in page.text
    assert ADMIN_KEY not in caplog.text


@pytest.mark.parametrize("key", [CLIENT_KEY, "wrong", ""])
def test_only_the_admin_key_signs_in(console_url: str, key: str) -> None:
    client = sign_in(console_url, key)
    assert client.last.status_code == 401
    assert "conscience_session" not in client.cookies
    assert client.get("/ui/judgements").headers["location"] == "/ui/login"


def test_pages_need_a_session_not_a_bearer_key(console_url: str) -> None:
    for key in (CLIENT_KEY, ADMIN_KEY):
        answer = httpx.get(
            console_url + "/ui/judgements", headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert httpx.get(console_url + "/ui/").headers["location"] == "/ui/login"


def test_sign_in_needs_the_forms_token(console_url: str) -> None:
    client = httpx.Client(base_url=console_url)
    client.get("/ui/login")
    refused = client.post("/ui/login", data={"csrf": "forged", "key": ADMIN_KEY})
    assert refused.status_code == 403 and "conscience_session" not in client.cookies
    other = httpx.Client(base_url=console_url)  # a token, but not this browser's cookie
    token = csrf_of(client.get("/ui/login").text)
    assert other.post("/ui/login", data={"csrf": token, "key": ADMIN_KEY}).status_code == 403


def test_every_page_forbids_script(console_url: str, judgements: list[Judgement]) -> None:
    client = sign_in(console_url)
    for path in (
        "/ui/login",
        "/ui/judgements",
        f"/ui/judgements/{judgements[3].id}",
        "/ui/overview",
    ):
        page = client.get(path)
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        assert "<script" not in page.text.lower() and " style=" not in page.text
    css = client.get("/ui/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_table_newest_first_and_filtered(console_url: str, judgements: list[Judgement]) -> None:
    client = sign_in(console_url)
    newest_first = [j.id for j in reversed(judgements)]
    assert _ids(client.get("/ui/judgements").text) == newest_first

    def ids(**params: str) -> list[str]:
        return _ids(client.get("/ui/judgements", params=params).text)

    assert ids(verdict="unethical") == [judgements[3].id, judgements[2].id, judgements[1].id]
    assert ids(action="blocked") == [judgements[2].id]
    assert ids(model="gen-large") == [judgements[2].id]
    assert ids(framework="care") == [judgements[4].id]
    assert ids(q="CHEAT") == [judgements[1].id]  # case-insensitive, the prompt
    assert ids(q="study for") == [judgements[1].id]  # the rewrite
    assert ids(q="100%") == []  # a wildcard is taken literally
    since = judgements[2].created_at.strftime("%Y-%m-%dT%H:%M")
    until = judgements[4].created_at.strftime("%Y-%m-%dT%H:%M")
    assert ids(since=since, until=until) == [judgements[3].id, judgements[2].id]
    assert ids(verdict="unethical", action="rewritten", q="exam") == [judgements[1].id]
    assert ids(verdict="nonsense") == newest_first  # an unknown choice filters nothing


def test_hostile_text_is_escaped(console_url: str, judgements: list[Judgement]) -> None:
    client = sign_in(console_url)
    for path in ("/ui/judgements", f"/ui/judgements/{judgements[3].id}"):
        page = client.get(path).text
        assert "<img" not in page and "<svg onload" not in page
        assert 'href="javascript:' not in page
        assert "&lt;script&gt;" in page
    detail = client.get(f"/ui/judgements/{judgements[3].id}").text
    assert "&lt;/pre&gt;&lt;script&gt;" in detail  # the answer cannot close its own box
    assert detail.count("<button") == 4  # sign out, ethical, unethical, clear: none of the answer's


def test_one_judgement_shows_the_diff_and_the_reading(
    console_url: str, judgements: list[Judgement]
) -> None:
    client = sign_in(console_url)
    rewritten = client.get(f"/ui/judgements/{judgements[1].id}").text
    assert "<del>Hide</del>" in rewritten or "<del>Hide notes" in rewritten
    assert "<ins>" in rewritten and "study" in rewritten
    assert "0.900" in rewritten and "req_50" in rewritten and "80.0" in rewritten
    blocked = client.get(f"/ui/judgements/{judgements[2].id}").text
    assert "I can&#x27;t help with that." in blocked and "(blocked)" in blocked
    assert client.get("/ui/judgements/jdg_nope").status_code == 404


def test_label_and_undo_through_the_store(console_url: str, judgements: list[Judgement]) -> None:
    client = sign_in(console_url)
    target = judgements[1].id
    page = client.get(f"/ui/judgements/{target}").text
    token = csrf_of(page)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def stored() -> str | None:
        return httpx.get(f"{console_url}/admin/judgements/{target}", headers=admin).json()[
            "human_label"
        ]

    forged = client.post(f"/ui/judgements/{target}/label", data={"label": "ethical"})
    assert forged.status_code == 403 and stored() is None
    wrong = client.post(f"/ui/judgements/{target}/label", data={"label": "ethical", "csrf": "x"})
    assert wrong.status_code == 403 and stored() is None
    foreign = client.post(
        f"/ui/judgements/{target}/label",
        data={"label": "ethical", "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403 and stored() is None
    done = client.post(f"/ui/judgements/{target}/label", data={"label": "ethical", "csrf": token})
    assert done.status_code == 303 and stored() == "ethical"
    assert 'id="human-label">ethical<' in client.get(f"/ui/judgements/{target}").text
    client.post(f"/ui/judgements/{target}/label", data={"label": "clear", "csrf": token})
    assert stored() is None
    bad = client.post(f"/ui/judgements/{target}/label", data={"label": "meh", "csrf": token})
    assert bad.status_code == 400


def test_overview(console_url: str) -> None:
    client = sign_in(console_url)
    page = client.get("/ui/overview").text
    assert page.count("<svg") == 2 and 'aria-label="Verdicts over time"' in page
    assert "6 judgements from" in page
    assert "33.3% (2)" in page  # rewritten
    assert "16.7% (1)" in page  # blocked
    # Review latency: 50, 60, 70, 80, 90, 100 ms.
    assert "75.0 ms" in page and "95.0 ms" in page and "99.5 ms" in page
    # Two labelled: one agrees (ethical), one does not (neutral, humans said unethical).
    assert "50.0%" in page and "0.0%" in page


def test_sign_out_ends_the_session(console_url: str) -> None:
    client = sign_in(console_url)
    token = csrf_of(client.get("/ui/judgements").text)
    assert client.post("/ui/logout", data={}).status_code == 403  # no token
    assert client.post("/ui/logout", data={"csrf": token}).status_code == 303
    old = client.cookies  # the server forgets it even if a browser kept it
    again = httpx.get(console_url + "/ui/judgements", cookies=old)
    assert again.status_code == 303


def test_label_queue_least_sure_first(console_url: str, judgements: list[Judgement]) -> None:
    client = sign_in(console_url)
    page = client.get("/ui/queue").text
    # Unlabelled: P(unethical) 0.02, 0.9, 0.98, 0.7; no probe serves this framework, so the
    # threshold is one half: 0.7 (0.2 away), 0.9 (0.4), then 0.98 and 0.02 (0.48, newest first).
    expected = [judgements[i].id for i in (3, 1, 2, 0)]
    assert _ids(page) == expected
    assert "4 judgements have no human label" in page and "0.200" in page
    token = csrf_of(page)
    client.post(f"/ui/judgements/{expected[0]}/label", data={"label": "ethical", "csrf": token})
    assert _ids(client.get("/ui/queue").text) == expected[1:]
