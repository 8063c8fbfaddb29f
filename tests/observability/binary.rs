//! The real `casola-auth serve` as a child process on loopback (in-memory store, ephemeral
//! ports, cheap argon2), with everything it prints captured: the process-wide tracer and
//! metrics recorder are then the binary's own, as in production.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

/// The stdout line holding the bootstrap token, up to the token.
pub const BOOTSTRAP_LINE: &str =
    "bootstrap token (local use only, in-memory store, admin-full + tokens:issue): ";

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

/// A running `casola-auth serve`.
pub struct Binary {
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

/// The address logged after `key` (`grpc_addr=...` in text, `"grpc_addr":"..."` in JSON).
fn logged_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.trim_start_matches(['=', '"', ':']);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Binary {
    /// Starts the binary with a clean environment plus `env`; waits until it serves.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_casola-auth"));
        command
            .arg("serve")
            .env_clear()
            .env("CASOLA_AUTH_LISTEN", "127.0.0.1:0")
            .env("CASOLA_AUTH_ADMIN_LISTEN", "127.0.0.1:0")
            .env("CASOLA_AUTH_CONSOLE__ENABLED", "false")
            .env("CASOLA_AUTH_ARGON2__MEMORY_KIB", "1024")
            .env("CASOLA_AUTH_ARGON2__ITERATIONS", "1")
            .env("CASOLA_AUTH_HEALTH_INTERVAL_MS", "200")
            .env("CASOLA_AUTH_LAST_USED__FLUSH_INTERVAL_MS", "100")
            .env("CASOLA_AUTH_SHUTDOWN_GRACE_SECONDS", "5")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl in the forked child before exec, no allocation.
        unsafe {
            command.pre_exec(|| {
                // Killed with the test process, whatever happens to it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("the casola-auth binary starts");
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());

        let deadline = Instant::now() + Duration::from_secs(60);
        let (grpc, admin) = loop {
            {
                let state = stderr.state.lock().unwrap();
                let lines = &state.0;
                if let Some(line) = lines.iter().find(|l| l.contains("casola-auth serving"))
                    && let (Some(grpc), Some(admin)) = (
                        logged_addr(line, "grpc_addr"),
                        logged_addr(line, "admin_addr"),
                    )
                {
                    break (grpc, admin);
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("casola-auth exited with {status}: {}", lines.join("\n"));
                }
                assert!(
                    Instant::now() < deadline,
                    "casola-auth did not serve: {}",
                    lines.join("\n")
                );
                let _ = stderr
                    .changed
                    .wait_timeout(state, Duration::from_millis(100))
                    .unwrap();
            }
        };
        let on_postgres = env.iter().any(|(k, _)| *k == "DATABASE_URL");
        let bootstrap = loop {
            if on_postgres {
                break String::new();
            }
            let state = stdout.state.lock().unwrap();
            if let Some(token) = state.0.iter().find_map(|l| l.strip_prefix(BOOTSTRAP_LINE)) {
                break token.to_owned();
            }
            assert!(Instant::now() < deadline, "no bootstrap token on stdout");
            let _ = stdout
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap();
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

    /// A channel to the gRPC port.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .expect("connect to casola-auth")
    }

    /// `GET path` on the admin port: status, content type and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let content_type = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        (status, content_type, body.to_owned())
    }

    /// SIGTERM, then waits for the exit without blocking the runtime (the test's receiver
    /// and clients must keep answering while the service drains and flushes).
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("casola-auth exits") {
                break status;
            }
            assert!(Instant::now() < deadline, "casola-auth ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
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

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
