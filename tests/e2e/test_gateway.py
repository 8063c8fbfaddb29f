"""The public API through Envoy + casola-auth (ext_authz Check), with the real clients.

Envoy runs examples/envoy/envoy.yaml (and envoy-extensions-only.yaml) as shipped, ports
aside; casola-auth runs examples/envoy/casola-auth.toml.
"""

from __future__ import annotations

import signal
import socket
import time

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import (
    CASOLA_CONFIG,
    ORG,
    USER,
    AuthServer,
    Cli,
    Envoy,
    ENVOY_CONFIG,
    Postgres,
    UpstreamStub,
    checksum,
    http_get,
    new_marker,
    seen_with_marker,
    wait_until,
    well_formed_unknown_token,
    with_checksum,
)

WWW_AUTHENTICATE = 'Bearer realm="casola", error="invalid_token"'
ERROR_KEYS = {"message", "type", "param", "code"}


def sdk(gateway, api_key: str) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/openai/v1", api_key=api_key, max_retries=0, timeout=20)


def send(gateway, method: str, path: str, token: str | None = None, scheme: str = "Bearer", headers: dict | None = None, **kw) -> tuple[httpx.Response, str]:
    """One request through Envoy; returns the response and the marker the upstream will see."""
    marker = new_marker()
    h = {"x-e2e-id": marker}
    if token is not None:
        h["authorization"] = f"{scheme} {token}"
    h.update(headers or {})
    r = httpx.request(method, gateway.url + path, headers=h, timeout=20, **kw)
    return r, marker


def error_of(r: httpx.Response) -> dict:
    """The OpenAI-shaped error object of a deny, checking the shape on the way."""
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, dict(r.headers), r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert err["param"] is None, err
    return err


def assert_invalid_key(r: httpx.Response, token: str | None = None) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers.get("www-authenticate") == WWW_AUTHENTICATE, dict(r.headers)
    err = error_of(r)
    assert err["code"] == "invalid_api_key", err
    assert err["type"] == "invalid_request_error", err
    if token:
        assert token not in r.text, "the error body must not echo the token"


def assert_insufficient_scope(r: httpx.Response, *missing: str) -> dict:
    assert r.status_code == 403, (r.status_code, r.text)
    err = error_of(r)
    assert err["code"] == "insufficient_scope", err
    assert err["type"] in ("invalid_request_error", "permission_error"), err
    for scope in missing:
        assert scope in err["message"], f"the message should name {scope}: {err['message']!r}"
    return err


def assert_not_forwarded(upstream: UpstreamStub, marker: str) -> None:
    assert seen_with_marker(upstream, marker) == [], "a denied request reached the upstream"


def upstream_headers(upstream: UpstreamStub, marker: str) -> list[tuple[str, str]]:
    seen = seen_with_marker(upstream, marker)
    assert len(seen) == 1, f"the upstream saw {len(seen)} requests with marker {marker}"
    return [tuple(h) for h in seen[0]["headers"]]


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def assert_identity(headers: list[tuple[str, str]], token_id: str, scopes: set[str]) -> None:
    for name, want in (
        ("x-casola-token-id", token_id),
        ("x-casola-org-id", ORG),
        ("x-casola-user-id", USER),
    ):
        assert header_values(headers, name) == [want], (name, headers)
    got_scopes = header_values(headers, "x-casola-scopes")
    assert len(got_scopes) == 1, headers
    assert " " in got_scopes[0] or len(scopes) == 1, f"x-casola-scopes is space-separated: {got_scopes[0]!r}"
    assert set(got_scopes[0].split()) == scopes, (got_scopes, scopes)


def assert_no_token(headers: list[tuple[str, str]], token: str) -> None:
    assert header_values(headers, "authorization") == [], "the upstream must not get the authorization header"
    secret_part = token[16:48]
    for k, v in headers:
        assert token not in v and secret_part not in v, f"the token leaked to the upstream in {k}"


