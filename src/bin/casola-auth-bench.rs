//! casola-auth-bench: the load generator and helpers behind `scripts/bench.py`.
//!
//! - `load`: closed-loop (or paced with `--rate`) gRPC load against one server, printing one
//!   JSON line: requests/s, p50/p90/p99/max latency, errors. Modes: `baseline` (grpc.health
//!   Check, the no-op RPC of the same server build), `authorize`, `authorize-wrong` (the
//!   tokens with a wrong secret), `authorize-unknown` (well-formed tokens of no row: the
//!   store lookup alone), `check` (Envoy ext_authz Check).
//! - `mint`: writes valid tokens straight into Postgres (all sharing one secret part, so one
//!   argon2 hash serves them all; each still costs a full verify when first used), plus
//!   optional filler rows, and prints `id token` lines.
//! - `argon2`: the time of one verify at given parameters on this machine.
//! - `revoke-latency`: revokes through one replica and measures until the other denies.
//!
//! It is a benchmark tool, not a test: it asserts nothing about speed.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use casola_auth::{
    proto::{
        AuthorizeRequest, Decision, DenyReason, RevokeTokenRequest,
        authorization_service_client::AuthorizationServiceClient,
        token_service_client::TokenServiceClient,
    },
    token::{
        PlainToken, checksum,
        hash::{HashParams, TokenHasher},
    },
};
use clap::{Parser, Subcommand, ValueEnum};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use hdrhistogram::Histogram;
use rand::{RngExt, rand_core::UnwrapErr, rngs::SysRng};
use serde_json::json;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser)]
#[command(
    name = "casola-auth-bench",
    about = "Load generator for casola-auth benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    Baseline,
    Authorize,
    AuthorizeWrong,
    /// Well-formed tokens whose lookup id is in no row: one store read, no verify.
    AuthorizeUnknown,
    Check,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run load against one server.
    Load {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        #[arg(long, value_enum)]
        mode: Mode,
        /// Token file (`id token` per line) for the authorize and check modes.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Use at most this many distinct tokens from the file.
        #[arg(long)]
        token_count: Option<usize>,
        /// Use each token once (a cold verify per call); stops when they run out.
        #[arg(long)]
        once: bool,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Total requests per second (paced); unset: as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Scope required by authorize and check calls.
        #[arg(long, default_value = "user:read")]
        scope: String,
        /// A label copied into the output.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Insert valid tokens (and filler rows) into Postgres.
    Mint {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        filler: usize,
        #[arg(long, default_value = "bench")]
        org: String,
        #[arg(long, default_value = "user:read,user:write")]
        scopes: String,
        #[arg(long, default_value_t = 19456)]
        memory_kib: u32,
        #[arg(long, default_value_t = 2)]
        iterations: u32,
        #[arg(long, default_value_t = 1)]
        parallelism: u32,
    },
    /// Time argon2 verifies at these parameters (one thread).
    Argon2 {
        #[arg(long, default_value_t = 19456)]
        memory_kib: u32,
        #[arg(long, default_value_t = 2)]
        iterations: u32,
        #[arg(long, default_value_t = 1)]
        parallelism: u32,
        #[arg(long, default_value_t = 40)]
        rounds: usize,
    },
    /// Revoke through replica A, measure until replica B denies.
    RevokeLatency {
        #[arg(long)]
        a: String,
        #[arg(long)]
        b: String,
        /// A token allowed to revoke the tokens (tokens:issue).
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        tokens: PathBuf,
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
}

fn read_tokens(path: &PathBuf) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("read tokens file")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, t)| (id.to_owned(), t.to_owned()))
        .collect()
}

/// The same lookup id with a different secret part and a valid checksum.
fn wrong_secret(token: &str, n: usize) -> String {
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body: Vec<u8> = token[..48].bytes().collect();
    let pos = 16 + n % 32;
    let i = B62.iter().position(|&c| c == body[pos]).unwrap_or(0);
    body[pos] = B62[(i + 1 + (n / 32) % 61) % 62];
    let body = String::from_utf8(body).expect("ascii");
    let sum = checksum(&body);
    format!("{body}{sum}")
}

async fn connect(target: &str) -> Channel {
    Endpoint::from_shared(target.to_owned())
        .expect("target URL")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect")
}

