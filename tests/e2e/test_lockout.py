"""Issue 16 item 1 through real Envoy: a stranger who knows a token's lookup id (its first 16
characters) floods the gateway with forged tokens carrying it, while the valid token is used
for the first time. Every request with the valid token is let through; the forged ones are
401s. A bounded flood (10 s) on loopback.

The stranger floods from another loopback address (127.0.0.2) than the victim (127.0.0.1), as
a stranger elsewhere on the internet would: past its failed-verify rate that address cools
down (429, issue 11), which must not touch the victim either.
"""

from __future__ import annotations

import threading
import time

import httpx

from conftest import CASOLA_CONFIG, ENVOY_CONFIG, AuthServer, Envoy, well_formed_unknown_token, with_checksum

FLOOD_SECONDS = 10
PATH = "/openai/v1/models"


def test_a_flood_of_forged_tokens_with_the_victims_lookup_id_never_locks_the_valid_token_out(gateway, cli):
    victim = cli.create_token("lockout victim", preset="user-read")
    # Same lookup id, a wrong secret, a valid checksum: well-formed, fails only the hash.
    forged = with_checksum(victim[:16] + ("A" if victim[16] != "A" else "B") + victim[17:48])
    until = time.monotonic() + FLOOD_SECONDS
    flood_codes: dict[int, int] = {}
    lock = threading.Lock()

    def flood() -> None:
        stranger = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(base_url=gateway.url, timeout=10, transport=stranger) as client:
            while time.monotonic() < until:
                response = client.get(PATH, headers={"authorization": f"Bearer {forged}"})
                code = response.status_code
                if code == 429 and "retry-after" not in response.headers:
                    code = -429  # a 429 that does not say when to come back fails below
                with lock:
                    flood_codes[code] = flood_codes.get(code, 0) + 1

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the flood is under way before the valid token's first use
    valid_codes = []
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        while time.monotonic() < until:
            valid_codes.append(client.get(PATH, headers={"authorization": f"Bearer {victim}"}).status_code)
            time.sleep(0.1)
    for t in threads:
        t.join(timeout=15)

    assert valid_codes and set(valid_codes) == {200}, valid_codes
    assert sum(flood_codes.values()) > len(valid_codes), flood_codes
    # 429 (with retry-after): the stranger's address went past its failed-verify rate and
    # cooled down.
    assert set(flood_codes) <= {401, 429, 503}, flood_codes
    assert flood_codes.get(401, 0) > 0, flood_codes


def test_a_source_past_its_failed_verify_rate_gets_429_with_retry_after_and_verified_tokens_keep_working(pg, cli, upstream, tmp_path):
    # Issue 11 item 3 through real Envoy, deterministic: a server of its own with a tight
    # allowance (5 failures, then 1/s) and a long cool-down, so that a short burst of unknown
    # tokens from 127.0.0.2 is sure to go past it.
    config = tmp_path / "tight-limits.toml"
    config.write_text(CASOLA_CONFIG.read_text().replace(
        "[limits]\n",
        "[limits]\nfailed_verifies_burst = 5\nfailed_verifies_per_second = 1\nfailed_verify_cooldown_seconds = 120\n",
        1,
    ))
    verified = cli.create_token("cooling verified", preset="user-read")
    cold = cli.create_token("cooling cold", preset="user-read")
    server = AuthServer("tight-limits", pg.url, config)
    proxy = None
    try:
        server.start()
        proxy = Envoy("tight-limits", ENVOY_CONFIG, server.port, upstream.port).start()
        with httpx.Client(base_url=proxy.url, timeout=10) as here, httpx.Client(
            base_url=proxy.url, timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.2")
        ) as stranger:
            def get(client: httpx.Client, token: str) -> httpx.Response:
                return client.get(PATH, headers={"authorization": f"Bearer {token}"})

            assert get(here, verified).status_code == 200, "verified (and cached) on this replica"
            codes = []
            limited = None
            for _ in range(100):
                r = get(stranger, well_formed_unknown_token())
                codes.append(r.status_code)
                if r.status_code == 429:
                    limited = r
                    break
            assert limited is not None, f"never limited: {codes}"
            assert set(codes[:-1]) == {401} and len(codes) > 5, codes
            assert int(limited.headers["retry-after"]) > 0, limited.headers
            assert limited.json()["error"]["code"] == "rate_limit_exceeded", limited.text
            # The cooling address: a token verified on this replica still works from it; one
            # not verified yet waits (a retryable 429, never a 401); other addresses are
            # untouched.
            assert get(stranger, verified).status_code == 200
            waiting = get(stranger, cold)
            assert waiting.status_code == 429 and "retry-after" in waiting.headers, waiting.text
            assert get(here, cold).status_code == 200
    finally:
        if proxy:
            proxy.stop()
        server.stop()