# ----------------------------------------------------------------------------------------
# the token format the tests rely on


def test_checksum_matches_design(tokens):
    """Our well-formed-but-unknown tokens are only meaningful if the checksum is the real one."""
    for t in (tokens.full, tokens.read, tokens.admin):
        assert len(t) == 54 and t.startswith("csl_")
        assert checksum(t[:-6]) == t[-6:], f"CRC32/base62 checksum of {t[:16]}... differs from design.md section 3"


# ----------------------------------------------------------------------------------------
# the OpenAI SDK


def test_openai_sdk_chat_completion_with_user_full_token(gateway, upstream, tokens):
    marker = new_marker()
    completion = sdk(gateway, tokens.full).chat.completions.create(
        model="casola-test-model",
        messages=[{"role": "user", "content": "hello gateway"}],
        extra_headers={"x-e2e-id": marker},
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "echo: hello gateway"
    headers = upstream_headers(upstream, marker)
    assert_identity(headers, tokens.ids["full"], {"user:read", "user:write"})
    assert_no_token(headers, tokens.full)


def test_openai_sdk_models_with_user_read_token(gateway, upstream, tokens):
    marker = new_marker()
    models = sdk(gateway, tokens.read).models.list(extra_headers={"x-e2e-id": marker})
    assert [m.id for m in models.data] == ["casola-test-model"]
    assert_identity(upstream_headers(upstream, marker), tokens.ids["read"], {"user:read"})


def _bad_tokens(tokens) -> dict[str, str]:
    real = tokens.full
    return {
        "unknown": well_formed_unknown_token(),
        # an existing lookup id with a wrong secret, checksum recomputed: well-formed, fails the hash
        "wrong-secret": with_checksum(real[:16] + ("A" if real[16] != "A" else "B") + real[17:48]),
        # a real token with one character changed and the checksum left as it was
        "bad-checksum": real[:20] + ("x" if real[20] != "x" else "y") + real[21:],
        "malformed": "not-a-casola-token",
        "truncated": real[:-1],
        "wrong-prefix": "sk-" + real[4:],
        "expired": tokens.expired,
        "revoked": tokens.revoked,
    }


@pytest.mark.parametrize(
    "kind", ["unknown", "wrong-secret", "bad-checksum", "malformed", "truncated", "wrong-prefix", "expired", "revoked"]
)
def test_openai_sdk_authentication_error(gateway, upstream, tokens, kind):
    token = _bad_tokens(tokens)[kind]
    marker = new_marker()
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(gateway, token).chat.completions.create(
            model="casola-test-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-e2e-id": marker},
        )
    e = info.value
    assert e.status_code == 401
    assert e.code == "invalid_api_key", e.body
    assert e.type == "invalid_request_error", e.body
    assert token not in str(e.body)
    assert_not_forwarded(upstream, marker)


def test_openai_sdk_permission_denied_for_user_read_token_on_chat(gateway, upstream, tokens):
    marker = new_marker()
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk(gateway, tokens.read).chat.completions.create(
            model="casola-test-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-e2e-id": marker},
        )
    e = info.value
    assert e.status_code == 403
    assert e.code == "insufficient_scope", e.body
    assert "user:write" in e.body["message"], e.body
    assert_not_forwarded(upstream, marker)


# ----------------------------------------------------------------------------------------
# plain HTTP: schemes, headers, bodies


def test_key_scheme_from_the_fal_client(gateway, upstream, tokens, monkeypatch):
    """The fal client sends `Authorization: Key <FAL_KEY>`; take the header from its own code."""
    from fal_client.auth import fetch_auth_credentials

    monkeypatch.setenv("FAL_KEY", tokens.full)
    monkeypatch.delenv("FAL_FORCE_AUTH_BY_USER", raising=False)
    creds = fetch_auth_credentials()
    assert creds.scheme == "Key"
    marker = new_marker()
    r = httpx.post(
        gateway.url + "/openai/v1/chat/completions",
        headers={**creds.as_headers(), "x-e2e-id": marker},
        json={"model": "casola-test-model", "messages": [{"role": "user", "content": "via Key"}]},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: via Key"
    headers = upstream_headers(upstream, marker)
    assert_identity(headers, tokens.ids["full"], {"user:read", "user:write"})
    assert_no_token(headers, tokens.full)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "Key", "key", "KEY"])
