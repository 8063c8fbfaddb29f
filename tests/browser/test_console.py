"""The API Tokens page in a real browser (headless Debian Chromium through Playwright),
against the real binary on PostgreSQL: every flow of the page, a screenshot of each step
under target/browser-screenshots/.

The tests run in file order and share one database: later ones find what earlier ones made.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from conftest import ADMIN_USER, COLLEAGUE, ORG, Console, Tab
from harness import casola_auth_bin, clean_env, free_port, run, spawn, stop, wait_until

SECRET = re.compile(r"^csl_[0-9A-Za-z]{50}$")
# What the tests made, for the later ones.
made: dict[str, str] = {}


def row(page: Page, name: str):
    return page.locator("#token-rows tr").filter(has=page.locator(".name", has_text=re.compile(f"^{re.escape(name)}$")))


def cell(page: Page, name: str, label: str):
    return row(page, name).locator(f'td[data-label="{label}"]')


def open_create(page: Page):
    page.get_by_role("button", name="Create Token").click()
    dialog = page.locator("#create-dialog")
    expect(dialog).to_be_visible()
    return dialog


def no_secret_leaked(tab: Tab) -> None:
    leaked = [m for m in tab.console_messages if "csl_" in m or "Content Security Policy" in m or m.startswith("pageerror")]
    assert leaked == [], leaked


def test_signing_in_with_a_bootstrap_token_shows_the_token_list(tab: Tab):
    page = tab.open()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    tab.shot("01-sign-in")
    page.get_by_label("API token", exact=True).fill("csl_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_contain_text("Not signed in")

    page = tab.sign_in(tab.console.admin_token)
    expect(page.locator("#whoami")).to_contain_text(f"Signed in as {ADMIN_USER}")
    expect(row(page, "bootstrap")).to_be_visible()
    # The token sits in this tab's sessionStorage, nowhere else: no cookie, not in the URL.
    assert page.evaluate("sessionStorage.length") == 1
    assert page.evaluate("document.cookie") == ""
    assert tab.console.admin_token not in page.url
    assert page.evaluate("localStorage.getItem('casola-auth.console.token')") is None
    tab.shot("02-signed-in-token-list")
    # A reload keeps the tab signed in.
    page.reload()
    expect(page.get_by_role("heading", name="API Tokens")).to_be_visible()
    no_secret_leaked(tab)


def test_a_preset_token_shows_its_secret_once_and_passes_test_token(tab: Tab):
    page = tab.sign_in(tab.console.admin_token)
    dialog = open_create(page)
    expect(page.get_by_label("Name", exact=True)).to_be_focused()
    page.get_by_label("Name", exact=True).fill("CI pipeline")
    page.get_by_label("Description", exact=True).fill("deploys from main")
    page.get_by_label("Scope preset").select_option("user-full")
    write = page.get_by_role("checkbox", name=re.compile("^user:write"))
    read = page.get_by_role("checkbox", name=re.compile("^user:read"))
    expect(write).to_be_checked()
    expect(read).to_be_checked()
    expect(read).to_be_disabled()
    expect(page.locator("#implied-user_read")).to_have_text("implied by user:write")
    tab.shot("03-create-with-preset")
    dialog.get_by_role("button", name="Create").click()

    created = page.locator("#created-dialog")
    expect(created).to_be_visible()
    expect(created).to_contain_text("shown only once")
    secret = page.get_by_label("Token value").input_value()
    assert SECRET.match(secret), secret
    made["ci"] = secret
    for snippet in ("#snippet-curl", "#snippet-python", "#snippet-js"):
        expect(page.locator(snippet)).to_contain_text(secret)
    expect(page.locator("#snippet-curl")).to_contain_text("curl http://127.0.0.1:8080/api/users/me")
    expect(page.locator("#snippet-python")).to_contain_text('base_url="http://127.0.0.1:8080/openai/v1"')
    # The base URL is configurable; the snippets follow it.
    page.get_by_label("API base URL").fill("https://api.example.test")
    expect(page.locator("#snippet-js")).to_contain_text('baseURL: "https://api.example.test/openai/v1"')
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).not_to_be_empty()
    tab.shot("04-created-secret-once")

    page.get_by_role("button", name="Test Token").click()
    expect(page.locator("#test-result")).to_contain_text(f"Authentication succeeded: user {ADMIN_USER} of organisation acme")
    expect(page.locator("#test-result")).to_contain_text("user:read, user:write")
    tab.shot("05-test-token-succeeded")

    page.get_by_role("button", name="Close").click()
    expect(created).to_be_hidden()
    # Gone from the page once closed, and after a reload.
    assert secret not in page.content()
    assert page.get_by_label("Token value", exact=True).input_value() == ""
    page.reload()
    expect(row(page, "CI pipeline")).to_be_visible()
    assert secret not in page.content()
    expect(cell(page, "CI pipeline", "Prefix")).to_have_text(f"{secret[:10]}…")
    expect(cell(page, "CI pipeline", "Scopes")).to_contain_text("user:read")
    expect(cell(page, "CI pipeline", "Status")).to_have_text("Active")
    expect(cell(page, "CI pipeline", "Expires")).to_have_text("Never")

    # Test Token authenticated with the new token: Last Used appears once written behind.
    for _ in range(60):
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_timeout(250)
        if cell(page, "CI pipeline", "Last used").inner_text() != "Never":
            break
    expect(cell(page, "CI pipeline", "Last used")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$"))
    tab.shot("06-last-used")
    no_secret_leaked(tab)


def test_explicit_scopes_and_an_expiry_show_expires_soon(tab: Tab):
    page = tab.sign_in(tab.console.admin_token)
    dialog = open_create(page)
    page.get_by_label("Name", exact=True).fill("read-only dashboard")
    admin_write = page.get_by_role("checkbox", name=re.compile("^admin:write"))
    admin_read = page.get_by_role("checkbox", name=re.compile("^admin:read"))
    admin_write.check()
    expect(page.locator("#implied-admin_read")).to_have_text("implied by admin:write")
    admin_write.uncheck()
    expect(admin_read).to_be_enabled()
    expect(admin_read).not_to_be_checked()
    admin_read.check()
    page.get_by_role("checkbox", name=re.compile("^user:read")).check()
    expect(page.get_by_label("Scope preset")).to_have_value("")
    page.get_by_label("Expires in days").fill("3")
    tab.shot("07-create-with-explicit-scopes")
    dialog.get_by_role("button", name="Create").click()
    expect(page.locator("#created-dialog")).to_be_visible()
    page.keyboard.press("Escape")  # a keyboard way out drops the secret too
    expect(page.locator("#created-dialog")).to_be_hidden()
    expect(page.get_by_label("Token value", exact=True)).to_have_value("")
    expect(page.locator("#snippet-curl")).to_have_text("")
    expect(cell(page, "read-only dashboard", "Scopes")).to_have_text(re.compile("admin:read.*user:read"))
    expect(cell(page, "read-only dashboard", "Expires")).to_contain_text("expires soon")
    tab.shot("08-expires-soon")
    no_secret_leaked(tab)


def test_server_field_violations_appear_beside_their_fields(tab: Tab):
    page = tab.sign_in(tab.console.admin_token)
    dialog = open_create(page)
    page.get_by_label("Name", exact=True).fill("   ")
    page.get_by_label("Expires in days").fill("5000")
    dialog.get_by_role("button", name="Create").click()
    expect(page.locator("#create-name-error")).to_have_text("must not be empty")
    expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#create-expires-error")).to_contain_text("3650")
    expect(page.locator("#create-scopes-error")).to_contain_text("at least one scope")
    expect(dialog).to_be_visible()
    tab.shot("09-field-violations")
    # Fixed, the same dialog creates the token.
    page.get_by_label("Name", exact=True).fill("fixed")
    page.get_by_label("Expires in days").fill("")
    page.get_by_label("Scope preset").select_option("user-read")
    dialog.get_by_role("button", name="Create").click()
    expect(page.locator("#created-dialog")).to_be_visible()
    page.get_by_role("button", name="Close").click()
    expect(row(page, "fixed")).to_be_visible()


def test_a_name_with_markup_is_shown_as_text(tab: Tab):
    page = tab.sign_in(tab.console.admin_token)
    name = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
    dialog = open_create(page)
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Description", exact=True).fill("<b>bold?</b>")
    page.get_by_label("Scope preset").select_option("user-read")
    dialog.get_by_role("button", name="Create").click()
    expect(page.locator("#created-name")).to_have_text(name)
    page.get_by_role("button", name="Close").click()
    expect(row(page, name)).to_have_count(1)
    expect(row(page, name).locator(".muted")).to_have_text("<b>bold?</b>")
    assert page.locator("#token-rows img, #token-rows script, #token-rows b").count() == 0
    assert page.evaluate("window.__pwned") is None
    tab.shot("10-markup-as-text")
    no_secret_leaked(tab)


def test_revoke_asks_for_confirmation_and_the_row_updates_at_once(tab: Tab):
    page = tab.sign_in(tab.console.admin_token)
    row(page, "CI pipeline").get_by_role("button", name="Revoke CI pipeline").click()
    confirm = page.locator("#revoke-dialog")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("CI pipeline")
    expect(page.get_by_role("button", name="Cancel")).to_be_focused()
    tab.shot("11-revoke-confirmation")
    page.get_by_role("button", name="Cancel").click()
    expect(cell(page, "CI pipeline", "Status")).to_have_text("Active")

    row(page, "CI pipeline").get_by_role("button", name="Revoke CI pipeline").click()
    confirm.get_by_role("button", name="Revoke").click()
    expect(confirm).to_be_hidden()
    expect(cell(page, "CI pipeline", "Status")).to_have_text("Revoked")
    expect(row(page, "CI pipeline").get_by_role("button", name=re.compile("^Revoke"))).to_have_count(0)
    tab.shot("12-revoked")
    # Revoked tokens are listed only when asked for.
    page.reload()
    expect(row(page, "CI pipeline")).to_have_count(0)
    page.get_by_label("Include revoked").check()
    expect(cell(page, "CI pipeline", "Status")).to_have_text("Revoked")
    tab.shot("13-include-revoked")


def test_the_revoked_token_no_longer_signs_in(browser, console):
    tab = Tab(browser, console)
    try:
        page = tab.open()
        page.get_by_label("API token", exact=True).fill(made["ci"])
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#signin-error")).to_contain_text("revoked")
        tab.shot("14-revoked-token-refused")
    finally:
        tab.close()


def test_an_org_admin_sees_colleagues_tokens_and_a_user_does_not(browser, console):
    admin = Tab(browser, console)
    user = Tab(browser, console)
    try:
        page = admin.sign_in(console.admin_token)
        expect(page.get_by_role("columnheader", name="User")).to_be_visible()
        expect(cell(page, "bob laptop", "User")).to_have_text(COLLEAGUE)
        admin.shot("15-org-admin-sees-organisation")
        page.get_by_label("Only my tokens").check()
        expect(row(page, "bob laptop")).to_have_count(0)

        page = user.sign_in(console.colleague_token)
        expect(page.locator("#whoami")).to_contain_text(f"Signed in as {COLLEAGUE}")
        expect(row(page, "bob laptop")).to_be_visible()
        expect(row(page, "fixed")).to_have_count(0)
        expect(row(page, "bootstrap")).to_have_count(0)
        expect(page.get_by_role("columnheader", name="User")).to_have_count(0)
        expect(page.get_by_label("Only my tokens")).to_be_hidden()
        # Only what bob may grant is offered.
        open_create(page)
        expect(page.get_by_role("checkbox", name=re.compile("^admin:"))).to_have_count(0)
        expect(page.get_by_role("checkbox", name=re.compile("^user:write"))).to_have_count(1)
        expect(page.locator("#scopes-hidden")).to_contain_text("not offered")
        user.shot("16-user-sees-own-tokens-create")
    finally:
        admin.close()
        user.close()


def test_the_page_works_in_a_narrow_window(browser, console):
    tab = Tab(browser, console, width=390, height=800)
    try:
        page = tab.sign_in(console.admin_token)
        expect(row(page, "fixed")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        tab.shot("17-narrow-list")
        dialog = open_create(page)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        expect(dialog.get_by_role("button", name="Create")).to_be_visible()
        tab.shot("18-narrow-create")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        # Keyboard: Tab reaches Create Token and Enter opens the dialog.
        page.get_by_role("button", name="Create Token").focus()
        page.keyboard.press("Enter")
        expect(dialog).to_be_visible()
        expect(page.get_by_label("Name", exact=True)).to_be_focused()
    finally:
        tab.close()


def test_sign_out_forgets_the_token(tab: Tab):
    page = tab.sign_in(tab.console.admin_token)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_paging_walks_through_more_tokens_than_fit_on_a_page(browser, console):
    # 21 tokens for carol: one more than a page (app.ts PAGE_SIZE = 20).
    first = _make_tokens(console, "carol", 21)
    tab = Tab(browser, console)
    try:
        page = tab.sign_in(first)
        expect(page.locator("#token-rows tr")).to_have_count(20)
        expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
        page.get_by_role("button", name="Next page").click()
        expect(page.locator("#page-number")).to_have_text("Page 2")
        # Newest first: the first token made is the one left for page 2.
        expect(page.locator("#token-rows tr")).to_have_count(1)
        expect(row(page, "carol 00")).to_be_visible()
        expect(page.get_by_role("button", name="Next page")).to_be_disabled()
        tab.shot("19-second-page")
        page.get_by_role("button", name="Previous page").click()
        expect(page.locator("#token-rows tr")).to_have_count(20)
    finally:
        tab.close()


def test_the_in_memory_run_prints_a_url_whose_page_takes_the_bootstrap_token(browser):
    # The README's run: `casola-auth serve` with no database, then the URL it prints and the
    # bootstrap token it prints. Only the ports differ (free ones, not the defaults).
    port, admin_port, console_port = free_port(), free_port(), free_port()
    proc = spawn(
        "casola-auth-memory",
        [casola_auth_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}"],
        env=clean_env(CASOLA_AUTH_CONSOLE__LISTEN=f"127.0.0.1:{console_port}"),
    )
    try:
        printed = wait_until(
            "the console URL on stdout",
            lambda: re.search(r"console \(API Tokens page\): (http://\S+)", proc.e2e_log.read_text()),
            60,
            proc,
        )
        url = printed.group(1)
        assert url == f"http://127.0.0.1:{console_port}/"
        bootstrap = re.search(r"bootstrap token \(.*\): (csl_\w+)", proc.e2e_log.read_text()).group(1)
        tab = Tab(browser, Console(url=url, db_url="", admin_token=bootstrap, colleague_token=""))
        try:
            page = tab.sign_in(bootstrap)
            expect(row(page, "bootstrap (in-memory store)")).to_be_visible()
            tab.shot("20-in-memory-run")
        finally:
            tab.close()
    finally:
        stop(proc)


def _make_tokens(console, user: str, n: int) -> str:
    """`n` tokens for `user` (names `user 00`...), made with the CLI; returns the first."""
    secrets = []
    for i in range(n):
        cp = run(
            [casola_auth_bin(), "token", "create", "--org", ORG, "--user", user, "--name", f"{user} {i:02d}", "--preset", "user-read"],
            env=clean_env(DATABASE_URL=console.db_url, CASOLA_AUTH_ARGON2__MEMORY_KIB="1024", CASOLA_AUTH_ARGON2__ITERATIONS="1"),
        )
        secrets.append(cp.stdout.strip())
    return secrets[0]
