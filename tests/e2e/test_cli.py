"""The operator's command line, through the real binary against a real PostgreSQL.

Output a script can rely on (a table with a header row, JSON with stable keys), token get and
update, errors that name the flags, a quiet end on a closed pipe, shell completions, help
texts that are true, and a clear word when the database was never migrated.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from conftest import REPO, casola_auth_bin, clean_env, run

TOKEN_KEYS = {
    "id", "name", "description", "prefix", "scopes", "org_id", "user_id",
    "created_at", "expires_at", "last_used_at", "revoked_at", "revocation_reason", "replaced_by", "status", "expires_soon",
    "allowed_networks", "allowed_models",
}
NO_SCHEMA = "the database has no casola-auth schema: run `casola-auth migrate`"
SECRET = re.compile(r"csl_[0-9A-Za-z]{50}")


def new_org() -> str:
    """An organisation of its own, so that listings see only this test's tokens."""
    return f"cli-{uuid.uuid4().hex[:12]}"


def create(cli, org: str, name: str, *extra: str) -> dict:
    """`token create --output json`: the token's fields and its secret as `token`."""
    cp = cli("token", "create", "--org", org, "--user", "alice", "--name", name, *extra, "--output", "json")
    return json.loads(cp.stdout)


def fresh_database(pg) -> str:
    """A new, empty database on the session's cluster (never migrated)."""
    name = f"unmigrated_{uuid.uuid4().hex[:12]}"
    pg.psql(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


def test_token_list_prints_a_header_row_then_one_row_per_token(cli):
    org = new_org()
    first = create(cli, org, "ci-pipeline", "--preset", "user-read")
    second = create(cli, org, "laptop", "--preset", "user-full")
    lines = cli("token", "list", "--org", org).stdout.splitlines()
    assert lines[0].split() == ["ID", "PREFIX", "NAME", "ORG", "USER", "STATUS", "SCOPES", "EXPIRES", "SOON", "LAST", "USED", "NETWORKS", "MODELS"], lines
    rows = [line.split() for line in lines[1:]]
    # Newest first.
    assert [r[0] for r in rows] == [second["id"], first["id"]], lines
    assert rows[0][1:7] == [second["prefix"], "laptop", org, "alice", "active", "user:read,user:write"], lines
    assert rows[1][7:] == ["-", "-", "-", "-", "-"], "never expires (so not soon), never used, unrestricted"


def test_json_output_of_list_and_get_parses_with_stable_keys_and_no_secret(cli):
    org = new_org()
    made = create(cli, org, "json-check", "--preset", "user-read", "--expires-in-days", "30")
    secret = made.pop("token")
    assert SECRET.fullmatch(secret), "create prints the secret once, as `token`"
    assert set(made) == TOKEN_KEYS
    assert secret.startswith(made["prefix"])

    listed = cli("token", "list", "--org", org, "--output", "json").stdout
    got = cli("token", "get", made["id"], "-o", "json").stdout
    for text in (listed, got):
        assert "csl_" not in text.replace(made["prefix"], ""), "no secret outside create"
    tokens = json.loads(listed)
    assert isinstance(tokens, list) and len(tokens) == 1
    one = json.loads(got)
    assert tokens[0] == one == made
    assert set(one) == TOKEN_KEYS, "every key present, absent times as null"
    assert one["status"] == "active" and one["scopes"] == ["user:read"]
    assert one["last_used_at"] is None and one["revoked_at"] is None
    assert one["revocation_reason"] is None and one["replaced_by"] is None
    created = datetime.fromisoformat(one["created_at"])
    expires = datetime.fromisoformat(one["expires_at"])
    assert created.utcoffset().total_seconds() == 0 and round((expires - created).total_seconds()) == 30 * 86400


def test_json_list_of_an_empty_organisation_is_an_empty_array(cli):
    assert json.loads(cli("token", "list", "--org", new_org(), "-o", "json").stdout) == []


def test_get_prints_every_field_under_a_header_row(cli):
    org = new_org()
    made = create(cli, org, "detail", "--preset", "admin-read", "--description", "for the dashboard")
    lines = cli("token", "get", made["id"]).stdout.splitlines()
    assert lines[0].split() == ["FIELD", "VALUE"]
    fields = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in lines[1:]}
    assert set(fields) == TOKEN_KEYS
    assert fields["description"] == "for the dashboard" and fields["scopes"] == "admin:read"
    assert fields["revoked_at"] == "-" and fields["status"] == "active"