#[derive(Default)]
struct Tally {
    ok: u64,
    denied: u64,
    errors: u64,
    shed: u64,
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Cmd::Load {
            target,
            mode,
            tokens,
            token_count,
            once,
            connections,
            concurrency,
            duration,
            rate,
            scope,
            label,
        } => {
            let mut list: Vec<String> = tokens
                .as_ref()
                .map(read_tokens)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, t)| t)
                .collect();
            if let Some(n) = token_count {
                list.truncate(n);
            }
            if mode == Mode::AuthorizeUnknown {
                list = (0..10_000)
                    .map(|_| PlainToken::generate().expose().to_owned())
                    .collect();
            }
            if mode != Mode::Baseline && list.is_empty() {
                panic!("--tokens is needed for {mode:?}");
            }
            let list = Arc::new(list);
            let next = Arc::new(AtomicUsize::new(0));
            let mut channels = Vec::new();
            for _ in 0..connections.max(1) {
                channels.push(connect(&target).await);
            }
            let deadline = Instant::now() + Duration::from_secs_f64(duration);
            let started = Instant::now();
            let per_worker = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r));
            let mut workers = Vec::new();
            for w in 0..concurrency {
                let channel = channels[w % channels.len()].clone();
                let (list, next, scope) = (list.clone(), next.clone(), scope.clone());
                workers.push(tokio::spawn(async move {
                    let mut hist =
                        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                    let mut tally = Tally::default();
                    let mut health = HealthClient::new(channel.clone());
                    let mut authz = AuthorizationServiceClient::new(channel.clone());
                    let mut check = AuthorizationClient::new(channel);
                    let mut pace = per_worker.map(|p| {
                        let mut i = tokio::time::interval(p);
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        i
                    });
                    let mut n = w;
                    while Instant::now() < deadline {
                        if let Some(p) = pace.as_mut() {
                            p.tick().await;
                        }
                        let token = if mode == Mode::Baseline {
                            String::new()
                        } else if once {
                            match list.get(next.fetch_add(1, Ordering::Relaxed)) {
                                Some(t) => t.clone(),
                                None => break,
                            }
                        } else {
                            n += concurrency;
                            list[n % list.len()].clone()
                        };
                        let token = if mode == Mode::AuthorizeWrong {
                            wrong_secret(&token, n)
                        } else {
                            token
                        };
                        let t0 = Instant::now();
                        let outcome: Result<bool, tonic::Status> = match mode {
                            Mode::Baseline => health
                                .check(HealthCheckRequest {
                                    service: String::new(),
                                })
                                .await
                                .map(|_| true),
                            Mode::Authorize | Mode::AuthorizeWrong | Mode::AuthorizeUnknown => {
                                authz
                                    .authorize(AuthorizeRequest {
                                        token,
                                        required_scopes: vec![scope.clone()],
                                        r#match: 0,
                                    })
                                    .await
                                    .map(|r| r.into_inner().decision() == Decision::Allow)
                            }
                            Mode::Check => check
                                .check(check_request(&token, &scope))
                                .await
                                .map(|r| r.into_inner().status.is_some_and(|s| s.code == 0)),
                        };
                        let micros = t0.elapsed().as_micros().max(1) as u64;
                        let _ = hist.record(micros.min(60_000_000));
                        match outcome {
                            Ok(true) => tally.ok += 1,
                            Ok(false) => tally.denied += 1,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => tally.shed += 1,
                            Err(_) => tally.errors += 1,
                        }
                    }
                    (hist, tally)
                }));
            }
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut total = Tally::default();
            for w in workers {
                let (h, t) = w.await.expect("worker");
                hist.add(h).expect("merge");
                total.ok += t.ok;
                total.denied += t.denied;
                total.errors += t.errors;
                total.shed += t.shed;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let requests = total.ok + total.denied + total.errors + total.shed;
            let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{}",
                json!({
                    "label": label, "mode": format!("{mode:?}").to_lowercase(), "connections": connections,
                    "concurrency": concurrency, "rate": rate, "distinct_tokens": list.len(),
                    "requests": requests, "seconds": elapsed, "rps": requests as f64 / elapsed,
                    "ok": total.ok, "denied": total.denied, "errors": total.errors, "shed": total.shed,
                    "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": hist.max() as f64 / 1000.0,
                })
            );
        }
        Cmd::Mint {
            database_url,
            count,
            filler,
            org,
            scopes,
            memory_kib,
            iterations,
            parallelism,
        } => {
            mint(
                &database_url,
                count,
                filler,
                &org,
                &scopes,
                HashParams {
                    memory_kib,
                    iterations,
                    parallelism,
                },
            )
            .await
        }
        Cmd::Argon2 {
            memory_kib,
            iterations,
            parallelism,
            rounds,
        } => {
            let hasher = TokenHasher::new(HashParams {
                memory_kib,
                iterations,
                parallelism,
            })
            .expect("params");
            let token = PlainToken::generate();
            let hash = hasher.hash(&token).expect("hash");
            let _ = hasher.verify(&token, &hash);
            let t0 = Instant::now();
            for _ in 0..rounds {
                let _ = hasher.verify(&token, &hash).expect("verify");
            }
            let per = t0.elapsed().as_secs_f64() / rounds as f64;
            println!(
                "{}",
                json!({ "verify_ms": per * 1000.0, "memory_kib": memory_kib, "iterations": iterations, "parallelism": parallelism })
            );
        }
        Cmd::RevokeLatency {
            a,
            b,
            issuer,
            tokens,
            count,
        } => revoke_latency(&a, &b, &issuer, &tokens, count).await,
    }
}

