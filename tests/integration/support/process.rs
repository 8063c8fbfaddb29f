//! The real `casola-auth` binary as a child process on loopback (ephemeral ports, cheap
//! argon2), with everything it prints captured: the process-wide tracer and metrics recorder
//! are then the binary's own, as in production, and several processes can share one
//! database as replicas do.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::{
        prctl,
        signal::{Signal, kill},
    },
    unistd::Pid,
};
use tonic::transport::Channel;

use super::HttpResponse;

/// The path of the binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_casola-auth");

/// The stdout line holding the bootstrap token, up to the token.
pub const BOOTSTRAP_LINE: &str =
    "bootstrap token (local use only, in-memory store, admin-full + tokens:issue): ";

/// Environment for the cheap argon2 parameters of every test process.
pub const FAST_ARGON2_ENV: [(&str, &str); 2] = [
    ("CASOLA_AUTH_ARGON2__MEMORY_KIB", "1024"),
    ("CASOLA_AUTH_ARGON2__ITERATIONS", "1"),
];

/// A token of organisation `acme` made with the CLI (the operator path) on the database at
/// `db`, with `extra` arguments (`--scope tokens:issue`); returns its secret.
pub fn cli_token(db: &str, user: &str, preset: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(BINARY)
        .args(["token", "create", "--database-url", db, "--org", "acme"])
        .args(["--user", user, "--name", "cli test", "--preset", preset])
        .args(extra)
        .envs(FAST_ARGON2_ENV)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Asks the kernel to send `signal` to the child `command` starts when the thread that
/// started it exits, so that no server outlives a test process that crashed or was killed.
///
/// This is the harness's one `unsafe` block: `pre_exec` is unsafe because the closure runs
/// between fork and exec, where only async-signal-safe calls are allowed. The closure makes a
/// single `prctl` system call (no allocation, no lock); std runs it after it has set the
/// child's uid and gid, which would otherwise clear the parent-death signal again.
pub fn die_with_parent(command: &mut Command, signal: Signal) {
    // SAFETY: the closure only calls prctl(PR_SET_PDEATHSIG), which is async-signal-safe.
    unsafe {
        command.pre_exec(move || prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

/// The lines of one output stream, and whether it has ended.
#[derive(Default)]
struct Lines {
    state: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn snapshot(&self) -> Vec<String> {
        self.state.lock().unwrap().0.clone()
    }

    /// Waits until a line satisfies `find` (returning what it found), or panics with `what`
    /// after `deadline`, or earlier when `gone` says the process has exited.
    fn wait_for<T>(
        &self,
        what: &str,
        deadline: Instant,
        mut gone: impl FnMut() -> Option<ExitStatus>,
        find: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(found) = find(&state.0) {
                return found;
            }
            if let Some(status) = gone() {
                panic!("casola-auth exited with {status}: {}", state.0.join("\n"));
            }
            assert!(Instant::now() < deadline, "{what}: {}", state.0.join("\n"));
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    /// Waits until the stream ends (the process is gone).
    fn wait_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut state = self.state.lock().unwrap();
        while !state.1 {
            assert!(Instant::now() < deadline, "output never closed");
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }
}

fn capture(stream: impl Read + Send + 'static) -> Arc<Lines> {
    let lines = Arc::new(Lines::default());
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.state.lock().unwrap().0.push(line);
            sink.changed.notify_all();
        }
        sink.state.lock().unwrap().1 = true;
        sink.changed.notify_all();
    });
    lines
}

/// The address logged after `key` (`grpc_addr=...` in text, `"grpc_addr":"..."` in JSON).
fn logged_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.trim_start_matches(['=', '"', ':']);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A running `casola-auth serve`; killed when dropped.
pub struct ServerProcess {
    child: Child,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The admin HTTP address.
    pub admin: SocketAddr,
    /// The bootstrap token it printed (in-memory store only; empty on Postgres).
    pub bootstrap: String,
}

impl ServerProcess {
    /// Starts the binary with a clean environment plus `env` (`DATABASE_URL` for Postgres);
    /// waits until it serves.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BINARY);
        command
            .arg("serve")
            .env_clear()
            .env("CASOLA_AUTH_LISTEN", "127.0.0.1:0")
            .env("CASOLA_AUTH_ADMIN_LISTEN", "127.0.0.1:0")
            .env("CASOLA_AUTH_CONSOLE__ENABLED", "false")
            .envs(FAST_ARGON2_ENV)
            .env("CASOLA_AUTH_HEALTH_INTERVAL_MS", "200")
            .env("CASOLA_AUTH_LAST_USED__FLUSH_INTERVAL_MS", "100")
            .env("CASOLA_AUTH_SHUTDOWN_GRACE_SECONDS", "5")
            // Deadlines are overload.rs's subject; elsewhere a CPU-starved CI machine must not
            // turn a slow first verify into DEADLINE_EXCEEDED (a test may set its own).
            .env("CASOLA_AUTH_LIMITS__DECISION_DEADLINE_MS", "10000")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command, Signal::SIGKILL);
        let mut child = command.spawn().expect("the casola-auth binary starts");
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());

        let deadline = Instant::now() + Duration::from_secs(60);
        let (grpc, admin) = stderr.wait_for(
            "casola-auth did not serve",
            deadline,
            || child.try_wait().ok().flatten(),
            |lines| {
                let line = lines.iter().find(|l| l.contains("casola-auth serving"))?;
                Some((
                    logged_addr(line, "grpc_addr")?,
                    logged_addr(line, "admin_addr")?,
                ))
            },
        );
        let on_postgres = env.iter().any(|(k, _)| *k == "DATABASE_URL");
        let bootstrap = if on_postgres {
            String::new()
        } else {
            stdout.wait_for(
                "no bootstrap token on stdout",
                deadline,
                || child.try_wait().ok().flatten(),
                |lines| {
                    lines
                        .iter()
                        .find_map(|l| l.strip_prefix(BOOTSTRAP_LINE))
                        .map(str::to_owned)
                },
            )
        };
        Self {
            child,
            stdout,
            stderr,
            grpc,
            admin,
            bootstrap,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A channel to the gRPC port.
    pub async fn channel(&self) -> Channel {
        super::connect(self.grpc).await
    }

    /// `GET path` on the admin port.
    pub async fn admin_get(&self, path: &str) -> HttpResponse {
        super::http_get(self.admin, path).await
    }

    /// The sum of every sample of a counter or gauge on the admin port's `/metrics` (a
    /// name with a label selector, `name{outcome="match"}`, sums that series only).
    pub async fn metric(&self, name: &str) -> f64 {
        self.admin_get("/metrics")
            .await
            .body
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM, then waits for the exit without blocking the runtime (the test's receiver
    /// and clients must keep answering while the service drains and flushes).
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits in i32"));
        kill(pid, Signal::SIGTERM).expect("signal casola-auth");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("casola-auth exits") {
                break status;
            }
            assert!(Instant::now() < deadline, "casola-auth ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        tokio::task::spawn_blocking(move || {
            stdout.wait_closed();
            stderr.wait_closed();
        })
        .await
        .unwrap();
        status
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.snapshot()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
