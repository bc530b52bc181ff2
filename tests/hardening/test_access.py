"""Access: the admin API opens only to the admin key; wrong keys of every shape are refused; no
log line, metric or error body gives a key or a stored conversation to a caller without the
admin key."""

from __future__ import annotations

import json
import string
from pathlib import Path

import httpx
import pytest
from proxy_harness import (
    ADMIN_KEY,
    CLIENT_KEY,
    SECRETS,
    UPSTREAM_KEY,
    Proxy,
    assert_envelope,
    auth,
    recording_logs,
    running_proxy,
)

from conscience.server.app import create_app
from conscience.settings import Settings
from conscience.testing.scripted import Fault, free_port

CANARY = "CANARY-7319-my-neighbour-wifi-password"  # a private detail of a stored conversation
ASK = [{"role": "user", "content": f"My secret is {CANARY}. How do I get into that wifi?"}]


def _admin_routes() -> list[tuple[str, str]]:
    """Every admin route of the app (a route added later is covered without editing this)."""
    paths = create_app(Settings(upstream_url="http://unused/v1")).openapi()["paths"]
    return [
        (method.upper(), path.replace("{judgement_id}", "jdg_x"))
        for path, operations in paths.items()
        if path.startswith("/admin")
        for method in operations
    ]


ADMIN_ROUTES = _admin_routes()