def test_scheme_is_case_insensitive(gateway, upstream, tokens, scheme):
    r, marker = send(gateway, "GET", "/api/users/me", tokens.read, scheme=scheme)
    assert r.status_code == 200, r.text
    assert r.json() == {"org_id": ORG, "user_id": USER, "token_id": tokens.ids["read"], "scopes": ["user:read"]}


@pytest.mark.parametrize("scheme", ["Basic", "Token", "Bearer:"])
def test_other_schemes_are_refused(gateway, upstream, tokens, scheme):
    r, marker = send(gateway, "GET", "/api/users/me", tokens.read, scheme=scheme)
    assert_invalid_key(r, tokens.read)
    assert_not_forwarded(upstream, marker)


def test_missing_credentials_is_401(gateway, upstream):
    r, marker = send(gateway, "GET", "/openai/v1/models")
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate", "").startswith('Bearer realm="casola"'), dict(r.headers)
    assert error_of(r)["code"] == "invalid_api_key"
    assert_not_forwarded(upstream, marker)


@pytest.mark.parametrize("kind", ["unknown", "malformed", "expired", "revoked"])
def test_401_has_www_authenticate_and_openai_error_body(gateway, upstream, tokens, kind):
    token = _bad_tokens(tokens)[kind]
    r, marker = send(gateway, "GET", "/openai/v1/models", token)
    assert_invalid_key(r, token)
    assert_not_forwarded(upstream, marker)


def test_403_body_names_the_missing_scope(gateway, upstream, tokens):
    r, marker = send(gateway, "POST", "/openai/v1/chat/completions", tokens.read, json={"model": "m", "messages": []})
    assert_insufficient_scope(r, "user:write")
    assert "www-authenticate" not in r.headers or "insufficient_scope" in r.headers["www-authenticate"], dict(r.headers)
    assert_not_forwarded(upstream, marker)


def test_upstream_sees_identity_never_spoofed_headers_or_token(gateway, upstream, tokens):
    spoofed = {
        "x-casola-token-id": "00000000-0000-0000-0000-000000000000",
        "x-casola-org-id": "evil-org",
        "x-casola-user-id": "mallory",
        "x-casola-scopes": "admin:write tokens:issue",
        "x-casola-admin": "true",
        "X-Casola-Impersonate": "bob",
    }
    r, marker = send(gateway, "GET", "/api/users/me", tokens.full, headers=spoofed)
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == USER
    headers = upstream_headers(upstream, marker)
    assert_identity(headers, tokens.ids["full"], {"user:read", "user:write"})
    casola = [k for k, _ in headers if k.startswith("x-casola-")]
    assert sorted(casola) == ["x-casola-decision-id", "x-casola-org-id", "x-casola-scopes", "x-casola-token-id", "x-casola-user-id"], headers
    for k, v in headers:
        for bad in ("evil-org", "mallory", "tokens:issue", "00000000-0000-0000-0000-000000000000", "bob"):
            assert bad not in v, f"spoofed value {bad!r} reached the upstream in {k}"
    assert_no_token(headers, tokens.full)


def test_spoofed_headers_without_a_token_are_refused(gateway, upstream):
    r, marker = send(gateway, "GET", "/api/users/me", headers={"x-casola-user-id": "alice", "x-casola-scopes": "user:read"})
    assert r.status_code == 401, r.text
    assert_not_forwarded(upstream, marker)


