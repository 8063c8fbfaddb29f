"""Issue 16 item 8 with the real binary: the container setting (no database, listening on every
interface) refuses to start instead of printing an admin token, and the TLS mode to Postgres
is logged at start-up."""

from __future__ import annotations

import re

import pytest

from conftest import casola_auth_bin, clean_env, free_port, run


def test_the_memory_store_on_a_public_address_refuses_to_start_without_printing_a_token():
    # Refused before anything binds; the timeout only bounds a regression.
    cp = run(
        [casola_auth_bin(), "serve", "--listen", f"0.0.0.0:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}"],
        env=clean_env(),
        check=False,
        timeout=30,
    )
    assert cp.returncode != 0, cp
    out = cp.stdout + cp.stderr
    assert "in-memory store" in out and "CASOLA_AUTH_DEMO" in out, out
    assert not re.search(r"csl_[0-9A-Za-z]{20,}", out), "a token was printed"


def test_the_tls_mode_to_postgres_is_logged_at_start_up(auth_server):
    log = auth_server.proc.e2e_log.read_text(errors="replace")
    # The suite's URL has no sslmode and store.require_tls is off: `prefer`, said out loud.
    assert "TLS to Postgres only if the server offers it" in log, log[-2000:]


@pytest.mark.parametrize(
    "args",
    [["migrate"], ["token", "list", "--org", "acme"]],
    ids=["migrate", "token-list"],
)
def test_the_cli_honours_store_require_tls_like_the_server(cli, pg, args):
    # The suite's cluster speaks no TLS: with store.require_tls a URL asking for plaintext is
    # refused, and one saying nothing is upgraded to sslmode=require, which this server cannot
    # give. Either way the command fails before touching the database, naming the rule, and
    # never prints the URL's password.
    plain = pg.url + ("&" if "?" in pg.url else "?") + "sslmode=disable"
    refused = run(
        [casola_auth_bin(), *args, "--database-url", plain],
        env=clean_env(CASOLA_AUTH_STORE__REQUIRE_TLS="true"), check=False, timeout=60,
    )
    assert refused.returncode == 1 and "store.require_tls is set" in refused.stderr, refused.stderr
    upgraded = run(
        [casola_auth_bin(), *args, "--database-url", pg.url],
        env=clean_env(CASOLA_AUTH_STORE__REQUIRE_TLS="true"), check=False, timeout=60,
    )
    assert upgraded.returncode == 1, upgraded.stderr
    assert "tls" in upgraded.stderr.lower() or "ssl" in upgraded.stderr.lower(), upgraded.stderr
    # Without the rule the same command works against the same database.
    cli(*args)