def test_update_renames_and_clears_the_description_and_get_shows_it(cli):
    org = new_org()
    made = create(cli, org, "old-name", "--preset", "user-read", "--description", "notes")
    updated = json.loads(cli("token", "update", made["id"], "--name", "new name", "-o", "json").stdout)
    assert updated["name"] == "new name" and updated["description"] == "notes", "only the flag given changes"
    cli("token", "update", made["id"], "--description", "")
    got = json.loads(cli("token", "get", made["id"], "-o", "json").stdout)
    assert got["name"] == "new name" and got["description"] == ""
    assert got["scopes"] == made["scopes"] and got["prefix"] == made["prefix"]


def test_update_without_a_change_is_refused_naming_the_flags(cli):
    made = create(cli, new_org(), "unchanged", "--preset", "user-read")
    cp = cli("token", "update", made["id"], check=False)
    assert cp.returncode == 2 and "--name" in cp.stderr and "--description" in cp.stderr, cp.stderr


def test_get_of_an_unknown_or_malformed_id_says_so(cli):
    cp = cli("token", "get", str(uuid.uuid4()), check=False)
    assert cp.returncode == 1 and "not found" in cp.stderr and cp.stdout == "", cp.stderr
    cp = cli("token", "get", "not-a-uuid", check=False)
    assert cp.returncode == 1 and "ID: must be a token id (UUID)" in cp.stderr, cp.stderr


@pytest.mark.parametrize("days", [["--expires-in-days", "-5"], ["--expires-in-days=-5"]])
def test_negative_days_reach_the_validator_and_nothing_is_written(cli, days):
    org = new_org()
    cp = cli("token", "create", "--org", org, "--user", "alice", "--name", "neg", "--preset", "user-read", *days, check=False)
    assert cp.returncode == 1, cp.stderr
    assert "--expires-in-days: must be between 1 and 3650 days, is -5" in cp.stderr, cp.stderr
    assert "expires_in_days" not in cp.stderr and "unexpected argument" not in cp.stderr
    assert cp.stdout == ""
    assert json.loads(cli("token", "list", "--org", org, "-o", "json").stdout) == []


def test_request_errors_name_the_flags_not_the_api_fields(cli):
    cp = cli(
        "token", "create", "--org", new_org(), "--user", "alice", "--name", "x" * 101,
        "--scope", "user:read", "--scope", "no:such", "--preset", "nope", "--expires-in-days", "0",
        check=False,
    )
    assert cp.returncode == 1, cp.stderr
    for part in ("--name: ", "--scope: unknown scope \"no:such\"", "--preset: unknown preset \"nope\"", "--expires-in-days: "):
        assert part in cp.stderr, cp.stderr
    for api_field in ("expires_in_days", "scopes[", "preset:"):
        assert api_field not in cp.stderr.replace("--preset:", ""), cp.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["token", "list", "--org", "acme", "--include-revoked"],
        ["token", "list", "--org", "acme", "-o", "json"],
        ["scopes"],
        ["completions", "bash"],
    ],
    ids=["token-list", "token-list-json", "scopes", "completions"],
)
def test_a_closed_pipe_ends_the_command_quietly(cli, tokens, args):
    # The reader goes away before the first write (as `| head` does once it has its line):
    # the write fails with EPIPE, which must end the command with status 0 and no panic.
    proc = subprocess.Popen(
        [str(casola_auth_bin()), *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=clean_env(DATABASE_URL=cli.db_url, RUST_LOG="warn"),
    )
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert "panicked" not in stderr and "Broken pipe" not in stderr and "error" not in stderr.lower(), stderr


def test_head_of_a_token_list_is_its_header_and_the_pipeline_succeeds(cli, tokens):
    script = f'set -o pipefail; "{casola_auth_bin()}" token list --org acme --include-revoked | head -1'
    cp = run(["bash", "-c", script], env=clean_env(DATABASE_URL=cli.db_url), check=False)
    assert cp.returncode == 0 and cp.stdout.split()[:2] == ["ID", "PREFIX"], (cp.stdout, cp.stderr)
    assert "panicked" not in cp.stderr, cp.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "elvish", "powershell"])