def test_extra_token_header_is_off_by_default(gateway, upstream, tokens):
    r, marker = send(gateway, "GET", "/api/users/me", headers={"x-api-key": tokens.full})
    assert r.status_code == 401, r.text
    assert_not_forwarded(upstream, marker)


def test_token_in_the_query_or_body_is_not_a_credential(gateway, upstream, tokens):
    r, marker = send(gateway, "GET", f"/openai/v1/models?api_key={tokens.full}")
    assert r.status_code == 401, r.text
    assert_not_forwarded(upstream, marker)


# ----------------------------------------------------------------------------------------
# scopes: per-route context extensions in envoy.yaml, and the fallback table


def test_user_read_token_reads_the_account(gateway, upstream, tokens):
    r, marker = send(gateway, "GET", "/api/users/me", tokens.read)
    assert r.status_code == 200, r.text
    assert r.json() == {"org_id": ORG, "user_id": USER, "token_id": tokens.ids["read"], "scopes": ["user:read"]}


def test_admin_token_without_user_scopes_is_forbidden_on_the_user_api(gateway, upstream, tokens):
    r, marker = send(gateway, "GET", "/openai/v1/models", tokens.admin)
    assert_insufficient_scope(r, "user:read")
    assert_not_forwarded(upstream, marker)


@pytest.mark.parametrize(
    "method,path,who,status",
    [
        # [[envoy.routes]] in examples/envoy/casola-auth.toml
        ("GET", "/openai/v1/files", "read", 200),
        ("POST", "/openai/v1/embeddings", "read", 403),
        ("POST", "/openai/v1/embeddings", "full", 200),
        ("DELETE", "/openai/v1/files/file-1", "read", 403),
        ("DELETE", "/openai/v1/files/file-1", "full", 200),
        ("GET", "/api/organizations", "read", 200),
        ("PATCH", "/api/users/me", "read", 403),
        ("PATCH", "/api/users/me", "full", 200),
        ("GET", "/api/users/me/settings", "admin", 403),
    ],
)
def test_fallback_route_table(gateway, upstream, tokens, method, path, who, status):
    token = getattr(tokens, who)
    r, marker = send(gateway, method, path, token, json={} if method in ("POST", "PATCH") else None)
    if status == 200:
        assert r.status_code == 200, r.text
        assert r.json()["path"] == path
        assert len(seen_with_marker(upstream, marker)) == 1
    else:
        want = "user:write" if method != "GET" else "user:read"
        assert_insufficient_scope(r, want)
        assert_not_forwarded(upstream, marker)


@pytest.mark.parametrize("method,path", [("PUT", "/openai/v1/files"), ("OPTIONS", "/api/users/me"), ("HEAD", "/api/users/me")])
def test_requests_matching_no_rule_are_denied(gateway, upstream, tokens, method, path):
    """allow_unmatched = false: a valid token is not enough where no rule says what is needed.

    (Paths that no Envoy route takes never reach ext_authz: Envoy answers 404 itself.)
    """
    r, marker = send(gateway, method, path, tokens.admin_user)
    assert r.status_code == 403, (r.status_code, r.text)
    if method != "HEAD":
        assert error_of(r)["code"], r.text
    assert_not_forwarded(upstream, marker)


# ----------------------------------------------------------------------------------------
# revocation reaches a running server


def test_revocation_after_use_is_immediate(gateway, upstream, tokens, cli):
    r, _ = send(gateway, "GET", "/api/users/me", tokens.revoke_later)
    assert r.status_code == 200, r.text
    r, _ = send(gateway, "GET", "/api/users/me", tokens.revoke_later)  # now certainly cached
    assert r.status_code == 200, r.text
    cli.revoke(tokens.ids["revoke_later"])  # straight to the store, from another process
    deadline = time.monotonic() + 5
    while True:
        r, marker = send(gateway, "GET", "/api/users/me", tokens.revoke_later)
        if r.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert_invalid_key(r, tokens.revoke_later)


