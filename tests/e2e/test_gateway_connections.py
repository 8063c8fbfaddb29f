"""Envoy's spare connections to casola-auth are kept, not closed as idle handshakes.

Envoy's HTTP/2 pool opens a connection when its others are full, and a connection it opened
for a burst can end up with no stream (the burst fitted elsewhere). Envoy writes nothing on
such a connection, not even the HTTP/2 preface, until it has a stream or a keep-alive PING
to send; casola-auth starts HTTP/2 on a connection only once it has sent the preface, and
closes one that has not within `limits.handshake_timeout_ms` (10 s; the defence against
idle-connection floods, docs/reliability.md). With the shipped configs' keep-alive every 30 s
the replica closed every such connection at 10 s (a gateway that then picked it would lose the
request); every 5 s, Envoy's PING completes the handshake first.

Spare connections are made certain here instead of a matter of timing: Envoy's preconnect
(`per_upstream_preconnect_ratio: 3`) with one Check per connection
(`max_requests_per_connection: 1`), both added to the shipped config for this test, leaves
two connections opened and not yet used after every Check.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest

from conftest import CASOLA_CONFIG, ENVOY_CONFIG, AuthServer, Envoy, at_once, http_get

PATH = "/openai/v1/models"
HANDSHAKE_TIMEOUT_S = 10  # casola-auth's default limits.handshake_timeout_ms


def silent_connections(port: int) -> int:
    """Established connections to `port` that have not sent a byte (`ss`: no bytes_sent)."""
    out = subprocess.run(["ss", "-tni", "state", "established", f"dport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    # One line for the socket, one for its TCP info.
    infos = [line for line in out.splitlines() if "bytes_acked" in line or "rtt:" in line]
    return sum(1 for info in infos if "bytes_sent:" not in info)


def most_silent_connections(port: int, url: str, n: int) -> int:
    """A burst of `n` requests, and the most silent connections to `port` seen from its start
    until a second after it (sampled every 50 ms: a spare connection is silent only until
    Envoy's first keep-alive PING, about 5 s)."""
    most, done = 0, threading.Event()

    def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, silent_connections(port))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        codes = burst(url, n)
        time.sleep(1)
    finally:
        done.set()
        watcher.join()
    assert codes and set(codes) == {401}, codes
    return most


def handshake_timeouts(server: AuthServer) -> float:
    _, body = http_get(server.admin_url + "/metrics")
    m = re.search(r'^casola_auth_limited_total\{limit="handshake_timeout"\} (\S+)$', body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def burst(url: str, n: int) -> list[int]:
    """`n` requests at once (no token: each a Check answered 401)."""
    return [r.status_code for r in at_once(url, PATH, [{}] * n)]


@pytest.mark.usefixtures("cli")  # the database migrated
def test_envoys_spare_connections_complete_their_handshake_before_the_replica_gives_up(pg, upstream, tmp_path):
    shipped = ENVOY_CONFIG.read_text()
    keepalive = re.search(r"connection_keepalive: \{ interval: (\d+)s", shipped)
    assert keepalive and int(keepalive.group(1)) * 1.15 < HANDSHAKE_TIMEOUT_S, (
        "Envoy's keep-alive PING (with its 15 % jitter) must come before casola-auth's handshake timeout")
    # Spare connections for certain: each connection serves one Check, and Envoy keeps
    # capacity for three, so every Check leaves two connections opened and not yet used.
    config = tmp_path / "envoy-preconnect.yaml"
    text, n = re.subn(r"(    connect_timeout: 0\.25s\n)",
                      r"\1    preconnect_policy: { per_upstream_preconnect_ratio: 3.0 }\n", shipped, count=1)
    assert n == 1
    text, n = re.subn(r"common_http_protocol_options: \{ idle_timeout: 3600s \}",
                      "common_http_protocol_options: { idle_timeout: 3600s, max_requests_per_connection: 1 }",
                      text, count=1)
    assert n == 1
    config.write_text(text)

    server = AuthServer("spare-connections", pg.url, CASOLA_CONFIG).start()
    proxy = None
    try:
        proxy = Envoy("spare-connections", config, server.port, upstream.port).start()
        silent = 0
        for _ in range(5):
            silent = most_silent_connections(server.port, proxy.url, 10)
            if silent:
                break
        assert silent, "Envoy opened no spare connection: nothing to check"

        time.sleep(HANDSHAKE_TIMEOUT_S + 1.5)

        assert handshake_timeouts(server) == 0, "the replica closed Envoy's spare connections as idle handshakes"
        # (Envoy closes each connection itself after its one Check: not the replica's doing.)
        assert proxy.cluster_counter("upstream_cx_destroy_remote") == 0
        assert silent_connections(server.port) == 0, "every connection has sent its preface by now"
        # And the spares serve the next Checks.
        assert set(burst(proxy.url, 2)) == {401}
    finally:
        if proxy:
            proxy.stop()
        server.stop()
