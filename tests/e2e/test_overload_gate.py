"""Issue 11 item 1 through real Envoy: a shed request is a 503 at the gateway ("try again"),
never a 401 or a 403, and the same request passes when tried again.

A replica sheds in two places, each pinned here with a server of its own and a tight limit:

- admission: past `limits.max_in_flight` a call is refused before any work
  (RESOURCE_EXHAUSTED), which Envoy turns into its `status_on_error` 503;
- the cold path: a first use that finds the argon2 pool's queue full (or that the pool could
  not finish before the call's deadline) is casola-auth's own 503, a JSON error that says to
  retry, with `retry-after`.

The tokens' first uses cost a slow argon2 verify (64 MiB, the cost written into each token's
hash when it was created), so first uses sent at once overlap for certain: the first one
holds the limit while the others arrive.
"""

from __future__ import annotations

import threading
import time

import httpx

from conftest import CASOLA_CONFIG, ENVOY_CONFIG, AuthServer, Envoy, http_get

PATH = "/openai/v1/models"
AT_ONCE = 12
# A verify of tens of milliseconds (the defaults take about one).
SLOW_HASH = {"CASOLA_AUTH_ARGON2__MEMORY_KIB": "65536", "CASOLA_AUTH_ARGON2__ITERATIONS": "2"}


def slow_tokens(cli, label: str) -> list[str]:
    return [cli.create_token(f"{label} {i}", preset="user-read", env=SLOW_HASH) for i in range(AT_ONCE)]


def first_uses_at_once(url: str, tokens: list[str]) -> list[httpx.Response]:
    """Every token's first use, sent together (one client each, released by a barrier)."""
    answers: list[httpx.Response | None] = [None] * len(tokens)
    barrier = threading.Barrier(len(tokens))

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            barrier.wait(timeout=30)
            answers[i] = client.get(PATH, headers={"authorization": f"Bearer {tokens[i]}"})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(a is not None for a in answers), "a first use got no answer"
    return answers


def passes_when_tried_again(url: str, token: str) -> list[int]:
    """The statuses of one client retrying a shed request, as told, until it passes."""
    codes = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(20):
            r = client.get(PATH, headers={"authorization": f"Bearer {token}"})
            codes.append(r.status_code)
            if r.status_code != 503:
                break
            time.sleep(0.2)
    return codes


def limited(server: AuthServer) -> str:
    _, body = http_get(server.admin_url + "/metrics")
    return "\n".join(line for line in body.decode().splitlines()
                     if line.startswith(("casola_auth_limited_total", "casola_auth_argon2_rejected_total")))


def counter(metrics: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


def run_shedding(pg, cli, upstream, tmp_path, name: str, limits: str, label: str):
    config = tmp_path / f"{name}.toml"
    text = CASOLA_CONFIG.read_text()
    assert "[limits]\n" in text
    config.write_text(text.replace("[limits]\n", limits, 1))
    tokens = slow_tokens(cli, label)
    server = AuthServer(name, pg.url, config)
    proxy = None
    try:
        server.start()
        proxy = Envoy(name, ENVOY_CONFIG, server.port, upstream.port).start()
        answers = first_uses_at_once(proxy.url, tokens)
        codes = [a.status_code for a in answers]
        metrics = limited(server)
        retried = {t: passes_when_tried_again(proxy.url, t) for t, a in zip(tokens, answers) if a.status_code == 503}
        return answers, codes, metrics, retried
    finally:
        if proxy:
            proxy.stop()
        server.stop()


def test_calls_past_the_in_flight_bound_are_503_at_the_gateway_and_pass_when_tried_again(pg, cli, upstream, tmp_path):
    answers, codes, metrics, retried = run_shedding(
        pg, cli, upstream, tmp_path, "in-flight-1", "[limits]\nmax_in_flight = 1\n", "in flight")
    # Never a 401 or a 403 for a valid token: a shed call is "try again".
    assert set(codes) <= {200, 503}, codes
    assert 200 in codes, f"the first call in was not answered: {codes}"
    assert 503 in codes, f"nothing was shed with max_in_flight = 1: {codes}"
    assert counter(metrics, 'casola_auth_limited_total{limit="in_flight"}') > 0, metrics
    # Tried again, each shed request passes (nothing else is in flight now).
    assert retried and all(c[-1] == 200 for c in retried.values()), retried


def test_first_uses_past_the_argon2_queue_get_casola_auths_own_503_with_retry_after(pg, cli, upstream, tmp_path):
    answers, codes, metrics, retried = run_shedding(
        pg, cli, upstream, tmp_path, "argon2-queue-1", "[verify]\nworkers = 1\nqueue = 1\n\n[limits]\n", "cold queue")
    assert set(codes) <= {200, 503}, codes
    assert 200 in codes, f"no first use was verified: {codes}"
    refused = [a for a in answers if a.status_code == 503]
    assert refused, f"nothing was refused with one argon2 worker and a queue of one: {codes}"
    for r in refused:
        # casola-auth's own answer (not Envoy's status_on_error): says what happened and when
        # to come back, and names no token.
        assert r.headers.get("retry-after") == "1", dict(r.headers)
        err = r.json()["error"]
        assert err["code"] == "service_unavailable" and "retry" in err["message"], err
    assert counter(metrics, "casola_auth_argon2_rejected_total") > 0, metrics
    assert retried and all(c[-1] == 200 for c in retried.values()), retried