# ----------------------------------------------------------------------------------------
# envoy-extensions-only.yaml: only the documented context-extension keys


@pytest.mark.parametrize(
    "path,who,status,missing",
    [
        # casola.scopes "user:write admin:write", casola.match any
        ("/v2/chat", "full", 200, ()),
        ("/v2/chat", "admin", 200, ()),
        ("/v2/chat", "read", 403, ()),
        # the same scopes, casola.match absent = all
        ("/v2/chat-all", "admin_user", 200, ()),
        ("/v2/chat-all", "full", 403, ("admin:write",)),
        ("/v2/chat-all", "admin", 403, ("user:write",)),
        # user:write implies user:read
        ("/v2/read", "full", 200, ()),
        ("/v2/read", "read", 200, ()),
        ("/v2/read", "admin", 403, ("user:read",)),
        # "admin:read, user:read", casola.match all; admin:write implies admin:read
        ("/v2/admin-read", "admin_user", 200, ()),
        ("/v2/admin-read", "full", 403, ("admin:read",)),
        ("/v2/admin-read", "admin", 403, ("user:read",)),
    ],
)
def test_extensions_only_config(gateway_ext, upstream, tokens, path, who, status, missing):
    token = getattr(tokens, who)
    r, marker = send(gateway_ext, "POST", path, token, json={})
    if status == 200:
        assert r.status_code == 200, r.text
        assert r.json()["path"] == path
        headers = upstream_headers(upstream, marker)
        assert header_values(headers, "x-casola-token-id") == [tokens.ids[who]]
        assert_no_token(headers, token)
    else:
        err = assert_insufficient_scope(r, *missing)
        if path == "/v2/chat":  # any: the message names the scopes that would do
            assert "user:write" in err["message"] or "admin:write" in err["message"], err
        assert_not_forwarded(upstream, marker)


@pytest.mark.parametrize("path", ["/v2/misconfigured", "/v2/bad-match"])
def test_extensions_only_bad_extension_values_are_a_server_error_not_an_allow(gateway_ext, upstream, tokens, path):
    for who in ("full", "admin_user"):
        r, marker = send(gateway_ext, "GET", path, getattr(tokens, who))
        assert 500 <= r.status_code < 600, (r.status_code, r.text)
        assert r.status_code != 503, "a configuration error is not an outage"
        assert_not_forwarded(upstream, marker)


def test_extensions_only_route_without_extensions_uses_the_fallback_table(gateway_ext, upstream, tokens):
    # the fallback table has rules for /openai/v1/ and /api/ only: /v2/unlisted matches none
    r, marker = send(gateway_ext, "GET", "/v2/unlisted", tokens.admin_user)
    assert r.status_code == 403, (r.status_code, r.text)
    assert_not_forwarded(upstream, marker)


def test_extensions_only_bad_tokens_are_401(gateway_ext, upstream, tokens):
    for kind, token in _bad_tokens(tokens).items():
        r, marker = send(gateway_ext, "GET", "/v2/read", token)
        assert r.status_code == 401, (kind, r.status_code, r.text)
        assert_not_forwarded(upstream, marker)


# ----------------------------------------------------------------------------------------
# configuration errors and failure modes


def test_unknown_scope_in_the_route_table_stops_start_up(pg, cli, tmp_path):
    config = tmp_path / "bad-routes.toml"
    config.write_text(
        CASOLA_CONFIG.read_text()
        + '\n[[envoy.routes]]\nmethod = "GET"\npath_prefix = "/jobs/"\nscopes = ["user:read", "jobs:launch"]\n'
    )
    server = AuthServer("bad-routes", pg.url, config=config)
    try:
        with pytest.raises(RuntimeError, match="process exited"):
            server.start()
    finally:
        server.stop()
    assert server.proc.returncode not in (0, None)
    assert "jobs:launch" in server.proc.e2e_log.read_text(), "the error should name the unknown scope"



