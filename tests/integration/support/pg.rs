//! A throwaway PostgreSQL cluster for tests, started from the binaries on PATH (or
//! /usr/lib/postgresql/*/bin), as the `postgres` system user when running as root (Postgres
//! refuses to run as root). One cluster per test process, one database per test, cloned
//! from a template migrated once per process and dropped again when the test's [`TestDb`]
//! goes. The postmaster gets SIGQUIT when the test process exits (a parent-death signal), so
//! nothing is left running. `TEST_DATABASE_URL` (a superuser URL of an existing server)
//! replaces the cluster.
//!
//! Every database this process creates is named after a random run id, so two test
//! processes on one server do not collide. The process holds a session advisory lock keyed
//! by its run id for as long as it lives; a new run drops the databases of runs whose lock
//! is free (they ended, or crashed before their databases were dropped), so nothing piles up
//! on a shared server either.

use std::{
    os::unix::{fs::chown, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, User, geteuid},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::Mutex;

use super::{free_port, process::die_with_parent};

struct Server {
    /// Superuser URL without a database name.
    base: String,
    bin_dir: Option<PathBuf>,
}

/// What every database of this run is named after.
const PREFIX: &str = "casola_test_";

/// This test process on the server: a random id that names its databases
/// (`casola_test_<id>_template`, `casola_test_<id>_<n>`) and keys the advisory lock that
/// says the run is alive. A pid would not do: pids repeat across machines and containers
/// sharing one server.
struct Run {
    id: u64,
}

impl Run {
    fn name(&self, suffix: impl std::fmt::Display) -> String {
        format!("{PREFIX}{:016x}_{suffix}", self.id)
    }
}

/// The run id in a database name of any run, if it is one.
fn run_of(database: &str) -> Option<u64> {
    let (id, _) = database.strip_prefix(PREFIX)?.split_once('_')?;
    if id.len() != 16 {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}

/// Postgres advisory locks take a bigint; the id's bits are the key.
fn lock_key(id: u64) -> i64 {
    i64::from_ne_bytes(id.to_ne_bytes())
}

static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static TLS_SERVER: OnceLock<Result<(Server, PathBuf), String>> = OnceLock::new();
/// The migrated template's name once it exists; the lock also serialises cloning it
/// (Postgres refuses to copy a template that another session is copying).
static TEMPLATE: Mutex<Option<String>> = Mutex::const_new(None);
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// A fresh, migrated database of its own, dropped when this value is.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Clones the migrated template (made on first use) into a new database.
    pub async fn new() -> Self {
        let run = run();
        let mut template = TEMPLATE.lock().await;
        let template = match &*template {
            Some(name) => name.clone(),
            None => {
                let name = run.name("template");
                admin_exec(&format!("create database {name}")).await;
                casola_auth::store::postgres::run_migrations(&url_of(&name), None)
                    .await
                    .expect("migrate the template");
                template.insert(name).clone()
            }
        };
        let name = run.name(NEXT_DB.fetch_add(1, Ordering::Relaxed));
        // Still under the lock: clones of one template are made one at a time.
        admin_exec(&format!("create database {name} template {template}")).await;
        Self {
            url: url_of(&name),
            name,
        }
    }
}

impl Drop for TestDb {
    /// Drops the database, ending any connection still open to it (a server's pool, a
    /// listener). `Drop` is synchronous and usually runs on a test runtime's thread, where
    /// no other runtime may `block_on`: the drop runs on a thread of its own with a small
    /// runtime, and this one waits for it.
    fn drop(&mut self) {
        let sql = format!("drop database if exists {} with (force)", self.name);
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(try_admin_exec(&sql))
        })
        .join();
        // A leftover database is not worth failing (or double-panicking) a test for.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test database {} not dropped: {e}", self.name),
            Err(_) => eprintln!("test database {} not dropped: the drop panicked", self.name),
        }
    }
}

fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    if let Some(dir) = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
    {
        return Ok(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL binaries on PATH or in /usr/lib/postgresql: {e}"))?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "no PostgreSQL binaries found (install postgresql)".into())
}

/// uid/gid to run Postgres as: the `postgres` user when we are root, else ourselves.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .map_err(|e| format!("looking up the `postgres` user: {e}"))?
        .ok_or("running as root, but there is no `postgres` user to run PostgreSQL as")?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn as_user(cmd: &mut Command, who: Option<(u32, u32)>) {
    if let Some((uid, gid)) = who {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
}

/// What a cluster's directory is named: `casola-auth-pg-<pid of the test process>-<random>`
/// (the name scripts/test.sh looks for in leftover processes).
const CLUSTER_DIR: &str = "casola-auth-pg-";

/// Whether process `pid` exists (signal "none" only checks).
fn exists(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Removes cluster directories of earlier runs: neither the test process that made one nor
/// its postmaster is alive. A directory whose test process is alive may be a cluster being
/// set up right now (no postmaster.pid yet), by this process or another.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(rest) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(CLUSTER_DIR))
        else {
            continue;
        };
        let owner_alive = rest
            .split_once('-')
            .and_then(|(pid, _)| pid.parse().ok())
            .is_some_and(exists);
        let postmaster_alive = std::fs::read_to_string(path.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            .is_some_and(exists);
        if !owner_alive && !postmaster_alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Makes a throwaway CA and a server certificate for 127.0.0.1 in `dir`; returns (ca.crt,
/// server.crt, server.key).
fn make_certificates(
    dir: &Path,
    who: Option<(u32, u32)>,
) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "casola-auth test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).map_err(err)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer).map_err(err)?;

    let write = |name: &str, pem: String| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some((uid, gid)) = who {
            chown(&path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        Ok(path)
    };
    let ca_crt = write("ca.crt", ca_cert.pem())?;
    let crt = write("server.crt", server_cert.pem())?;
    let key = write("server.key", server_key.serialize_pem())?;
    // Postgres insists that only its user can read the key.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok((ca_crt, crt, key))
}

/// A cluster this process started: where it lives and how it was started, so that it can
/// be stopped and started again.
struct Started {
    server: Server,
    ca: Option<PathBuf>,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    who: Option<(u32, u32)>,
    settings: Vec<String>,
}

/// Starts a cluster; with `tls`, one that offers TLS with a certificate of a throwaway CA,
/// whose path is returned.
fn start_cluster(tls: bool) -> Result<(Server, Option<PathBuf>), String> {
    start_cluster_at(tls).map(|s| (s.server, s.ca))
}

fn start_cluster_at(tls: bool) -> Result<Started, String> {
    let bin = bin_dir()?;
    let who = run_as()?;
    // A folder of their own, so that only this harness's sweep looks at them.
    let parent = std::env::temp_dir().join("casola-auth-clusters");
    std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    sweep_stale(&parent);
    let root = tempfile::Builder::new()
        .prefix(&format!("{CLUSTER_DIR}{}-", std::process::id()))
        .tempdir_in(&parent)
        .map_err(|e| e.to_string())?
        .keep();
    let data = root.join("data");
    std::fs::create_dir(&data).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = who {
        for dir in [&root, &data] {
            chown(dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args(["-D"])
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_user(&mut initdb, who);
    let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut ca = None;
    let mut tls_settings = Vec::new();
    if tls {
        let (ca_crt, crt, key) = make_certificates(&root, who)?;
        tls_settings = vec![
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", crt.display()),
            format!("ssl_key_file={}", key.display()),
        ];
        ca = Some(ca_crt);
    }
    let port = free_port();
    spawn_postmaster(&bin, who, &root, &data, port, &tls_settings)?;
    Ok(Started {
        server: Server {
            base: format!("postgres://postgres@127.0.0.1:{port}"),
            bin_dir: Some(bin),
        },
        ca,
        root,
        data,
        port,
        who,
        settings: tls_settings,
    })
}

/// Runs the postmaster of the cluster in `data` on `port` (with extra `settings`) and waits
/// until it accepts connections.
fn spawn_postmaster(
    bin: &Path,
    who: Option<(u32, u32)>,
    root: &Path,
    data: &Path,
    port: u16,
    settings: &[String],
) -> Result<(), String> {
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", root.display()))
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ])
        .args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"])
        .args(settings.iter().flat_map(|s| ["-c".to_owned(), s.clone()]))
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(root.join("postgres.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        );
    as_user(&mut postgres, who);
    die_with_parent(&mut postgres, Signal::SIGQUIT);
    // The parent-death signal fires when the *thread* that forked exits, and test threads
    // end with their test: fork from a thread that lives as long as the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-parent".into())
        .spawn(move || {
            let child = postgres.spawn();
            let failed = child.is_err();
            let _ = tx.send(child.map(|c| c.id()).map_err(|e| e.to_string()));
            if !failed {
                loop {
                    std::thread::park();
                }
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())??;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-q",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(root.join("postgres.log")).unwrap_or_default();
            return Err(format!("postgres did not become ready: {log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn server() -> &'static Server {
    let server = SERVER.get_or_init(|| match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => {
            let base = url
                .rsplit_once('/')
                .map_or(url.clone(), |(b, _)| b.to_owned());
            Ok(Server {
                base,
                bin_dir: bin_dir().ok(),
            })
        }
        Err(_) => start_cluster(false).map(|(server, _)| server),
    });
    server.as_ref().expect("test PostgreSQL")
}

/// This process's run, registered on the server (its lock taken, ended runs swept) on
/// first use.
fn run() -> &'static Run {
    RUN.get_or_init(|| {
        let run = Run {
            id: uuid::Uuid::new_v4().as_u64_pair().0,
        };
        let url = url_of("postgres");
        let (ready, registered) = std::sync::mpsc::channel();
        // The lock lives as long as its session: keep the session on a thread (with its own
        // runtime) that lives as long as the process; test runtimes end with their test.
        std::thread::Builder::new()
            .name("postgres-run-lock".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(ready.send(Err(e.to_string()))),
                };
                runtime.block_on(hold_run_lock(&url, run.id, ready));
            })
            .map_err(|e| e.to_string())?;
        registered.recv().map_err(|e| e.to_string())?.map(|()| run)
    })
    .as_ref()
    .expect("a test run registered on PostgreSQL")
}

/// Takes this run's lock, drops the databases of runs that have ended, reports on `ready`,
/// then keeps the session (and with it the lock) open.
async fn hold_run_lock(url: &str, id: u64, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let registered = async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect to test postgres: {e}"))?;
        let conn = tokio::spawn(conn);
        client
            .execute("select pg_advisory_lock($1)", &[&lock_key(id)])
            .await
            .map_err(|e| format!("take the run lock: {e}"))?;
        sweep_ended_runs(&client, id)
            .await
            .map_err(|e| format!("drop databases of ended runs: {e}"))?;
        Ok::<_, String>((client, conn))
    };
    match registered.await {
        Ok((_client, conn)) => {
            let _ = ready.send(Ok(()));
            let _ = conn.await;
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

/// Drops every database of another run whose lock is free: that run has ended.
async fn sweep_ended_runs(
    client: &tokio_postgres::Client,
    own: u64,
) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "select datname from pg_database where starts_with(datname, $1)",
            &[&PREFIX],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let Some(id) = run_of(&name).filter(|id| *id != own) else {
            continue;
        };
        let ended: bool = client
            .query_one("select pg_try_advisory_lock($1)", &[&lock_key(id)])
            .await?
            .get(0);
        if ended {
            client
                .batch_execute(&format!("drop database if exists {name} with (force)"))
                .await?;
            client
                .execute("select pg_advisory_unlock($1)", &[&lock_key(id)])
                .await?;
        }
    }
    Ok(())
}

/// A second cluster, offering TLS: the base URL (no database) and the CA that signed its
/// certificate.
pub fn tls_server() -> (String, PathBuf) {
    let (server, ca) = TLS_SERVER
        .get_or_init(|| {
            let (server, ca) = start_cluster(true)?;
            Ok((server, ca.ok_or("a TLS cluster has a CA")?))
        })
        .as_ref()
        .expect("test PostgreSQL with TLS");
    (server.base.clone(), ca.clone())
}

/// Runs `work` on a plain connection to `url`, then closes it.
async fn with_client<T, F>(url: &str, work: F) -> Result<T, tokio_postgres::Error>
where
    F: AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
{
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let out = work(&client).await;
    drop(client);
    let _ = task.await;
    out
}

async fn try_admin_exec(sql: &str) -> Result<(), String> {
    let url = url_of("postgres");
    with_client(&url, async |c| c.batch_execute(sql).await)
        .await
        .map_err(|e| format!("{sql}: {e}"))
}

async fn admin_exec(sql: &str) {
    try_admin_exec(sql).await.unwrap_or_else(|e| panic!("{e}"));
}

/// The superuser URL of database `name`.
fn url_of(name: &str) -> String {
    format!("{}/{name}", server().base)
}

/// Runs SQL on a test database (for setting up states the API cannot make, like expiry).
pub async fn exec(url: &str, sql: &str) -> u64 {
    with_client(url, async |c| c.execute(sql, &[]).await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs a query returning one bigint.
pub async fn query_i64(url: &str, sql: &str) -> i64 {
    with_client(url, async |c| c.query_one(sql, &[]).await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A full plain-text dump of a test database, by the server installation's own pg_dump.
pub fn dump(db: &TestDb) -> String {
    let pg_dump = server()
        .bin_dir
        .as_ref()
        .map_or_else(|| PathBuf::from("pg_dump"), |d| d.join("pg_dump"));
    let out = Command::new(pg_dump)
        .args(["--no-owner", "--inserts", &db.url])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 dump")
}

/// A cluster of a test's own, which the test may stop and start again (a database outage)
/// without disturbing the shared cluster other tests use. Its postmaster dies with the test
/// process like the shared one's.
pub struct OwnCluster {
    started: Started,
    bin: PathBuf,
}

impl OwnCluster {
    /// Starts a new cluster and creates a migrated database `casola` on it.
    pub async fn start() -> Self {
        let started = tokio::task::spawn_blocking(|| start_cluster_at(false))
            .await
            .unwrap()
            .expect("a PostgreSQL cluster of the test's own");
        let bin = started
            .server
            .bin_dir
            .clone()
            .expect("a started cluster knows its binaries");
        let cluster = Self { started, bin };
        // The shared clusters trade durability for speed (synchronous_commit=off); this one
        // is crashed on purpose, and a commit acknowledged before the crash must survive it,
        // as in production: a token created just before `stop_immediate` was otherwise lost
        // with the unwritten WAL and came back "unknown".
        with_client(&cluster.url("postgres"), async |c| {
            c.batch_execute("create database casola").await?;
            c.batch_execute("alter database casola set synchronous_commit = on")
                .await
        })
        .await
        .expect("create the database");
        casola_auth::store::postgres::run_migrations(&cluster.url("casola"), None)
            .await
            .expect("migrate");
        cluster
    }

    /// The superuser URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.started.server.base)
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once, no shutdown checkpoint,
    /// like a crash; the server is gone when this returns.
    pub fn stop_immediate(&self) {
        let mut pg_ctl = Command::new(self.bin.join("pg_ctl"));
        pg_ctl
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&self.started.data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut pg_ctl, self.started.who);
        let out = pg_ctl.output().expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the stopped cluster again on the same port (crash recovery runs first); returns
    /// when it accepts connections.
    pub fn restart(&self) {
        let s = &self.started;
        spawn_postmaster(&self.bin, s.who, &s.root, &s.data, s.port, &s.settings)
            .expect("PostgreSQL starts again");
    }
}
