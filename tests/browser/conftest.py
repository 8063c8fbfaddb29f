"""Browser suite harness: a throwaway PostgreSQL, `casola-auth migrate`, tokens made with
`casola-auth token create`, `casola-auth serve` with the console on a free port, and headless
Chromium (Debian's, at CHROMIUM_BIN, default /usr/bin/chromium) driven by Playwright.

The process and PostgreSQL helpers are those of the end-to-end suite (tests/e2e/harness.py),
imported, not copied. Screenshots of each step go to target/browser-screenshots/.

Environment:
  CASOLA_AUTH_BIN   the server binary (default target/debug/casola-auth); it is not built here
  CHROMIUM_BIN      the browser (default /usr/bin/chromium)
  E2E_PIDFILE       if set, the pid of every process group started is appended to it
  E2E_LOG_DIR       where the process logs go (scripts/test-browser.sh: .tmp/browser-logs)
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import harness  # noqa: E402
from harness import Postgres, casola_auth_bin, clean_env, free_port, http_get, run, spawn, stop, wait_until  # noqa: E402

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


def _abort(message: str):
    pytest.exit(message, returncode=2)


harness.abort = _abort

ORG = "acme"
ADMIN_USER = "alice"
COLLEAGUE = "bob"
SCREENSHOTS = REPO / "target" / "browser-screenshots"
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
# As root Chromium needs --no-sandbox (Playwright adds it: chromium_sandbox=False); the rest
# keep it off this machine's closed network.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every Playwright wait is bounded by this (ms); generous, so a slow machine is not a failure.
STEP_TIMEOUT_MS = 20_000
expect.set_options(timeout=STEP_TIMEOUT_MS)


@dataclass
class Console:
    url: str
    db_url: str
    admin_token: str
    colleague_token: str

    def cli(self, *args: str):
        return run([casola_auth_bin(), *args], env=clean_env(DATABASE_URL=self.db_url))


def _create_token(db_url: str, user: str, name: str, *args: str) -> str:
    cp = run(
        [casola_auth_bin(), "token", "create", "--database-url", db_url, "--org", ORG, "--user", user, "--name", name, *args],
        env=clean_env(DATABASE_URL=db_url),
    )
    secret = cp.stdout.strip()
    assert re.fullmatch(r"csl_[0-9A-Za-z]{50}", secret), f"not a token: {secret!r}"
    return secret


@pytest.fixture(scope="session")
def console() -> Console:
    if not casola_auth_bin().exists():
        pytest.exit(f"server binary not found at {casola_auth_bin()} (cargo build first)", returncode=2)
    pg = Postgres("browser").start()
    try:
        run([casola_auth_bin(), "migrate"], env=clean_env(DATABASE_URL=pg.url))
        # The bootstrap token: an org admin who may also manage their own tokens.
        admin = _create_token(pg.url, ADMIN_USER, "bootstrap", "--preset", "admin-full", "--scope", "user:write")
        colleague = _create_token(pg.url, COLLEAGUE, "bob laptop", "--preset", "user-full")
        port, admin_port, console_port = free_port(), free_port(), free_port()
        proc = spawn(
            "casola-auth-browser",
            [casola_auth_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}",
             "--database-url", pg.url],
            env=clean_env(
                RUST_LOG="info",
                CASOLA_AUTH_CONSOLE__LISTEN=f"127.0.0.1:{console_port}",
                # Last Used shows up within a fraction of a second.
                CASOLA_AUTH_LAST_USED__FLUSH_INTERVAL_MS="200",
                CASOLA_AUTH_ARGON2__MEMORY_KIB="1024",
                CASOLA_AUTH_ARGON2__ITERATIONS="1",
            ),
        )
        url = f"http://127.0.0.1:{console_port}/"
        wait_until("casola-auth /readyz", lambda: http_get(f"http://127.0.0.1:{admin_port}/readyz")[0] == 200, 60, proc)
        # The URL a newcomer opens is the one the server prints at start-up.
        wait_until("the console URL on stdout", lambda: f"console (API Tokens page): {url}" in proc.e2e_log.read_text(), 10, proc)
        yield Console(url=url, db_url=pg.url, admin_token=admin, colleague_token=colleague)
        stop(proc)
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def browser() -> Browser:
    if not Path(CHROMIUM).exists():
        pytest.exit(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)", returncode=2)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, chromium_sandbox=False, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Tab:
    """One browser context (its own sessionStorage) with one page, at 1280x800 unless told."""

    def __init__(self, browser: Browser, console: Console, width: int = 1280, height: int = 800) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.url.rstrip("/"))
        self.context.set_default_timeout(STEP_TIMEOUT_MS)
        self.page: Page = self.context.new_page()
        self.console_messages: list[str] = []
        self.page.on("console", lambda m: self.console_messages.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console_messages.append(f"pageerror: {e}"))
        self.console = console

    def open(self) -> Page:
        self.page.goto(self.console.url)
        return self.page

    def sign_in(self, token: str) -> Page:
        page = self.open()
        page.get_by_label("API token", exact=True).fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="API Tokens").wait_for()
        return page

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()
        # The page logs nothing; a token, a CSP violation or a script error in the browser
        # console is a failure of whichever test used this tab.
        bad = [m for m in self.console_messages if "csl_" in m or "Content Security Policy" in m or m.startswith("pageerror")]
        assert bad == [], bad


@pytest.fixture
def tab(browser: Browser, console: Console):
    t = Tab(browser, console)
    yield t
    t.close()