@pytest.fixture
def own_stack(upstream):
    pg = Postgres("outage")
    parts: list = []
    try:
        pg.start()
        cli = Cli(pg.url)
        cli.migrate()
        used = cli.create_token("outage-used", preset="user-full")
        unused = cli.create_token("outage-unused", preset="user-full")
        auth = AuthServer("outage", pg.url).start()
        parts.append(auth)
        proxy = Envoy("outage", ENVOY_CONFIG, auth.port, upstream.port).start()
        parts.append(proxy)
        yield pg, auth, proxy, used, unused
    finally:
        for p in reversed(parts):
            p.stop()
        pg.stop()


def test_outages_answer_503_never_401_or_403(own_stack, upstream):
    pg, auth, proxy, used, unused = own_stack
    r, _ = send(proxy, "GET", "/api/users/me", used)
    assert r.status_code == 200, r.text

    # 1. the store goes away: a token nothing has cached cannot be decided -> 503
    pg.proc.send_signal(signal.SIGINT)
    pg.proc.wait(timeout=20)
    r, marker = send(proxy, "GET", "/api/users/me", unused)
    assert r.status_code == 503, (r.status_code, r.headers, r.text)
    if r.content:  # answered by casola-auth itself (not by Envoy's status_on_error)
        assert error_of(r)["code"] not in ("invalid_api_key", "insufficient_scope"), r.text
    assert_not_forwarded(upstream, marker)
    with pytest.raises(openai.InternalServerError) as info:
        sdk(proxy, unused).models.list()
    assert info.value.status_code == 503
    # and the server says so on /readyz (checked every few seconds)
    wait_until("casola-auth /readyz turns 503", lambda: http_get(auth.admin_url + "/readyz")[0] == 503, 20)
    assert http_get(auth.admin_url + "/healthz")[0] == 200

    # 2. casola-auth itself goes away: Envoy's status_on_error -> 503
    code = auth.stop(signal.SIGTERM)
    assert code == 0, f"casola-auth should exit 0 on SIGTERM, got {code}"
    for token in (used, unused, "not-a-token"):
        r, marker = send(proxy, "GET", "/api/users/me", token)
        assert r.status_code == 503, (r.status_code, r.text)
        assert_not_forwarded(upstream, marker)
    r, marker = send(proxy, "POST", "/openai/v1/chat/completions", used, json={"model": "m", "messages": []})
    assert r.status_code == 503, (r.status_code, r.text)
    assert_not_forwarded(upstream, marker)


def test_a_burst_on_a_new_gateway_connection_is_not_refused(auth_server, upstream, tokens):
    """A fresh Envoy (no connection to casola-auth yet) gets 128 requests at once. It opens
    its connection and sends their Checks before casola-auth's SETTINGS (at most 32 streams
    per connection, `limits.max_concurrent_streams`) have arrived: casola-auth refused the
    streams past 32 (REFUSED_STREAM) and Envoy answered them 503 (status_on_error). The
    shipped cluster caps its own streams per connection at the server's limit, so Envoy
    queues the rest for a moment and opens more connections."""
    proxy = Envoy("burst", ENVOY_CONFIG, auth_server.port, upstream.port).start()
    try:
        burst = 128
        request = (
            "GET /openai/v1/models HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {tokens.read}\r\nConnection: close\r\n\r\n"
        ).encode()
        # Connected first, then every request written in one go: one burst at Envoy.
        conns = [socket.create_connection(("127.0.0.1", proxy.port), timeout=20) for _ in range(burst)]
        for conn in conns:
            conn.sendall(request)
        answers = []
        for conn in conns:
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            answers.append((int(head.split(b" ", 2)[1]), body[:120]))
        refused = [a for a in answers if a[0] != 200]
        assert not refused, f"{len(refused)} of {burst} not allowed, e.g. {refused[:3]}"
    finally:
        proxy.stop()