fn check_request(token: &str, scope: &str) -> CheckRequest {
    let headers = HashMap::from([("authorization".to_owned(), format!("Bearer {token}"))]);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "POST".into(),
                    path: "/openai/v1/chat/completions".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([("casola.scopes".to_owned(), scope.to_owned())]),
            ..Default::default()
        }),
    }
}

async fn mint(url: &str, count: usize, filler: usize, org: &str, scopes: &str, params: HashParams) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    if filler > 0 {
        // Rows that are never used: they only make the table (and its indexes) large.
        client
            .execute(
                "insert into api_tokens (id, lookup_id, secret_hash, name, description, scopes, org_id, user_id, created_at, created_by) \
                 select gen_random_uuid(), substr(md5(random()::text || g::text), 1, 12), '$argon2id$v=19$m=8,t=1,p=1$filler$filler', \
                        'filler', '', '{user:read}', 'filler', 'u' || g, now(), 'cli' \
                 from generate_series(1, $1::int) g on conflict do nothing",
                &[&(filler as i32)],
            )
            .await
            .expect("filler rows");
        client
            .batch_execute("analyze api_tokens")
            .await
            .expect("analyze");
    }
    let mut rng = UnwrapErr(SysRng);
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut random = |n: usize| {
        (0..n)
            .map(|_| char::from(B62[rng.random_range(0..62)]))
            .collect::<String>()
    };
    let secret = random(32);
    let probe = PlainToken::parse(&{
        let body = format!("csl_{}{secret}", random(12));
        let sum = checksum(&body);
        format!("{body}{sum}")
    })
    .expect("well-formed");
    let hash = TokenHasher::new(params)
        .expect("params")
        .hash(&probe)
        .expect("hash");
    let scopes: Vec<String> = scopes.split(',').map(str::to_owned).collect();
    let mut out = String::new();
    for chunk_start in (0..count).step_by(10_000) {
        let n = (count - chunk_start).min(10_000);
        let mut ids = Vec::with_capacity(n);
        let mut lookups = Vec::with_capacity(n);
        for _ in 0..n {
            let lookup = random(12);
            let body = format!("csl_{lookup}{secret}");
            let sum = checksum(&body);
            let id = uuid::Uuid::new_v4().to_string();
            out.push_str(&format!("{id} {body}{sum}\n"));
            ids.push(id);
            lookups.push(lookup);
        }
        client
            .execute(
                "insert into api_tokens (id, lookup_id, secret_hash, name, description, scopes, org_id, user_id, created_at, created_by) \
                 select t.id, t.lookup, $3, 'bench', '', $4::text[], $5, 'bench-' || t.ord, now(), 'cli' \
                 from unnest($1::text[]::uuid[], $2::text[]) with ordinality as t(id, lookup, ord)",
                &[&ids, &lookups, &hash.as_str(), &scopes, &org],
            )
            .await
            .expect("insert tokens");
    }
    print!("{out}");
}

async fn revoke_latency(a: &str, b: &str, issuer: &str, tokens: &PathBuf, count: usize) {
    let list = read_tokens(tokens);
    let mut revoker = TokenServiceClient::new(connect(a).await);
    let mut watcher = AuthorizationServiceClient::new(connect(b).await);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut revoke_calls = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let bearer = MetadataValue::try_from(format!("Bearer {issuer}")).expect("header");
    let decide = |w: &mut AuthorizationServiceClient<Channel>, t: &str| {
        let mut w = w.clone();
        let t = t.to_owned();
        async move {
            w.authorize(AuthorizeRequest {
                token: t,
                ..Default::default()
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.decision(), r.deny_reason())
            })
            .expect("authorize on B")
        }
    };
    let mut measured = 0;
    for (id, token) in list.iter().take(count) {
        // Warm on B, so only the notice can change its answer.
        assert_eq!(
            decide(&mut watcher, token).await.0,
            Decision::Allow,
            "token must start valid"
        );
        let mut request = Request::new(RevokeTokenRequest { id: id.clone() });
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        let t0 = Instant::now();
        revoker.revoke_token(request).await.expect("revoke on A");
        let revoked_at = Instant::now();
        let _ = revoke_calls.record(revoked_at.duration_since(t0).as_micros().max(1) as u64);
        loop {
            if decide(&mut watcher, token).await == (Decision::Deny, DenyReason::Revoked) {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(30),
                "B never denied a revoked token"
            );
        }
        let _ = hist.record(revoked_at.elapsed().as_micros().max(1) as u64);
        measured += 1;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "revocations": measured, "p50_ms": ms(&hist, 0.5), "p99_ms": ms(&hist, 0.99), "max_ms": hist.max() as f64 / 1000.0,
            "revoke_call_p50_ms": ms(&revoke_calls, 0.5), "revoke_call_p99_ms": ms(&revoke_calls, 0.99),
        })
    );
}
