"""Issue 16 through real Envoy: the gate cannot be walked around.

A casola-auth runs the shipped examples/envoy/casola-auth.toml plus two rules from the audit
(`/api/admin/` needs admin:read, `POST /api/feedback` needs user:read), behind Envoy with the
shipped examples/envoy/envoy.yaml plus three routes with context extensions (an empty
`casola.scopes`, the `*` opt-in, a token pasted into `casola.scopes`). A second Envoy runs the
same config with the path and header hardening taken out, to show that casola-auth holds the
line by itself. Each probe is one the audit saw get through; here none reaches the upstream.
"""

from __future__ import annotations

import http.client
import re

import pytest

from conftest import CASOLA_CONFIG, ENVOY_CONFIG, AuthServer, Envoy, new_marker, seen_with_marker
from harness import _LOG_DIR
from upstream_stub import wsgi_environ

IDENTITY = {"HTTP_X_CASOLA_TOKEN_ID", "HTTP_X_CASOLA_ORG_ID", "HTTP_X_CASOLA_USER_ID", "HTTP_X_CASOLA_SCOPES", "HTTP_X_CASOLA_DECISION_ID"}
EXTRA_RULES = """
# issue 16 probes
[[envoy.routes]]
path_prefix = "/api/admin/"
scopes = ["admin:read"]

[[envoy.routes]]
method = "POST"
path_prefix = "/api/feedback"
scopes = ["user:read"]
"""
HARDENING = re.compile(
    r"^ *(normalize_path|merge_slashes|path_with_escaped_slashes_action|headers_with_underscores_action): .*\n",
    re.M,
)
EXT_ROUTE = """              - match: {{ path: {path} }}
                route: {{ cluster: upstream }}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions:
                        casola.scopes: "{scopes}"
"""
PROBES = [
    "/api//admin/settings",
    "/api/./admin/",
    "/api/x/../admin/",
    "/api/%61dmin/",
    "/api/ADMIN/",
    "/api/admin%2Fsettings",
    "/api/admin\\settings",
]


def envoy_config(tmp, name: str, tokens, hardened: bool):
    text = ENVOY_CONFIG.read_text()
    routes = "".join(
        EXT_ROUTE.format(path=path, scopes=scopes)
        for path, scopes in [
            ("/api/empty-scopes", " , "),
            ("/api/any-token", "*"),
            ("/api/pasted-token", tokens.full),
        ]
    )
    anchor = "              - match: { prefix: /openai/v1/ }\n"
    assert anchor in text
    text = text.replace(anchor, routes + anchor)
    if not hardened:
        text, n = HARDENING.subn("", text)
        assert n == 4, "the shipped config carries the four hardening settings"
        text = text.replace("common_http_protocol_options:\n", "common_http_protocol_options: {}\n")
    path = tmp / f"envoy-{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def hardening_server(pg, cli, tokens, tmp_path_factory):
    config = tmp_path_factory.mktemp("hardening") / "casola-auth.toml"
    config.write_text(CASOLA_CONFIG.read_text() + EXTRA_RULES)
    server = AuthServer("hardening", pg.url, config)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["shipped", "unhardened"])
def gate(request, hardening_server, upstream, tokens, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"envoy-{request.param}")
    proxy = Envoy(f"gate-{request.param}", envoy_config(tmp, request.param, tokens, request.param == "shipped"), hardening_server.port, upstream.port)
    proxy.hardened = request.param == "shipped"
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


def raw(gate, method: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, str, str]:
    """One request with the path and headers exactly as given (no client normalisation);
    returns the status, the body and the marker the upstream would see."""
    marker = new_marker()
    conn = http.client.HTTPConnection("127.0.0.1", gate.port, timeout=20)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.putheader("x-e2e-id", marker)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("content-length", "0")
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace"), marker
    finally:
        conn.close()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.mark.parametrize("path", PROBES)
def test_non_canonical_paths_never_reach_the_upstream_with_a_user_token(gate, upstream, tokens, path):
    status, body, marker = raw(gate, "GET", path, bearer(tokens.read))
    assert status in (400, 403), (status, body)
    assert not seen_with_marker(upstream, marker), f"{path} reached the upstream"
    assert "csl_" not in body


def test_the_admin_rule_itself_lets_an_admin_through(gate, upstream, tokens):
    for path in ["/api/admin/settings", "/api/ADMIN/settings"]:
        status, body, marker = raw(gate, "GET", path, bearer(tokens.admin))
        assert status == 200, (path, status, body)
        assert seen_with_marker(upstream, marker)


def test_without_envoy_hardening_casola_auth_refuses_non_canonical_paths_itself(gate, upstream, tokens):
    if gate.hardened:
        pytest.skip("the shipped config normalises first")
    for path in ["/api//admin/settings", "/api/%61dmin/", "/api/admin%2Fsettings"]:
        status, body, marker = raw(gate, "GET", path, bearer(tokens.admin))
        assert status == 400, (path, status, body)
        assert '"invalid_path"' in body, body
        assert not seen_with_marker(upstream, marker)


