"""Every failure is the OpenAI error envelope with its true status, through the real client."""

from typing import Any

import httpx
import openai
import pytest

from conscience.testing.scripted import Fault, ScriptedEngine, free_port

ASK = [{"role": "user", "content": "Hello?"}]


def _client(url: str, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)


def _envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


def test_bad_requests_are_400(proxy_url: str) -> None:
    url = proxy_url + "/v1/chat/completions"
    assert _envelope(httpx.post(url, content=b"{not json"), 400)["code"] == "invalid_json"
    assert _envelope(httpx.post(url, json=[1, 2]), 400)["code"] == "invalid_json"
    error = _envelope(httpx.post(url, json={"model": "gen", "messages": []}), 400)
    assert error["param"] == "messages"
    error = _envelope(
        httpx.post(url, json={"model": "gen", "messages": ASK, "max_tokens": -1}), 400
    )
    assert error["param"] == "max_tokens"
    bad_role = {"model": "gen", "messages": [{"role": "wizard", "content": "x"}]}
    assert _envelope(httpx.post(url, json=bad_role), 400)["param"] == "messages.0.role"
    with pytest.raises(openai.BadRequestError):
        _client(proxy_url).chat.completions.create(model="gen", messages=ASK, temperature=5)


def test_unknown_route_404_and_too_large_413(make_proxy) -> None:
    url = make_proxy(max_body_bytes=2000)
    # Outside /v1 (inside it, the upstream answers: tests/server/test_passthrough.py).
    assert _envelope(httpx.get(url + "/nothing"), 404)["type"] == "not_found_error"
    big = {"model": "gen", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert _envelope(httpx.post(url + "/v1/chat/completions", json=big), 413)["code"] == (
        "request_too_large"
    )

    def chunked():  # no Content-Length: refused after reading, still 413
        yield b'{"model": "gen", "messages": [{"role": "user", "content": "'
        yield b"y" * 5000
        yield b'"}]}'

    response = httpx.post(url + "/v1/chat/completions", content=chunked())
    assert _envelope(response, 413)["code"] == "request_too_large"


def test_client_keys(make_proxy) -> None:
    url = make_proxy(api_keys="key-one,key-two")
    with pytest.raises(openai.AuthenticationError):
        _client(url, "wrong").chat.completions.create(model="gen", messages=ASK)
    response = httpx.post(url + "/v1/chat/completions", json={"model": "gen", "messages": ASK})
    assert _envelope(response, 401)["type"] == "authentication_error"
    assert _client(url, "key-two").chat.completions.create(model="gen", messages=ASK).choices
    assert httpx.get(url + "/health").status_code == 200  # liveness needs no key


def test_upstream_down_is_502(make_proxy) -> None:
    url = make_proxy(upstream_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(openai.APIStatusError) as info:
        _client(url).chat.completions.create(model="gen", messages=ASK)
    assert info.value.status_code == 502
    ready = httpx.get(url + "/ready")
    assert ready.status_code == 503 and "upstream" in ready.json()["problems"][0]


def test_upstream_timeout_is_504_and_garbage_502(engine: ScriptedEngine, make_proxy) -> None:
    slow = make_proxy(upstream_timeout=0.5)
    engine.faults["generate"] = Fault(status=200, delay=1.5, times=1)
    with pytest.raises(openai.APIStatusError) as info:
        _client(slow).chat.completions.create(model="gen", messages=ASK)
    assert info.value.status_code == 504
    url = make_proxy(upstream_timeout=30.0)  # faults that come at once, however busy the machine
    engine.faults["generate"] = Fault(status=200, body=b"\x00garbage", times=1)
    with pytest.raises(openai.APIStatusError) as info:
        _client(url).chat.completions.create(model="gen", messages=ASK)
    assert info.value.status_code == 502
    engine.faults["generate"] = Fault(status=500, times=1)
    with pytest.raises(openai.APIStatusError) as info:
        _client(url).chat.completions.create(model="gen", messages=ASK)
    assert info.value.status_code == 502


def test_upstream_4xx_passes_through(engine: ScriptedEngine, proxy_url: str) -> None:
    engine.faults["generate"] = Fault(status=400)
    with pytest.raises(openai.BadRequestError, match="scripted fault 400"):
        _client(proxy_url).chat.completions.create(model="gen", messages=ASK)


def test_upstream_key_never_leaks(engine: ScriptedEngine, proxy_url: str) -> None:
    engine.faults["generate"] = Fault(status=500)
    response = httpx.post(
        proxy_url + "/v1/chat/completions", json={"model": "gen", "messages": ASK}
    )
    assert "sk-upstream-secret" not in response.text
    assert "sk-upstream-secret" not in httpx.get(proxy_url + "/metrics").text


def test_review_failure_closed_is_503(engine: ScriptedEngine, proxy_url: str, tmp_path) -> None:
    engine.faults["review"] = Fault(status=500)
    with pytest.raises(openai.InternalServerError) as info:
        _client(proxy_url).chat.completions.create(model="gen", messages=ASK)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "review_failed"
    # A stream fails the same way, before any text is sent.
    response = httpx.post(
        proxy_url + "/v1/chat/completions", json={"model": "gen", "messages": ASK, "stream": True}
    )
    assert _envelope(response, 503)["code"] == "review_failed"


def test_review_failure_open_serves_unreviewed(engine: ScriptedEngine, make_proxy) -> None:
    engine.faults["review"] = Fault(status=500)
    raw = _client(make_proxy(on_review_error="open")).chat.completions.with_raw_response.create(
        model="gen", messages=ASK
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == engine.generation
    assert completion.model_extra["conscience"]["action"] == "unreviewed"
    assert completion.model_extra["conscience"]["verdict"] is None
    assert raw.headers["x-conscience-verdict"] == "unreviewed"


def test_failed_rewrite_blocks_rather_than_serving_the_original(
    engine: ScriptedEngine, proxy_url: str
) -> None:
    engine.verdict = "unethical"
    engine.faults["rewrite"] = Fault(status=500)
    completion = _client(proxy_url).chat.completions.create(model="gen", messages=ASK)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.model_extra["conscience"]["action"] == "blocked"


def test_upstream_refusing_the_proxys_key_is_502_not_401(
    engine: ScriptedEngine, proxy_url: str
) -> None:
    engine.faults["generate"] = Fault(status=401)
    with pytest.raises(openai.APIStatusError) as info:
        _client(proxy_url).chat.completions.create(model="gen", messages=ASK)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_auth_failed"


@pytest.mark.parametrize(("status", "served"), [(429, 429), (503, 502)])
def test_rate_limit_headers_pass_through(
    engine: ScriptedEngine, proxy_url: str, status: int, served: int
) -> None:
    engine.faults["generate"] = Fault(status=status)
    engine.response_headers = {"Retry-After": "7", "X-RateLimit-Remaining-Requests": "0"}
    with pytest.raises(openai.APIStatusError) as caught:
        _client(proxy_url).chat.completions.create(model="gen", messages=ASK)
    response = caught.value.response
    assert response.status_code == served
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_upstream_failures_name_no_internal_url(
    engine: ScriptedEngine, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(openai.APIStatusError) as caught:
        _client(make_proxy(upstream_url=dead)).chat.completions.create(model="gen", messages=ASK)
    assert caught.value.status_code == 502
    assert "127.0.0.1" not in caught.value.response.text
    assert "the upstream" in caught.value.message
    assert dead in caplog.text  # the operator's log keeps the address
    engine.faults["generate"] = Fault(status=200, delay=3.0)  # past upstream_timeout (2 s)
    with pytest.raises(openai.APIStatusError) as caught:
        _client(make_proxy()).chat.completions.create(model="gen", messages=ASK)
    assert caught.value.status_code == 504
    assert "127.0.0.1" not in caught.value.response.text
