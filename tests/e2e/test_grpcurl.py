"""An operator's view: grpcurl 1.8.6 against casola-auth, through server reflection alone.

No .proto file is given to grpcurl: everything it knows comes from the server's reflection
service (grpcurl 1.8.6 speaks grpc.reflection.v1alpha).
"""

from __future__ import annotations

import json

import pytest

from conftest import ORG, USER, well_formed_unknown_token

SERVICES = {
    "casola.auth.v1.TokenService",
    "casola.auth.v1.AuthorizationService",
    "grpc.health.v1.Health",
    "envoy.service.auth.v3.Authorization",
}


def leaves(obj) -> list[str]:
    """Every scalar in a JSON document, as strings."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in leaves(v)]
    return [str(obj)]


def field(obj: dict, *names: str):
    """A field by its JSON name or its proto name (grpcurl prints lowerCamelCase)."""
    for n in names:
        if n in obj:
            return obj[n]
    return None


def authorize(grpcurl, server, token: str, scopes: list[str]) -> dict:
    cp = grpcurl(
        "-d", json.dumps({"token": token, "required_scopes": scopes}),
        server.grpc_addr, "casola.auth.v1.AuthorizationService/Authorize",
    )
    return json.loads(cp.stdout)


def test_lists_the_services(grpcurl, auth_server):
    listed = set(grpcurl(auth_server.grpc_addr, "list").stdout.split())
    missing = SERVICES - listed
    assert not missing, f"grpcurl list lacks {missing}; it listed {sorted(listed)}"


def test_describes_authorize(grpcurl, auth_server):
    out = grpcurl(auth_server.grpc_addr, "describe", "casola.auth.v1.AuthorizationService.Authorize").stdout
    assert "is a method" in out, out
    assert "rpc Authorize" in out and "AuthorizeRequest" in out and "AuthorizeResponse" in out, out
    req = grpcurl(auth_server.grpc_addr, "describe", "casola.auth.v1.AuthorizeRequest").stdout
    assert "token" in req and "required_scopes" in req, req


def test_describes_envoy_check(grpcurl, auth_server):
    out = grpcurl(auth_server.grpc_addr, "describe", "envoy.service.auth.v3.Authorization.Check").stdout
    assert "rpc Check" in out and "CheckRequest" in out and "CheckResponse" in out, out


def test_authorize_allows_user_full_token(grpcurl, auth_server, tokens):
    resp = authorize(grpcurl, auth_server, tokens.full, ["user:read"])
    assert resp.get("decision") == "DECISION_ALLOW", resp
    values = leaves(resp)
    assert ORG in values and USER in values, resp
    assert tokens.ids["full"] in values, resp
    assert "user:read" in values and "user:write" in values, f"expanded scopes expected: {resp}"


def test_authorize_denies_user_read_token_user_write(grpcurl, auth_server, tokens):
    resp = authorize(grpcurl, auth_server, tokens.read, ["user:write"])
    assert resp.get("decision") == "DECISION_DENY", resp
    assert field(resp, "denyReason", "deny_reason") == "DENY_REASON_INSUFFICIENT_SCOPE", resp
    missing = [v for k, v in resp.items() if "missing" in k.lower()]
    assert missing and "user:write" in leaves(missing), f"the missing scopes should be named: {resp}"


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("unknown", "DENY_REASON_UNKNOWN"),
        ("malformed", "DENY_REASON_MALFORMED"),
        ("revoked", "DENY_REASON_REVOKED"),
        ("expired", "DENY_REASON_EXPIRED"),
    ],
)
def test_authorize_deny_reasons(grpcurl, auth_server, tokens, kind, reason):
    token = {
        "unknown": well_formed_unknown_token(),
        "malformed": "csl_definitely-not-valid",
        "revoked": tokens.revoked,
        "expired": tokens.expired,
    }[kind]
    resp = authorize(grpcurl, auth_server, token, ["user:read"])
    assert resp.get("decision") == "DECISION_DENY", resp
    assert field(resp, "denyReason", "deny_reason") == reason, resp
    assert token not in json.dumps(resp)


def _whoami_method(grpcurl, server) -> str:
    for service in ("casola.auth.v1.TokenService", "casola.auth.v1.AuthorizationService"):
        for m in grpcurl(server.grpc_addr, "list", service).stdout.split():
            if m.endswith(".WhoAmI"):
                return m[: -len(".WhoAmI")] + "/WhoAmI"
    raise AssertionError("no WhoAmI method in TokenService or AuthorizationService")


def test_whoami_with_bearer_metadata(grpcurl, auth_server, tokens):
    method = _whoami_method(grpcurl, auth_server)
    cp = grpcurl("-H", f"authorization: Bearer {tokens.read}", "-d", "{}", auth_server.grpc_addr, method)
    resp = json.loads(cp.stdout)
    values = leaves(resp)
    assert ORG in values and USER in values, resp
    assert tokens.ids["read"] in values, resp
    assert tokens.read not in cp.stdout


def test_whoami_without_credentials_is_unauthenticated(grpcurl, auth_server):
    method = _whoami_method(grpcurl, auth_server)
    cp = grpcurl("-d", "{}", auth_server.grpc_addr, method, check=False)
    assert cp.returncode != 0, cp.stdout
    assert "Unauthenticated" in cp.stderr, cp.stderr


@pytest.mark.parametrize(
    "service",
    ["", "casola.auth.v1.TokenService", "casola.auth.v1.AuthorizationService", "envoy.service.auth.v3.Authorization", "liveness"],
)
def test_health_serving(grpcurl, auth_server, service):
    cp = grpcurl("-d", json.dumps({"service": service}), auth_server.grpc_addr, "grpc.health.v1.Health/Check")
    assert json.loads(cp.stdout) == {"status": "SERVING"}, cp.stdout


@pytest.mark.parametrize(
    "symbol,wanted",
    [
        ("envoy.service.auth.v3.Authorization", ["is a service", "rpc Check"]),
        ("google.rpc.BadRequest", ["is a message", "FieldViolation", "field_violations"]),
        ("google.rpc.BadRequest.FieldViolation", ["is a message", "field", "description"]),
    ],
)
def test_describes_envoy_authorization_and_bad_request_details(grpcurl, auth_server, symbol, wanted):
    out = grpcurl(auth_server.grpc_addr, "describe", symbol).stdout
    missing = [w for w in wanted if w not in out]
    assert not missing, f"describe {symbol} lacks {missing}:\n{out}"


def test_bad_create_token_shows_the_field_violations_decoded(grpcurl, auth_server, tokens):
    cp = grpcurl(
        "-H", f"authorization: Bearer {tokens.admin}",
        "-d", json.dumps({"name": "", "preset": "nope"}),
        auth_server.grpc_addr, "casola.auth.v1.TokenService/CreateToken",
        check=False,
    )
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0, out
    assert "InvalidArgument" in out, out
    # Without error_details.proto in reflection grpcurl prints the details as base64 under
    # "@error": "google.rpc.BadRequest is not recognized"; decoded, they are JSON after the
    # "Details:" line (the status message may name fields too, so it is not looked at).
    assert "is not recognized" not in out, out
    details = out[out.index("Details:"):]
    detail, _ = json.JSONDecoder().raw_decode(details[details.index("{"):])
    assert detail.get("@type") == "type.googleapis.com/google.rpc.BadRequest", out
    violations = {v["field"]: v["description"] for v in detail.get("fieldViolations", [])}
    assert violations.get("name"), out
    assert violations.get("preset") == 'unknown preset "nope"', out
    assert tokens.admin not in out