def test_a_rule_covers_whole_segments_only(gate, upstream, tokens):
    status, body, marker = raw(gate, "POST", "/api/feedback", bearer(tokens.read))
    assert status == 200, body
    status, body, marker = raw(gate, "POST", "/api/feedback-admin/purge", bearer(tokens.read))
    assert status == 403, (status, body)
    assert "user:write" in body
    assert not seen_with_marker(upstream, marker)


def test_underscore_spellings_of_identity_headers_never_reach_a_wsgi_upstream(gate, upstream, tokens):
    status, body, marker = raw(
        gate, "GET", "/api/users/me", bearer(tokens.read) + [("x_casola_org_id", "globex"), ("X_Casola_Scopes", "admin:write")]
    )
    seen = seen_with_marker(upstream, marker)
    if gate.hardened:
        assert status == 400, (status, body)  # headers_with_underscores_action: REJECT_REQUEST
        assert not seen
    else:
        assert status == 200, (status, body)
        (request,) = seen
        environ = wsgi_environ(request["headers"])
        assert environ["HTTP_X_CASOLA_ORG_ID"] == "acme", environ
        assert environ["HTTP_X_CASOLA_SCOPES"] == "user:read", environ


def test_case_and_duplicate_spellings_leave_only_our_identity_headers(gate, upstream, tokens):
    spoofs = [
        ("X-Casola-Org-Id", "globex"),
        ("x-casola-org-id", "initech"),
        ("X-CASOLA-USER-ID", "mallory"),
        ("x-casola-admin", "true"),
    ]
    status, body, marker = raw(gate, "GET", "/api/users/me", bearer(tokens.read) + spoofs)
    assert status == 200, (status, body)
    (request,) = seen_with_marker(upstream, marker)
    environ = wsgi_environ(request["headers"])
    casola = {k: v for k, v in environ.items() if k.startswith("HTTP_X_CASOLA")}
    assert set(casola) == IDENTITY, casola
    assert casola["HTTP_X_CASOLA_ORG_ID"] == "acme" and casola["HTTP_X_CASOLA_USER_ID"] == "alice", casola


def test_no_credential_header_reaches_the_upstream(gate, upstream, tokens):
    headers = bearer(tokens.full) + [
        ("x-api-key", tokens.read),
        ("proxy-authorization", f"Bearer {tokens.read}"),
    ]
    status, body, marker = raw(gate, "GET", "/api/users/me", headers)
    assert status == 200, (status, body)
    (request,) = seen_with_marker(upstream, marker)
    names = {name for name, _ in request["headers"]}
    assert not names & {"authorization", "x-api-key", "proxy-authorization"}, names
    assert not any("csl_" in value for _, value in request["headers"]), request["headers"]


def test_a_bare_token_in_authorization_is_refused(gate, upstream, tokens):
    status, body, marker = raw(gate, "GET", "/api/users/me", [("authorization", tokens.full)])
    assert status == 401, (status, body)
    assert '"invalid_api_key"' in body and "Bearer" in body
    assert not seen_with_marker(upstream, marker)


def test_an_empty_casola_scopes_is_a_misconfiguration_not_an_allow(gate, upstream, tokens):
    for _ in range(3):
        status, body, marker = raw(gate, "GET", "/api/empty-scopes", bearer(tokens.full))
        assert status == 500, (status, body)
        assert '"authorization_misconfigured"' in body
        assert not seen_with_marker(upstream, marker)


def test_the_star_opt_in_means_any_valid_token(gate, upstream, tokens):
    status, body, _ = raw(gate, "GET", "/api/any-token", bearer(tokens.admin))
    assert status == 200, body
    status, body, marker = raw(gate, "GET", "/api/any-token", bearer(tokens.revoked))
    assert status == 401, body
    status, body, marker = raw(gate, "GET", "/api/any-token", [])
    assert status == 401, body


def test_a_token_pasted_into_casola_scopes_is_neither_echoed_nor_logged(gate, upstream, tokens, hardening_server):
    for _ in range(3):
        status, body, marker = raw(gate, "GET", "/api/pasted-token", bearer(tokens.read))
        assert status == 500, (status, body)
        assert "csl_" not in body
    log = hardening_server.proc.e2e_log.read_text(errors="replace")
    for secret in [tokens.full, tokens.read, tokens.admin, tokens.revoked]:
        assert secret[10:] not in log, "a token reached casola-auth's log"
    assert tokens.full[:10] + "…" in log, "the redacted prefix is logged"
    # Once per route, not per request: two misconfigured routes (empty scopes, the pasted
    # token), each asked three times per gate, and both gates talk to this one server.
    logged = [line for line in log.splitlines() if "logged once per route" in line]
    assert 1 <= len(logged) <= 2, logged
