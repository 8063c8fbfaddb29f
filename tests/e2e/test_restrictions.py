"""Restrictions at the gate (issue 13) through real Envoy with the shipped config, the real
OpenAI Python SDK, grpcurl and the CLI: allowed models from the JSON body, allowed networks
from Envoy's source address, decision ids on every answer, and one grpcurl call that says why
a token was denied.
"""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import ORG, USER, new_marker, seen_with_marker

DECISION_ID = "x-casola-decision-id"


def sdk(gateway, api_key: str) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/openai/v1", api_key=api_key, max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def restricted(cli):
    """Tokens made with the CLI's --allow-model / --allow-network, by name."""
    return {
        "models": cli.create_token("e2e-models", preset="user-full", allow_models=("llama-4-*", "casola-test-model")),
        # Excludes 127.0.0.1, where every test request comes from.
        "elsewhere": cli.create_token("e2e-elsewhere", preset="user-full", allow_networks=("10.0.0.0/8", "2001:db8::/32")),
        "loopback": cli.create_token("e2e-loopback", preset="user-full", allow_networks=("127.0.0.0/8", "::1/128")),
    }


def chat(client: OpenAI, model: str):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])


def test_cli_shows_the_restrictions(cli, restricted):
    cp = cli("token", "list", "--org", ORG, "--user", USER, "--output", "json")
    tokens = {t["name"]: t for t in json.loads(cp.stdout)}
    assert tokens["e2e-models"]["allowed_models"] == ["llama-4-*", "casola-test-model"]
    assert tokens["e2e-elsewhere"]["allowed_networks"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert tokens["e2e-models"]["allowed_networks"] == []
    table = cli("token", "list", "--org", ORG, "--user", USER).stdout
    assert "NETWORKS" in table and "llama-4-*" in table, table


def test_model_restricted_token_gets_its_completion_and_a_named_refusal_for_another_model(gateway, upstream, restricted):
    client = sdk(gateway, restricted["models"])
    done = chat(client, "llama-4-scout")
    assert done.choices[0].message.content == "echo: hello"
    assert done.model == "llama-4-scout"
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(client, "gpt-4o")
    err = info.value
    assert err.status_code == 403
    assert err.code == "model_not_allowed", err.body
    assert "gpt-4o" in err.message, err.message


def test_model_restricted_token_without_a_readable_model_is_refused_never_let_through(gateway, upstream, restricted):
    token = restricted["models"]
    headers = {"authorization": f"Bearer {token}", "x-e2e-id": new_marker()}
    url = gateway.url + "/openai/v1/chat/completions"
    not_json = httpx.post(url, headers={**headers, "content-type": "text/plain"}, content=b"model=llama-4-scout", timeout=20)
    assert not_json.status_code == 400, not_json.text
    assert not_json.json()["error"]["code"] == "model_required"
    # Larger than the shipped config's max_request_bytes: Envoy sends it cut.
    big = {"model": "llama-4-scout", "messages": [{"role": "user", "content": "x" * 60_000}]}
    too_large = httpx.post(url, headers=headers, json=big, timeout=20)
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["error"]["code"] == "request_too_large"
    assert not seen_with_marker(upstream, headers["x-e2e-id"]), "nothing reached the upstream"


def test_unrestricted_token_still_sends_large_bodies(gateway, upstream, tokens):
    big = {"model": "anything", "messages": [{"role": "user", "content": "x" * 60_000}]}
    r = httpx.post(gateway.url + "/openai/v1/chat/completions", headers={"authorization": f"Bearer {tokens.full}"}, json=big, timeout=20)
    assert r.status_code == 200, r.text


def test_network_restricted_token_is_denied_outside_its_list_and_allowed_inside(gateway, upstream, restricted):
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(sdk(gateway, restricted["elsewhere"]), "llama-4-scout")
    assert info.value.code == "network_not_allowed", info.value.body
    assert "127.0.0.1" in info.value.message
    done = chat(sdk(gateway, restricted["loopback"]), "llama-4-scout")
    assert done.choices[0].message.content == "echo: hello"


def test_every_answer_through_envoy_carries_a_decision_id(gateway, upstream, tokens, restricted):
    ids = set()
    for token, status in [(tokens.full, 200), (tokens.read, 403), ("csl_nope", 401), (restricted["elsewhere"], 403)]:
        marker = new_marker()
        r = httpx.post(gateway.url + "/openai/v1/chat/completions",
                       headers={"authorization": f"Bearer {token}", "x-e2e-id": marker},
                       json={"model": "m", "messages": []}, timeout=20)
        assert r.status_code == status, r.text
        decision_id = r.headers.get(DECISION_ID)
        assert decision_id, f"no {DECISION_ID} on a {status}: {dict(r.headers)}"
        assert uuid.UUID(decision_id).version == 7
        ids.add(decision_id)
        if status == 200:
            seen = seen_with_marker(upstream, marker)
            upstream_ids = [v for r_ in seen for k, v in r_["headers"] if k.lower() == DECISION_ID]
            assert upstream_ids == [decision_id], "the upstream sees the same id"
    assert len(ids) == 4


def test_a_client_cannot_forge_the_decision_id(gateway, upstream, tokens):
    marker = new_marker()
    r = httpx.get(gateway.url + "/openai/v1/models",
                  headers={"authorization": f"Bearer {tokens.read}", "x-e2e-id": marker, DECISION_ID: "forged"}, timeout=20)
    assert r.status_code == 200
    assert r.headers[DECISION_ID] != "forged"
    seen = seen_with_marker(upstream, marker)
    assert [v for k, v in seen[0]["headers"] if k.lower() == DECISION_ID] == [r.headers[DECISION_ID]]


def test_one_grpcurl_call_with_explain_says_why_a_token_was_denied(grpcurl, auth_server, restricted):
    cp = grpcurl(
        "-d", json.dumps({"token": restricted["elsewhere"], "required_scopes": ["user:write"],
                          "client_ip": "127.0.0.1", "explain": True}),
        auth_server.grpc_addr, "casola.auth.v1.AuthorizationService/Authorize",
    )
    print(cp.stdout)
    out = json.loads(cp.stdout)
    assert out["denyReason"] == "DENY_REASON_NETWORK"
    e = out["explanation"]
    assert e["failedRestriction"] == "network"
    assert e["clientIp"] == "127.0.0.1"
    assert e["allowedNetworks"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert "127.0.0.1 is outside the allowed networks" in e["reason"]
    assert e["decisionId"] == out["decisionId"]
    assert e["requirementSource"] == "request"
    assert "user:write" in e["grantedScopes"]
