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

from conftest import with_checksum

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
