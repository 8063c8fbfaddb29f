"""Rotation, offboarding and leaked-token reports (issue 12) through grpcurl against the real
binary on PostgreSQL, the CLI commands, and the report through the shipped Envoy config.
"""

from __future__ import annotations

import json
import time
import uuid

from conftest import REPO, ORG

TOKEN_SERVICE = "casola.auth.v1.TokenService"
PROTO = ["-import-path", str(REPO / "proto"), "-proto", "casola/auth/v1/token.proto"]


def call(grpcurl, addr: str, method: str, body: dict, token: str | None = None, check: bool = True):
    args = ["-d", json.dumps(body)]
    if token:
        args = ["-H", f"authorization: Bearer {token}", *args]
    return grpcurl(*args, addr, f"{TOKEN_SERVICE}/{method}", check=check)


def token_for(cli, user: str, preset: str, name: str = "rotation-e2e") -> tuple[str, str]:
    """A new token for `user` of the org: (secret, id)."""
    cp = cli("token", "create", "--org", ORG, "--user", user, "--name", name, "--preset", preset, "-o", "json")
    made = json.loads(cp.stdout)
    return made["token"], made["id"]


def decision(grpcurl, auth_server, token: str) -> dict:
    cp = grpcurl("-d", json.dumps({"token": token}), auth_server.grpc_addr,
                 "casola.auth.v1.AuthorizationService/Authorize")
    return json.loads(cp.stdout)


