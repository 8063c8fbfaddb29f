//! A throwaway PostgreSQL cluster for tests, started from the binaries on PATH (or
//! /usr/lib/postgresql/*/bin), as the `postgres` system user when running as root (Postgres
//! refuses to run as root). One cluster per test binary, one database per test, cloned
//! from a migrated template. The postmaster gets SIGQUIT when the test process exits
//! (PR_SET_PDEATHSIG), so nothing is left running. `TEST_DATABASE_URL` (a superuser URL of
//! an existing server) replaces the cluster.

use std::{
    net::TcpListener,
    os::unix::{fs::chown, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

const TEMPLATE: &str = "casola_test_template";

struct Server {
    /// Superuser URL without a database name.
    base: String,
    bin_dir: Option<PathBuf>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static TEMPLATE_READY: Mutex<bool> = Mutex::const_new(false);
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// A fresh, migrated database of its own.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// Its name.
    pub name: String,
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is copied out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("running as root, but there is no `postgres` user to run PostgreSQL as".into());
    }
    // SAFETY: pw is non-null and points at a valid passwd entry.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn as_user(cmd: &mut Command, who: Option<(u32, u32)>) {
    if let Some((uid, gid)) = who {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
}

/// Removes data directories of earlier runs whose postmaster is gone.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("casola-auth-pg-"));
        if !is_ours {
            continue;
        }
        let alive = std::fs::read_to_string(path.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            // SAFETY: signal 0 only checks that the process exists.
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if !alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Makes a throwaway CA and a server certificate for 127.0.0.1 in `dir` with the openssl
/// command; returns (ca.crt, server.crt, server.key).
fn make_certificates(
    dir: &Path,
    who: Option<(u32, u32)>,
) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=casola-auth test CA",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])?;
    let key = dir.join("server.key");
    // Postgres insists that only its user can read the key.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = who {
        for f in ["server.key", "server.crt", "ca.crt"] {
            chown(dir.join(f), Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
    }
    Ok((dir.join("ca.crt"), dir.join("server.crt"), key))
}

fn start_cluster() -> Result<Server, String> {
    start_cluster_with(false).map(|(server, _)| server)
}

/// Starts a cluster; with `tls`, one that offers TLS with a certificate of a throwaway CA,
/// whose path is returned.
fn start_cluster_with(tls: bool) -> Result<(Server, Option<PathBuf>), String> {
    let bin = bin_dir()?;
    let who = run_as()?;
    let parent = std::env::temp_dir();
    sweep_stale(&parent);
    let root = tempfile::Builder::new()
        .prefix("casola-auth-pg-")
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
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(&data)
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
        .args(
            tls_settings
                .iter()
                .flat_map(|s| ["-c".to_owned(), s.clone()]),
        )
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(root.join("postgres.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        );
    as_user(&mut postgres, who);
    // SAFETY: prctl in the forked child before exec; it only sets the parent-death
    // signal, after uid/gid are set (a credential change would clear it).
    unsafe {
        postgres.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // PR_SET_PDEATHSIG fires when the *thread* that forked exits, so fork from a thread
    // that lives as long as the process.
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
    let base = format!("postgres://postgres@127.0.0.1:{port}");
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
    Ok((
        Server {
            base,
            bin_dir: Some(bin),
        },
        ca,
    ))
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
        Err(_) => start_cluster(),
    });
    server.as_ref().expect("test PostgreSQL")
}

/// Runs `work` on a plain connection to `url`, then closes it.
async fn with_client<T, F>(url: &str, work: F) -> T
where
    F: AsyncFnOnce(&tokio_postgres::Client) -> T,
{
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to test postgres: {e}"));
    let task = tokio::spawn(conn);
    let out = work(&client).await;
    drop(client);
    let _ = task.await;
    out
}

async fn admin_exec(sql: &str) {
    let url = format!("{}/postgres", server().base);
    with_client(&url, async |c| c.batch_execute(sql).await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

static TLS_SERVER: OnceLock<Result<(Server, Option<PathBuf>), String>> = OnceLock::new();

/// A second cluster, offering TLS: the base URL (no database) and the CA that signed its
/// certificate.
pub fn tls_server() -> (String, PathBuf) {
    let (server, ca) = TLS_SERVER
        .get_or_init(|| start_cluster_with(true))
        .as_ref()
        .expect("test PostgreSQL with TLS");
    (server.base.clone(), ca.clone().expect("a CA"))
}

/// The superuser URL of database `name`.
pub fn url_of(name: &str) -> String {
    format!("{}/{name}", server().base)
}

/// A PostgreSQL binary (pg_dump, psql) of the test server's installation.
pub fn pg_binary(name: &str) -> PathBuf {
    server()
        .bin_dir
        .as_ref()
        .map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

/// A new database, migrated, of its own.
pub async fn fresh_database() -> TestDb {
    let mut ready = TEMPLATE_READY.lock().await;
    if !*ready {
        admin_exec(&format!("drop database if exists {TEMPLATE}")).await;
        admin_exec(&format!("create database {TEMPLATE}")).await;
        casola_auth::store::postgres::run_migrations(&url_of(TEMPLATE), None)
            .await
            .expect("migrate the template");
        *ready = true;
    }
    let name = format!(
        "casola_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    // Creation from the template is serialised by the lock held here.
    admin_exec(&format!("create database {name} template {TEMPLATE}")).await;
    drop(ready);
    TestDb {
        url: url_of(&name),
        name,
    }
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

/// A full plain-text dump of a test database.
pub fn dump(db: &TestDb) -> String {
    let out = Command::new(pg_binary("pg_dump"))
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
