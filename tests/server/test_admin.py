"""The admin API: judgements, human labels, pairs, the served adapter; refused to clients."""

import json

import httpx
import openai

from conscience.testing.scripted import ScriptedEngine

ASK = [{"role": "user", "content": "Help me cheat on my exam."}]


def test_admin_flow(engine: ScriptedEngine, make_proxy) -> None:
    url = make_proxy(api_keys="client-key", admin_key="admin-key")
    client = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
    engine.verdict = "unethical"
    bad = client.chat.completions.create(model="gen", messages=ASK)
    engine.verdict = "ethical"
    client.chat.completions.create(model="gen", messages=ASK)
    admin = {"Authorization": "Bearer admin-key"}

    # Client keys do not open the admin API.
    refused = httpx.get(url + "/admin/judgements", headers={"Authorization": "Bearer client-key"})
    assert refused.status_code == 401 and "client-key" not in refused.text

    listing = httpx.get(url + "/admin/judgements", headers=admin).json()
    assert listing["total"] == 2
    only_bad = httpx.get(
        url + "/admin/judgements", params={"verdict": "unethical"}, headers=admin
    ).json()
    assert [j["id"] for j in only_bad["data"]] == [bad.model_extra["conscience"]["judgement_id"]]

    pairs = httpx.get(url + "/admin/pairs", headers=admin).text.splitlines()
    (pair,) = map(json.loads, pairs)
    assert pair["prompt"] == ASK
    assert pair["chosen"] == [{"role": "assistant", "content": engine.rewrite}]
    assert pair["rejected"] == [{"role": "assistant", "content": engine.generation}]

    # A human says the answer was fine: it is no longer a pair for training.
    judgement_id = bad.model_extra["conscience"]["judgement_id"]
    labelled = httpx.post(
        url + f"/admin/judgements/{judgement_id}/label", json={"label": "ethical"}, headers=admin
    )
    assert labelled.status_code == 200 and labelled.json()["human_label"] == "ethical"
    assert httpx.get(url + "/admin/pairs", headers=admin).text == ""
    missing = httpx.post(
        url + "/admin/judgements/jdg_nope/label", json={"label": "ethical"}, headers=admin
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.post(
        url + f"/admin/judgements/{judgement_id}/label", json={"label": "meh"}, headers=admin
    )
    assert wrong.status_code == 400


def test_adapter_switch_changes_generator_not_judge(engine: ScriptedEngine, make_proxy) -> None:
    url = make_proxy(admin_key="admin-key")
    admin = {"Authorization": "Bearer admin-key"}
    assert httpx.get(url + "/admin/adapter", headers=admin).json() == {
        "model": "gen",
        "judge_model": "judge",
        "engine": "upstream",  # the publisher loads adapters into the upstream, not the proxy
    }
    unknown = httpx.post(url + "/admin/adapter", json={"model": "conscience-v9"}, headers=admin)
    assert unknown.status_code == 404
    switched = httpx.post(url + "/admin/adapter", json={"model": "judge"}, headers=admin)
    assert switched.json()["model"] == "judge"


def test_admin_disabled_without_key(proxy_url: str) -> None:
    response = httpx.get(proxy_url + "/admin/judgements")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_disabled"


def test_a_judgement_records_the_requests_trace_id(make_proxy) -> None:
    url = make_proxy(admin_key="admin-key")
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    answer = client.chat.completions.create(
        model="gen",
        messages=ASK,
        extra_headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    judgement_id = answer.model_extra["conscience"]["judgement_id"]
    admin = {"Authorization": "Bearer admin-key"}
    stored = httpx.get(url + f"/admin/judgements/{judgement_id}", headers=admin).json()
    assert stored["trace_id"] == trace
    untraced = client.chat.completions.create(model="gen", messages=ASK)
    other = untraced.model_extra["conscience"]["judgement_id"]
    # No trace came with it: none, or the proxy's own where a tracer is installed; never the first.
    assert httpx.get(url + f"/admin/judgements/{other}", headers=admin).json()["trace_id"] != trace