def _call(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {"label": "ethical", "model": "gen", "older_than_days": 1}  # valid for any route
    return httpx.request(
        method, proxy.url + path, headers=headers, json=body if method == "POST" else None
    )


def test_admin_routes_exist() -> None:
    assert ("POST", "/admin/purge") in ADMIN_ROUTES
    assert len(ADMIN_ROUTES) >= 7


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_refuses_client_keys_and_no_key(proxy: Proxy, method: str, path: str) -> None:
    for headers in (
        {},
        auth(CLIENT_KEY),
        auth(UPSTREAM_KEY),
        {"Authorization": ADMIN_KEY},  # no scheme
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": "Bearer"},
        {"X-Api-Key": ADMIN_KEY},
    ):
        error = assert_envelope(_call(proxy, method, path, headers), range(401, 402))
        assert error["type"] == "authentication_error"
    assert _call(proxy, method, path, auth(ADMIN_KEY)).status_code != 401


def test_admin_is_off_without_an_admin_key(tmp_path: Path) -> None:
    with running_proxy(tmp_path, admin_key=None) as proxy:
        for method, path in ADMIN_ROUTES:
            for key in (CLIENT_KEY, ADMIN_KEY, ""):
                response = _call(proxy, method, path, auth(key) if key else {})
                assert assert_envelope(response, range(403, 404))["code"] == "admin_disabled"


def _near_misses(key: str) -> set[str]:
    """Wrong keys of every length from 1 to len + 8: prefixes, extensions, one character
    changed at each position, case flips, suffixes, and unrelated strings."""
    alphabet = string.ascii_letters + string.digits + "-_"
    wrong = {key[:n] for n in range(1, len(key))}  # every prefix: an early exit would pass
    wrong |= {key + alphabet[: n + 1] for n in range(8)}
    wrong |= {key[n:] for n in range(1, len(key))}
    for i, char in enumerate(key):
        other = "x" if char != "x" else "y"
        wrong.add(key[:i] + other + key[i + 1 :])
    wrong |= {key.upper(), key.lower().swapcase(), key[::-1], key + " " + key}
    wrong |= {alphabet[n % len(alphabet)] * n for n in range(1, len(key) + 9)}
    wrong.discard(key)
    return {w for w in wrong if w.strip() and w.strip() != key}


def test_wrong_keys_of_every_length_are_refused(proxy: Proxy) -> None:
    with httpx.Client(base_url=proxy.url) as http:
        for key, path in ((CLIENT_KEY, "/v1/models"), (ADMIN_KEY, "/admin/adapter")):
            misses = _near_misses(key)
            assert len(misses) > 3 * len(key)
            for wrong in sorted(misses):
                response = http.get(path, headers=auth(wrong))
                assert response.status_code == 401, (path, wrong)
            assert http.get(path, headers=auth(key)).status_code == 200
        # The client key opens the API but never the admin one.
        assert http.get("/admin/adapter", headers=auth(CLIENT_KEY)).status_code == 401


def _assert_nothing_secret(text: str, where: str, *, conversation: bool = True) -> None:
    for secret in SECRETS:
        # Not even a good part of one: a prefix of 10 characters would halve the search.
        for start in range(0, len(secret) - 9):
            assert secret[start : start + 10] not in text, (where, secret)
    if conversation:
        assert CANARY not in text, where


def test_no_key_or_conversation_leaks_to_logs_metrics_or_errors(tmp_path: Path) -> None:
    with recording_logs() as logs, running_proxy(tmp_path) as proxy:
        engine = proxy.engine
        seen: list[tuple[str, str]] = []  # (where, text) of every answer a caller got
        with httpx.Client(base_url=proxy.url, timeout=10) as http:
            # Client A: a conversation with a private detail, judged unethical and rewritten.
            engine.verdict = "unethical"
            engine.generation = f"Sure: use {CANARY} and then..."
            stored = http.post(
                "/v1/chat/completions", json={"model": "gen", "messages": ASK}, headers=auth()
            )
            assert stored.status_code == 200
            judgement_id = stored.json()["conscience"]["judgement_id"]

            # The upstream fails in every way, once each; one error echoes our upstream key.
            echo = json.dumps({"error": {"message": f"Incorrect API key {UPSTREAM_KEY}"}})
            for kind, fault in (
                ("generate", Fault(status=500, times=1)),
                ("generate", Fault(status=401, body=echo.encode(), times=1)),
                ("generate", Fault(status=400, body=echo.encode(), times=1)),
                ("generate", Fault(status=200, body=b"not json", times=1)),
                ("review", Fault(status=503, times=1)),
                ("rewrite", Fault(status=500, times=1)),
            ):
                engine.faults = {kind: fault}
                for stream in (False, True):
                    response = http.post(
                        "/v1/chat/completions",
                        json={"model": "gen", "messages": ASK, "stream": stream},
                        headers=auth(),
                    )
                    seen.append((f"fault {kind} {fault.status} stream={stream}", response.text))
            engine.faults = {}

            # Caller B, without the admin key, tries every door with every wrong key.
            judgement_paths = [
                ("GET", f"/admin/judgements/{judgement_id}"),
                ("POST", f"/admin/judgements/{judgement_id}/label"),
            ]
            doors = [
                ("GET", "/v1/models"),
                ("GET", "/health"),
                ("GET", "/ready"),
                ("GET", "/metrics"),
                ("GET", "/openapi.json"),
                ("GET", "/nowhere"),
                ("POST", "/v1/chat/completions"),
                *ADMIN_ROUTES,
                *judgement_paths,
            ]
            wrong_keys = ["", CLIENT_KEY, CLIENT_KEY[:-1], ADMIN_KEY[:-1], ADMIN_KEY + "x"]
            for method, path in doors:
                for key in wrong_keys:
                    response = _call(proxy, method, path, auth(key) if key else {})
                    seen.append((f"{method} {path} key={key[:6]!r}", response.text))
                    if path.startswith("/admin"):
                        assert response.status_code == 401, (path, response.text)
                    seen.append((f"{method} {path} headers", str(response.headers)))
            metrics = http.get("/metrics").text

            # Only the admin key reads the conversation back (so the canary was really stored).
            stored_back = http.get(f"/admin/judgements/{judgement_id}", headers=auth(ADMIN_KEY))
            assert CANARY in stored_back.text

    for where, text in seen:
        _assert_nothing_secret(text, where)
    _assert_nothing_secret(metrics, "/metrics")
    assert judgement_id not in metrics
    assert "/admin/judgements/jdg_" not in metrics  # routes by template, not by raw path
    # Logs are the operator's, but no key belongs there either; nor, at INFO and above, the
    # conversation.
    _assert_nothing_secret(logs.text(), "logs (DEBUG)", conversation=False)
    assert CANARY not in "\n".join(
        line for line, level in zip(logs.lines, logs.levels, strict=True) if level >= 20
    )


def test_upstream_credentials_in_its_url_stay_hidden(tmp_path: Path) -> None:
    """An upstream URL with a password in it (basic auth) never reaches a client or the log."""
    password = "pw-4e1d9a7c3b5f2a8e"
    url = f"http://proxyuser:{password}@127.0.0.1:{free_port()}/v1"  # nothing listens there
    with recording_logs() as logs, running_proxy(tmp_path, upstream_url=url) as proxy:
        failed = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "gen", "messages": ASK},
            headers=auth(),
        )
        assert_envelope(failed, range(502, 503))
        ready = httpx.get(proxy.url + "/ready")
        assert ready.status_code == 503
    for text in (failed.text, ready.text, logs.text()):
        assert password not in text
