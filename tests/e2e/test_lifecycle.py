"""The audit trail and expiry notices (issue 12) through the real binary on PostgreSQL:
ListTokenEvents and ListExpiringTokens with grpcurl (reflection only), `casola-auth events`
through the CLI, and the trail's refusal of UPDATE and DELETE in the database itself.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from conftest import ORG

SECRET = re.compile(r"csl_[0-9A-Za-z]{50}")


def create(cli, org: str, user: str, name: str, *extra: str) -> dict:
    """`token create --output json`: the token's fields and its secret as `token`."""
    cp = cli("token", "create", "--org", org, "--user", user, "--name", name, *extra, "--output", "json")
    return json.loads(cp.stdout)


def call(grpcurl, server, token: str, method: str, body: dict, *headers: str) -> dict:
    args = ["-H", f"authorization: Bearer {token}"]
    for h in headers:
        args += ["-H", h]
    cp = grpcurl(*args, "-d", json.dumps(body), server.grpc_addr, f"casola.auth.v1.TokenService/{method}")
    assert not SECRET.search(cp.stdout), "no full token in any answer but CreateToken's"
    return json.loads(cp.stdout)


def test_the_trail_and_expiry_notices_through_grpcurl_and_the_cli(cli, pg, grpcurl, auth_server):
    # An organisation of its own, so that the listings see only this test's tokens.
    org = f"life-{uuid.uuid4().hex[:12]}"
    admin = create(cli, org, "root", "org-admin", "--preset", "admin-full")
    soon = create(cli, org, "alice", "expires-soon", "--preset", "user-read", "--expires-in-days", "2")
    later = create(cli, org, "alice", "expires-later", "--preset", "user-read", "--expires-in-days", "30")
    request_id = f"e2e-{uuid.uuid4().hex[:8]}"

    # An organisation admin revokes one of alice's tokens, with a request id.
    call(grpcurl, auth_server, admin["token"], "RevokeToken", {"id": later["id"]}, f"x-request-id: {request_id}")

    trail = call(grpcurl, auth_server, admin["token"], "ListTokenEvents", {"token_id": later["id"]})["events"]
    assert [e["kind"] for e in trail] == ["TOKEN_EVENT_KIND_REVOKED", "TOKEN_EVENT_KIND_CREATED"], trail
    revoked, created = trail
    assert revoked["actor"] == f"admin:{admin['id']}", revoked
    assert revoked["requestId"] == request_id and revoked["sourceAddr"] == "127.0.0.1", revoked
    assert created["actor"] == "cli" and "requestId" not in created, created
    assert int(revoked["id"]) > int(created["id"])

    # The admin token's first use (the revocation above) is recorded by the last-used
    # write-behind (every 5 s): waited for, so that the listings below all see it (counting
    # on it not having flushed yet made this test flaky).
    deadline = time.monotonic() + 30
    while True:
        own = call(grpcurl, auth_server, admin["token"], "ListTokenEvents", {"token_id": admin["id"]})["events"]
        first = [e for e in own if e["kind"] == "TOKEN_EVENT_KIND_FIRST_USED"]
        if first:
            assert first[0]["actor"] == "system", own
            break
        assert time.monotonic() < deadline, f"no first_used event for the admin token: {own}"
        time.sleep(0.5)

    # The organisation's trail, in pages of two, newest first, everything once: three
    # creations, the revocation and the admin token's first use.
    seen, page_token = [], ""
    for _ in range(10):
        page = call(grpcurl, auth_server, admin["token"], "ListTokenEvents",
                    {"org_id": org, "page_size": 2, "page_token": page_token})
        seen += [int(e["id"]) for e in page.get("events", [])]
        page_token = page.get("nextPageToken", "")
        if not page_token:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True), seen

    # Bad input names the field.
    bad = grpcurl("-H", f"authorization: Bearer {admin['token']}", "-d", json.dumps({"token_id": "nope"}),
                  auth_server.grpc_addr, "casola.auth.v1.TokenService/ListTokenEvents", check=False)
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr, bad.stderr

    # Expiry notices: the active token within the default window, flagged; not the revoked one.
    expiring = call(grpcurl, auth_server, admin["token"], "ListExpiringTokens", {})["tokens"]
    assert [t["id"] for t in expiring] == [soon["id"]], expiring
    assert expiring[0]["expiresSoon"] is True
    wide = call(grpcurl, auth_server, admin["token"], "ListExpiringTokens", {"within_days": 60})["tokens"]
    assert [t["id"] for t in wide] == [soon["id"]], "revoked tokens are not expiring"
    denied = grpcurl("-H", f"authorization: Bearer {soon['token']}", "-d", "{}", auth_server.grpc_addr,
                     "casola.auth.v1.TokenService/ListExpiringTokens", check=False)
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr, denied.stderr

    # The same trail from the CLI: JSON with stable keys, and a table with a header row.
    events = json.loads(cli("events", "--org", org, "--output", "json").stdout)
    # The same five, and the `soon` token's first use if the write-behind flushed it since
    # (ListExpiringTokens above authenticated it before refusing it).
    assert [e["id"] for e in events if e["id"] in seen] == seen
    extra = [e for e in events if e["id"] not in seen]
    assert all(e["kind"] == "first_used" and e["token_id"] == soon["id"] for e in extra), extra
    mine = [e for e in events if e["token_id"] == later["id"]]
    assert [e["kind"] for e in mine] == ["revoked", "created"]
    assert mine[0]["request_id"] == request_id and mine[0]["source_addr"] == "127.0.0.1"
    table = cli("events", "--token", later["id"]).stdout.splitlines()
    assert table[0].split() == ["ID", "AT", "KIND", "TOKEN", "ORG", "USER", "ACTOR", "REQUEST", "SOURCE", "DETAIL"]
    assert [row.split()[2] for row in table[1:]] == ["revoked", "created"], table
    listed = cli("token", "list", "--org", org).stdout.splitlines()
    header = listed[0].split()
    assert "SOON" in header
    soon_row = next(line.split() for line in listed[1:] if line.startswith(soon["id"]))
    assert soon_row[header.index("SOON")] == "yes", listed
    none = cli("events", "--database-url", pg.url, check=False)
    assert none.returncode != 0 and "--token" in none.stderr, none.stderr
    for out in (json.dumps(events), "\n".join(table)):
        assert not SECRET.search(out)

    # The trail is append-only in the database itself.
    for sql in (f"UPDATE token_events SET actor = 'someone' WHERE token_id = '{later['id']}'",
                f"DELETE FROM token_events WHERE token_id = '{later['id']}'"):
        refused = pg.psql(sql, check=False)
        assert refused.returncode != 0 and "append-only" in refused.stderr, (sql, refused.stderr)
    assert ORG != org, "this test's organisation is its own"