def eventually(what: str, predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def test_rotate_token_through_grpcurl_is_idempotent_and_revokes_the_old_token(cli, grpcurl, auth_server):
    secret, token_id = token_for(cli, f"rotator-{uuid.uuid4().hex[:8]}", "user-full")
    body = {"id": token_id, "overlap_seconds": 3600, "request_id": "deploy-42"}
    first = json.loads(call(grpcurl, auth_server.grpc_addr, "RotateToken", body, secret).stdout)
    new = first["token"]
    assert first["secretShown"] is True and first["secret"].startswith(new["prefix"])
    assert first["oldToken"]["replacedBy"] == new["id"]
    assert first["oldToken"]["revocationReason"] == "rotated"
    assert first["oldToken"]["status"] == "TOKEN_STATUS_ACTIVE", "still works during the overlap"
    assert new["name"] == "rotation-e2e" and new["scopes"] == ["user:read", "user:write"]
    # The retry: the same new token, and no secret (proto3 JSON leaves out false and "").
    retry = json.loads(call(grpcurl, auth_server.grpc_addr, "RotateToken", body, secret).stdout)
    assert retry["token"]["id"] == new["id"]
    assert "secret" not in retry and "secretShown" not in retry, retry
    # Both work during the overlap.
    assert decision(grpcurl, auth_server, secret)["decision"] == "DECISION_ALLOW"
    assert decision(grpcurl, auth_server, first["secret"])["decision"] == "DECISION_ALLOW"
    # Another rotation of the same token names the one that replaced it.
    again = call(grpcurl, auth_server.grpc_addr, "RotateToken", {"id": token_id}, secret, check=False)
    assert again.returncode != 0
    assert "FailedPrecondition" in again.stderr and new["id"] in again.stderr, again.stderr
    # No overlap: the old token is revoked at once.
    now = json.loads(call(grpcurl, auth_server.grpc_addr, "RotateToken",
                          {"id": new["id"], "overlap_seconds": 0}, first["secret"]).stdout)
    assert now["oldToken"]["status"] == "TOKEN_STATUS_REVOKED"
    eventually("the rotated token is denied", lambda: decision(grpcurl, auth_server, first["secret"]).get("denyReason") == "DENY_REASON_REVOKED")
    bad = call(grpcurl, auth_server.grpc_addr, "RotateToken", {"id": token_id, "overlap_seconds": 604801}, now["secret"], check=False)
    assert "InvalidArgument" in bad.stderr and "overlap_seconds" in bad.stderr, bad.stderr


def test_cli_rotate_prints_the_secret_once_and_a_retry_says_so(cli):
    _, token_id = token_for(cli, f"cli-rotator-{uuid.uuid4().hex[:8]}", "user-read")
    out = json.loads(cli("token", "rotate", token_id, "--overlap", "1h", "--request-id", "r1", "-o", "json").stdout)
    assert out["secret_shown"] is True and out["token"].startswith(out["prefix"])
    assert out["old_token"]["id"] == token_id and out["old_token"]["status"] == "active"
    assert out["old_token"]["revoked_at"], "the end of the overlap"
    assert out["old_token"]["revocation_reason"] == "rotated" and out["old_token"]["replaced_by"] == out["id"]
    retry = cli("token", "rotate", token_id, "--overlap", "1h", "--request-id", "r1")
    assert retry.stdout.strip() == out["id"], "the same new token, by id"
    assert "not shown again" in retry.stderr and "csl_" not in retry.stdout
    refused = cli("token", "rotate", token_id, check=False)
    assert refused.returncode == 1 and out["id"] in refused.stderr, refused.stderr


def test_revoke_tokens_offboards_a_user_through_grpcurl_and_the_cli(cli, grpcurl, auth_server, tokens):
    leaver = f"leaver-{uuid.uuid4().hex[:8]}"
    secrets = [token_for(cli, leaver, "user-read")[0] for _ in range(3)]
    for s in secrets:
        assert decision(grpcurl, auth_server, s)["decision"] == "DECISION_ALLOW"
    # An organisation admin (admin:write) offboards a colleague.
    out = json.loads(call(grpcurl, auth_server.grpc_addr, "RevokeTokens", {"user_id": leaver}, tokens.admin).stdout)
    assert out["revokedCount"] == 3
    for s in secrets:
        eventually("offboarded token denied", lambda s=s: decision(grpcurl, auth_server, s).get("denyReason") == "DENY_REASON_REVOKED")
    again = json.loads(call(grpcurl, auth_server.grpc_addr, "RevokeTokens", {"user_id": leaver}, tokens.admin).stdout)
    assert "revokedCount" not in again, "nothing left to revoke (0 is left out of proto3 JSON)"
    # A user without admin:write may not; nor may anyone without an org of theirs.
    denied = call(grpcurl, auth_server.grpc_addr, "RevokeTokens", {"user_id": "-"}, tokens.full, check=False)
    assert "PermissionDenied" in denied.stderr, denied.stderr
    # The CLI: every token of one user.
    other = f"cli-leaver-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        token_for(cli, other, "user-read")
    cp = cli("token", "revoke-all", "--org", ORG, "--user", other)
    assert cp.stdout.strip() == "2" and f"revoked 2 tokens of user {other}" in cp.stderr, (cp.stdout, cp.stderr)


def test_report_exposed_tokens_through_the_gateway_needs_no_token_and_answers_alike(cli, grpcurl, auth_server, gateway):
    valid, valid_id = token_for(cli, f"leaky-{uuid.uuid4().hex[:8]}", "user-read")
    revoked, revoked_id = token_for(cli, f"leaky-{uuid.uuid4().hex[:8]}", "user-read")
    cli("token", "revoke", revoked_id)
    from conftest import well_formed_unknown_token

    inputs = ["garbage", well_formed_unknown_token(), revoked, valid]
    gateway_addr = f"127.0.0.1:{gateway.port}"
    answers = []
    for value in inputs:
        # Through Envoy's public listener, without any authorization header.
        cp = grpcurl(*PROTO, "-d", json.dumps({"tokens": [value], "source_url": "https://example.com/commit/1"}),
                     gateway_addr, f"{TOKEN_SERVICE}/ReportExposedTokens")
        answers.append(cp.stdout)
    assert len(set(answers)) == 1, answers
    assert json.loads(answers[0]) == {"received": 1}
    eventually("the reported valid token is revoked",
               lambda: decision(grpcurl, auth_server, valid).get("denyReason") == "DENY_REASON_REVOKED")
    got = json.loads(cli("token", "get", valid_id, "-o", "json").stdout)
    assert got["status"] == "revoked"
    # The rest of TokenService is not public through the gateway: ext_authz refuses it.
    other = grpcurl(*PROTO, "-d", "{}", gateway_addr, f"{TOKEN_SERVICE}/ListScopes", check=False)
    assert other.returncode != 0, other.stdout