def test_completions_are_printed_for_each_shell(shell):
    cp = run([casola_auth_bin(), "completions", shell])
    assert len(cp.stdout.splitlines()) > 20, cp.stdout
    for word in ("casola-auth", "token", "expires-in-days", "output"):
        assert word in cp.stdout, f"{shell} completion lacks {word}"


def test_bash_completion_is_valid_bash_and_completes_subcommands(tmp_path):
    script = tmp_path / "casola-auth.bash"
    script.write_text(run([casola_auth_bin(), "completions", "bash"]).stdout)
    run(["bash", "-n", script])
    probe = (
        f'source "{script}"; COMP_WORDS=(casola-auth tok); COMP_CWORD=1; COMP_LINE="casola-auth tok"; '
        'COMP_POINT=${#COMP_LINE}; fn=$(complete -p casola-auth | sed -E "s/.*-F ([^ ]+).*/\\1/"); '
        '"$fn" casola-auth tok casola-auth; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    assert "token" in run(["bash", "-c", probe]).stdout.split()


def test_help_texts_are_true_for_each_subcommand():
    def help_of(*cmd: str) -> str:
        return run([casola_auth_bin(), *cmd, "--help"]).stdout

    migrate = help_of("migrate")
    assert "in-memory" not in migrate and "needs a database" in migrate, migrate
    assert "in-memory store" in help_of("serve")
    for cmd in (("token", "list"), ("token", "get"), ("token", "update"), ("token", "create"), ("scopes",)):
        assert "--output" in help_of(*cmd), cmd
    assert "--database-url" not in help_of("scopes"), "scopes never touches the database"
    assert "no connection is made" in help_of("check-config")


@pytest.mark.parametrize(
    "args",
    [
        ["token", "create", "--org", "acme", "--user", "alice", "--name", "early", "--preset", "user-read"],
        ["token", "list", "--org", "acme"],
    ],
    ids=["create", "list"],
)
def test_token_commands_before_migrate_say_to_run_migrate(cli, pg, args):
    url = fresh_database(pg)
    cp = cli(*args, "--database-url", url, check=False)
    assert cp.returncode == 1, cp.stderr
    assert NO_SCHEMA in cp.stderr and "internal error" not in cp.stderr, cp.stderr
    assert cp.stdout == ""
    # After migrate, the same command works.
    cli("migrate", "--database-url", url)
    cli(*args, "--database-url", url)


def test_serve_before_migrate_refuses_to_start_and_says_to_run_migrate(cli, pg):
    url = fresh_database(pg)
    cp = run(
        [casola_auth_bin(), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--database-url", url],
        env=clean_env(RUST_LOG="warn"), check=False, timeout=60,
    )
    assert cp.returncode == 1 and NO_SCHEMA in cp.stderr, cp.stderr


def test_readme_catalog_example_loads_and_its_scopes_are_listed(tmp_path):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    catalog = next((b for b in blocks if "[[categories]]" in b), None)
    assert catalog, "the README documents an operator scope catalog file in a ```toml block"
    path = tmp_path / "scopes.toml"
    path.write_text(catalog)
    config = tmp_path / "casola-auth.toml"
    config.write_text(f'[catalog]\nfile = "{path}"\n')
    out = json.loads(run([casola_auth_bin(), "scopes", "--config", config, "-o", "json"]).stdout)
    names = {s["name"] for c in out["categories"] for s in c["scopes"]}
    added = set(re.findall(r'^name = "([a-z]+:[a-z]+)"', catalog, re.M))
    assert added and added <= names, (added, names)
    assert {"user:read", "tokens:issue"} <= names, "the defaults stay"
    presets = {p["id"] for p in out["presets"]}
    assert set(re.findall(r'^id = "([^"]+)"', catalog, re.M)) <= presets


def test_license_file_is_the_apache_license_cargo_toml_names():
    cargo = (REPO / "Cargo.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"$', cargo, re.M), "Cargo.toml names Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"], text[:200]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


def test_readme_links_only_to_files_inside_the_repository():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links, "the README links to its docs"
    for link in links:
        if re.match(r"[a-z]+://", link) or link.startswith("#"):
            continue
        target = (REPO / link.split("#")[0]).resolve()
        assert target.is_relative_to(REPO.resolve()), f"{link} leaves the repository"
        assert target.exists(), f"{link} does not exist"


def test_readme_grpcurl_get_and_update_examples_work_with_grpcurl_1_8_6(cli, grpcurl, auth_server, tokens):
    # The README's GetToken and UpdateToken calls (update_mask as {"paths": [...]}), then
    # the CLI sees what the API changed: one store, two doors.
    made = create(cli, "acme", "readme-example", "--preset", "user-read")
    bearer = f"authorization: Bearer {tokens.full}"
    got = json.loads(grpcurl("-H", bearer, "-d", json.dumps({"id": made["id"]}), auth_server.grpc_addr,
                             "casola.auth.v1.TokenService/GetToken").stdout)
    assert got["token"]["id"] == made["id"] and got["token"]["name"] == "readme-example"
    body = json.dumps({"id": made["id"], "name": "old laptop", "update_mask": {"paths": ["name"]}})
    updated = json.loads(grpcurl("-H", bearer, "-d", body, auth_server.grpc_addr,
                                 "casola.auth.v1.TokenService/UpdateToken").stdout)
    assert updated["token"]["name"] == "old laptop"
    assert json.loads(cli("token", "get", made["id"], "-o", "json").stdout)["name"] == "old laptop"


def test_a_refused_connection_names_host_port_and_database_never_the_password(cli):
    from harness import free_port

    port = free_port()  # nothing listens there
    url = f"postgres://casola:hunter2@127.0.0.1:{port}/casola_auth?sslmode=disable"
    cp = cli("token", "list", "--org", "acme", "--database-url", url, check=False)
    assert cp.returncode == 1, cp.stderr
    assert f"127.0.0.1:{port}" in cp.stderr and '"casola_auth"' in cp.stderr, cp.stderr
    assert "refused" in cp.stderr.lower(), cp.stderr
    assert "hunter2" not in cp.stderr and "hunter2" not in cp.stdout


def test_an_unknown_database_is_named(cli, pg):
    url = pg.url.rsplit("/", 1)[0] + "/no_such_database"
    cp = cli("token", "list", "--org", "acme", "--database-url", url, check=False)
    assert cp.returncode == 1, cp.stderr
    assert "no_such_database" in cp.stderr and "does not exist" in cp.stderr, cp.stderr


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DATABASE_URL": "mysql://u:hunter2@db/x"}, "database_url"),
        ({"CASOLA_AUTH_STORE__TLS_CA_FILE": "/nonexistent/ca.pem"}, "store.tls_ca_file"),
        ({"CASOLA_AUTH_LISTEN": "127.0.0.1:7311", "CASOLA_AUTH_ADMIN_LISTEN": "127.0.0.1:7311"}, "admin_listen"),
        ({"CASOLA_AUTH_ARGON2__MEMORY_KIB": "4"}, "argon2.memory_kib"),
    ],
)
def test_check_config_and_serve_refuse_what_cannot_work_naming_the_key(env, key):
    for command in (["check-config"], ["serve"]):
        cp = run([casola_auth_bin(), *command], env=clean_env(**env), check=False, timeout=60)
        assert cp.returncode == 1, (command, cp.stderr)
        assert key in cp.stderr, (command, cp.stderr)
        assert "hunter2" not in cp.stderr


def test_a_misspelt_variable_is_a_warning_naming_the_closest_key_and_service_links_stay_quiet():
    cp = run(
        [casola_auth_bin(), "check-config"],
        env=clean_env(CASOLA_AUTH_LISTN="0.0.0.0:1", CASOLA_AUTH_SERVICE_HOST="10.0.0.7", CASOLA_AUTH_PORT="tcp://10.0.0.7:50051"),
        check=False,
        timeout=60,
    )
    assert cp.returncode == 0, cp.stderr
    assert "CASOLA_AUTH_LISTN" in cp.stderr and "CASOLA_AUTH_LISTEN" in cp.stderr, cp.stderr
    assert "SERVICE_HOST" not in cp.stderr and "CASOLA_AUTH_PORT" not in cp.stderr, cp.stderr
